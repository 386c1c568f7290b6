"""EEQA allocation: hand-computed cases and hypothesis properties of each invariant."""

from __future__ import annotations

import ast
import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smartfed.config import QuotaConfig
from smartfed.errors import CheckpointError, ConfigError, WireFormatError
from smartfed.quota import allocate as alloc
from smartfed.quota import schedule
from smartfed.quota.allocate import (
    aggregate_importance,
    allocate_quotas,
    default_budget,
    matrix_caps,
    mean_expert_scores,
    uniform_quotas,
)
from smartfed.quota.schedule import EEQAState

SCORE = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
RAW_SCORE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1.0])
)


@st.composite
def problems(draw: st.DrawFn, score: st.SearchStrategy[float] = SCORE) -> tuple:  # type: ignore[type-arg]
    """A feasible problem: scores, budget in [k_min*n, sum caps], k_min, caps >= k_min."""
    n = draw(st.integers(min_value=1, max_value=12))
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(n) for p in ("q_proj",)][:n]
    k_min = draw(st.integers(min_value=0, max_value=3))
    caps = {m: draw(st.integers(min_value=k_min, max_value=k_min + 40)) for m in names}
    scores = {m: draw(score) for m in names}
    budget = draw(st.integers(min_value=k_min * n, max_value=sum(caps.values())))
    return scores, budget, k_min, caps


# --- hand-computed cases -------------------------------------------------------------------------


def test_unbounded_case_is_floor_of_proportional_plus_largest_residuals() -> None:
    # Arrange: 9 units, importance 3:1:2 -> targets 4.5, 1.5, 3.0; residual tie .5 -> higher score
    scores = {"a": 3.0, "b": 1.0, "c": 2.0}
    # Act
    quotas = allocate_quotas(scores, 9, 0, {"a": 9, "b": 9, "c": 9})
    # Assert
    assert quotas == {"a": 5, "b": 1, "c": 3}


def test_capped_matrix_surplus_flows_to_others_proportionally() -> None:
    # a wants 8 of 10 but is capped at 4; b and c share the other 6 in ratio 2:1
    quotas = allocate_quotas({"a": 8.0, "b": 1.0, "c": 0.5}, 10, 0, {"a": 4, "b": 9, "c": 9})
    assert quotas == {"a": 4, "b": 4, "c": 2}


def test_k_min_is_respected_for_unimportant_matrices() -> None:
    quotas = allocate_quotas({"a": 100.0, "b": 1e-9, "c": 0.0}, 12, 2, {"a": 32, "b": 32, "c": 32})
    assert quotas == {"a": 8, "b": 2, "c": 2}


def test_all_zero_negative_or_nan_scores_give_uniform_quotas() -> None:
    caps = {"a": 8, "b": 8, "c": 8, "d": 8}
    for bad in (0.0, -3.0, float("nan")):
        quotas = allocate_quotas(dict.fromkeys(caps, bad), 16, 1, caps)
        assert quotas == dict.fromkeys(caps, 4)


def test_negative_and_nan_count_as_zero_next_to_positive_scores() -> None:
    caps = {"a": 10, "b": 10, "c": 10}
    quotas = allocate_quotas({"a": 1.0, "b": -5.0, "c": float("nan")}, 6, 1, caps)
    assert quotas == {"a": 4, "b": 1, "c": 1}


def test_zero_scores_take_the_budget_only_after_positive_ones_are_capped() -> None:
    quotas = allocate_quotas({"a": 1.0, "b": 0.0, "c": 0.0}, 9, 0, {"a": 3, "b": 9, "c": 9})
    assert quotas == {"a": 3, "b": 3, "c": 3}


def test_infinite_scores_are_served_first() -> None:
    quotas = allocate_quotas(
        {"a": float("inf"), "b": 1e300, "c": 1.0}, 10, 1, {"a": 4, "b": 10, "c": 10}
    )
    assert quotas["a"] == 4
    assert quotas["b"] >= quotas["c"]
    assert sum(quotas.values()) == 10


def test_empty_problem_with_zero_budget() -> None:
    assert allocate_quotas({}, 0, 1, {}) == {}


@pytest.mark.parametrize(
    ("budget", "k_min", "caps", "needle"),
    [
        (2, 1, {"a": 4, "b": 4, "c": 4}, "total_budget=2 is outside [3, 12]"),
        (13, 1, {"a": 4, "b": 4, "c": 4}, "total_budget=13 is outside [3, 12]"),
        (6, 3, {"a": 4, "b": 2, "c": 4}, "k_max['b']=2 < k_min=3"),
        (-1, 0, {"a": 4, "b": 4, "c": 4}, "total_budget=-1"),
        (3, 1, {"a": 4, "b": 4}, "k_max has no bound for matrix 'c'"),
    ],
)
def test_infeasible_or_invalid_input_raises_one_line_config_error(
    budget: int, k_min: int, caps: dict[str, int], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        allocate_quotas({"a": 1.0, "b": 2.0, "c": 3.0}, budget, k_min, caps)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(problems(RAW_SCORE))
def test_budget_exact_and_within_bounds(problem: tuple) -> None:  # type: ignore[type-arg]
    scores, budget, k_min, caps = problem
    quotas = allocate_quotas(scores, budget, k_min, caps)
    assert set(quotas) == set(scores)
    assert sum(quotas.values()) == budget
    assert all(k_min <= quotas[m] <= caps[m] for m in scores)
    assert all(type(k) is int for k in quotas.values())


@settings(max_examples=300, deadline=None)
@given(problems(RAW_SCORE))
def test_weakly_monotone_caps_permitting(problem: tuple) -> None:  # type: ignore[type-arg]
    scores, budget, k_min, caps = problem
    quotas = allocate_quotas(scores, budget, k_min, caps)
    weights, infinite = alloc.sanitize_scores(scores)

    def rank(m: str) -> tuple[bool, object]:
        return (m in infinite, weights[m])

    for a in scores:
        for b in scores:
            if rank(a) > rank(b):
                assert quotas[a] >= quotas[b] or quotas[a] == caps[a], (a, b, quotas)


@settings(max_examples=200, deadline=None)
@given(problems(), st.randoms(use_true_random=False))
def test_independent_of_mapping_order_and_deterministic(problem: tuple, rnd: random.Random) -> None:  # type: ignore[type-arg]
    scores, budget, k_min, caps = problem
    items = list(scores.items())
    rnd.shuffle(items)
    first = allocate_quotas(scores, budget, k_min, caps)
    assert allocate_quotas(dict(items), budget, k_min, caps) == first
    assert allocate_quotas(scores, budget, k_min, caps) == first


@settings(max_examples=200, deadline=None)
@given(
    st.lists(SCORE, min_size=1, max_size=10, unique=True),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=3, max_value=20),
    st.data(),
)
def test_permutation_equivariant(
    values: list[float], k_min: int, cap: int, data: st.DataObject
) -> None:
    # Distinct scores, equal caps: permuting scores over matrices permutes the quotas.
    names = [f"m{i}" for i in range(len(values))]
    caps = dict.fromkeys(names, cap)
    budget = data.draw(st.integers(min_value=k_min * len(names), max_value=cap * len(names)))
    perm = data.draw(st.permutations(range(len(values))))
    base = allocate_quotas(dict(zip(names, values, strict=True)), budget, k_min, caps)
    permuted_scores = {names[perm[i]]: values[i] for i in range(len(values))}
    permuted = allocate_quotas(permuted_scores, budget, k_min, caps)
    assert all(permuted[names[perm[i]]] == base[names[i]] for i in range(len(values)))


@settings(max_examples=200, deadline=None)
@given(problems())
def test_matches_paper_floor_when_no_bound_is_active(problem: tuple) -> None:  # type: ignore[type-arg]
    scores, budget, _, _ = problem
    total = math.fsum(scores.values())
    assume(total > 0)
    caps = dict.fromkeys(scores, budget)
    quotas = allocate_quotas(scores, budget, 0, caps)
    for m, s in scores.items():
        # Phase 1 gives floor(budget * s / total); phase 2 adds at most one unit.
        assert abs(quotas[m] - budget * s / total) < 1 + 1e-6


@settings(max_examples=200, deadline=None)
@given(problems(), st.integers(min_value=1, max_value=50))
def test_infeasible_budget_always_raises(problem: tuple, excess: int) -> None:  # type: ignore[type-arg]
    scores, _, k_min, caps = problem
    with pytest.raises(ConfigError, match="infeasible EEQA budget"):
        allocate_quotas(scores, sum(caps.values()) + excess, k_min, caps)
    if k_min * len(scores) - excess >= 0:
        with pytest.raises(ConfigError, match="infeasible EEQA budget"):
            allocate_quotas(scores, k_min * len(scores) - excess, k_min, caps)


# --- aggregation and helpers --------------------------------------------------------------------


def test_aggregate_is_sample_weighted_mean_per_expert_summed_per_matrix() -> None:
    replies = [
        (10, {"q": [1.0, 0.0, 2.0], "v": [4.0]}),
        (30, {"q": [0.0, 4.0, 2.0], "v": [0.0]}),
        (0, {"q": [100.0, 100.0, 100.0], "v": [100.0]}),  # no examples: ignored
    ]
    per_expert = mean_expert_scores(replies)
    assert per_expert == {"q": [0.25, 3.0, 2.0], "v": [1.0]}
    assert aggregate_importance(replies) == {"q": 5.25, "v": 1.0}


@pytest.mark.parametrize(
    ("replies", "needle"),
    [
        ([(5, {"q": [1.0, 2.0]}), (5, {"q": [1.0]})], "has 1 experts, another client sent 2"),
        ([(5, {"q": [float("nan")]})], "non-finite"),
        ([(-1, {"q": [1.0]})], "num_examples=-1"),
    ],
)
def test_aggregate_rejects_malformed_replies(replies: list, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(WireFormatError, match=needle):
        aggregate_importance(replies)


def test_default_budget_and_uniform_quotas() -> None:
    experts = {"q": 64, "v": 64, "gate": 2}
    assert default_budget(32, 3) == 96
    assert default_budget(32, experts) == 32 + 32 + 2
    assert uniform_quotas(experts, 32) == {"gate": 2, "q": 32, "v": 32}
    assert matrix_caps(experts, 0) == {"gate": 2, "q": 64, "v": 64}
    assert matrix_caps(experts, 40) == {"gate": 2, "q": 40, "v": 40}
    with pytest.raises(ConfigError, match="topk_experts=0"):
        uniform_quotas(experts, 0)


@pytest.mark.parametrize("module", [alloc, schedule])
def test_server_side_quota_modules_import_only_the_stdlib_and_smartfed(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    stdlib = {"__future__", "math", "collections", "fractions", "dataclasses", "typing"}
    assert roots <= stdlib | {"smartfed"}, roots


# --- the round schedule ---------------------------------------------------------------------------

EXPERTS = {
    "model.layers.0.self_attn.q_proj": 64,
    "model.layers.0.self_attn.v_proj": 64,
    "model.layers.1.self_attn.q_proj": 64,
    "model.layers.1.self_attn.v_proj": 64,
}


def test_schedule_warmup_then_reallocates_every_round_budget_exact() -> None:
    # Arrange: warm-up 2 -> rounds 1 and 2 gathered, first reallocation after round 2
    state = EEQAState.create(EXPERTS, 8, warmup_rounds=2)
    names = sorted(EXPERTS)
    assert state.quotas == dict.fromkeys(names, 8)
    r1 = dict(zip(names, [4.0, 0.0, 0.0, 0.0], strict=True))
    r2 = dict(zip(names, [0.0, 4.0, 0.0, 0.0], strict=True))
    # Act / Assert
    assert state.update(1, r1) == dict.fromkeys(names, 8)
    after2 = state.update(2, r2)  # mean of rounds 1 and 2: 2, 2, 0, 0
    assert after2 == dict(zip(names, [15, 15, 1, 1], strict=True))
    after3 = state.update(3, dict(zip(names, [1.0, 1.0, 1.0, 1.0], strict=True)))
    assert after3 == dict.fromkeys(names, 8)
    assert sum(after2.values()) == sum(after3.values()) == 32


def test_schedule_default_warmup_moves_quotas_from_round_two() -> None:
    state = EEQAState.from_config(QuotaConfig(), 8, EXPERTS)
    new = state.update(1, dict(zip(sorted(EXPERTS), [3.0, 1.0, 1.0, 3.0], strict=True)))
    assert new != dict.fromkeys(EXPERTS, 8)
    assert sum(new.values()) == 32


def test_schedule_disabled_keeps_topk_everywhere() -> None:
    state = EEQAState.from_config(QuotaConfig(enable_eeqa=False), 8, {**EXPERTS, "gate": 3})
    quotas = state.update(1, {m: float(i) for i, m in enumerate(sorted(state.caps))})
    assert quotas == {**dict.fromkeys(EXPERTS, 8), "gate": 3}


def test_schedule_round_trips_through_json_and_resumes_identically() -> None:
    # Arrange: two states, one saved and reloaded mid-run
    live = EEQAState.create(EXPERTS, 8, total_budget=20, k_min=2, k_max=12, warmup_rounds=2)
    live.update(1, dict.fromkeys(EXPERTS, 1.0))
    resumed = EEQAState.from_dict(json.loads(json.dumps(live.to_dict())))
    # Act
    scores = dict(zip(sorted(EXPERTS), [5.0, 1.0, 0.5, 2.0], strict=True))
    # Assert
    assert resumed == live
    assert resumed.update(2, scores) == live.update(2, scores)
    assert sum(live.quotas.values()) == 20
    assert all(2 <= k <= 12 for k in live.quotas.values())


def test_schedule_rejects_replayed_rounds_unknown_matrices_and_corrupt_files() -> None:
    state = EEQAState.create(EXPERTS, 8)
    state.update(1, dict.fromkeys(EXPERTS, 1.0))
    with pytest.raises(CheckpointError, match="already folded round 1"):
        state.update(1, dict.fromkeys(EXPERTS, 1.0))
    with pytest.raises(WireFormatError, match="'other'"):
        state.update(2, {**dict.fromkeys(EXPERTS, 1.0), "other": 1.0})
    bad = state.to_dict()
    bad["quotas"] = dict.fromkeys(EXPERTS, 9)
    with pytest.raises(CheckpointError, match="budget"):
        EEQAState.from_dict(bad)
    with pytest.raises(CheckpointError, match="format"):
        EEQAState.from_dict({"quotas": {}})


def test_schedule_infeasible_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="infeasible EEQA budget"):
        EEQAState.create(EXPERTS, 8, total_budget=300)
