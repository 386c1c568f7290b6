"""EEQA importance: the closed forms against brute-force materialised expert outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from factories import load_tiny_base
from smartfed.config import RouterConfig
from smartfed.model.inject import inject_more
from smartfed.model.state import more_layers, set_quotas
from smartfed.pool.pool import resolve_pool
from smartfed.quota.allocate import aggregate_importance
from smartfed.quota.importance import (
    ImportanceTracker,
    expert_perturbation,
    selected_importance,
    token_importance,
)
from smartfed.quota.schedule import EEQAState


def _brute(ref: torch.Tensor, coef: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(r, r + coef_i * b_i) with every expert output materialised, float64."""
    ref, coef, b = ref.double(), coef.double(), b.double()
    e = coef[:, :, None] * b.T[None, :, :]  # (N, M, d)
    r = ref[:, None, :].expand_as(e)
    return 1 - F.cosine_similarity(r, r + e, dim=-1)


def test_perturbation_matches_brute_force_over_magnitudes() -> None:
    # Arrange: expert outputs from 1e-3 to 1e2 times the reference norm
    g = torch.Generator().manual_seed(0)
    n, m, d = 16, 12, 24
    ref = torch.randn(n, d, generator=g)
    b = torch.randn(d, m, generator=g)
    coef = torch.randn(n, m, generator=g) * torch.logspace(-3, 2, m)
    # Act
    got = expert_perturbation(ref, coef, ref @ b, b.pow(2).sum(0))
    # Assert
    want = _brute(ref, coef, b)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-9)
    assert got.min() >= 0 and got.max() <= 2


def test_small_perturbations_keep_relative_precision() -> None:
    # 1 - cos ~ 1e-8 here: the naive float32 formula would return 0 or noise.
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(4, 64, generator=g)
    b = torch.randn(64, 3, generator=g)
    coef = torch.full((4, 3), 1e-4)
    got = expert_perturbation(ref, coef, ref @ b, b.pow(2).sum(0)).double()
    want = _brute(ref, coef, b)
    assert (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=0.0)


def test_perturbation_edge_cases() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0], [0.0]])  # b parallel to r
    coef = torch.tensor([[2.0], [1.0], [0.0], [-1.0]])
    d = expert_perturbation(ref, coef, ref @ b, b.pow(2).sum(0))
    # parallel growth: no rotation; zero ref / zero expert: 0; r + e = 0 (erased output): 1
    assert d.flatten().tolist() == [0.0, 0.0, 0.0, 1.0]
    b_perp = torch.tensor([[0.0], [1.0]])
    d = expert_perturbation(ref[:1], torch.tensor([[1.0]]), ref[:1] @ b_perp, torch.ones(1))
    torch.testing.assert_close(d, torch.tensor([[1 - 2**-0.5]]))
    flip = expert_perturbation(ref[:1], torch.tensor([[-3.0]]), ref[:1] @ b, torch.ones(1))
    torch.testing.assert_close(flip, torch.tensor([[2.0]]))  # r + e = -2 r


@pytest.mark.parametrize(("d_in", "d_out", "expect_ref"), [(8, 8, "x"), (8, 4, "y")])
def test_token_importance_auto_reference(d_in: int, d_out: int, expect_ref: str) -> None:
    g = torch.Generator().manual_seed(2)
    n, m = 5, 6
    x = torch.randn(n, d_in, generator=g, dtype=torch.bfloat16)
    y = torch.randn(n, d_out, generator=g, dtype=torch.bfloat16)
    z = torch.randn(n, m, generator=g, dtype=torch.bfloat16)
    b = torch.randn(d_out, m, generator=g)
    scale = torch.rand(m, generator=g) + 0.5
    got = token_importance(x, y, z, b, scale, b.pow(2).sum(0), reference="auto").double()
    ref = x if expect_ref == "x" else y
    want = _brute(ref.float(), z.float() * scale, b)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-7)
    # the default: direction of W0 x, per-coordinate RMS of x, for every matrix
    norm = token_importance(x, y, z, b, scale, b.pow(2).sum(0)).double()
    rms = x.float().pow(2).mean(-1, keepdim=True).sqrt() * d_out**0.5
    r = y.float() * rms / y.float().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(norm, _brute(r, z.float() * scale, b), rtol=1e-3, atol=1e-7)
    out = token_importance(x, y, z, b, scale, b.pow(2).sum(0), reference="output").double()
    torch.testing.assert_close(out, _brute(y.float(), z.float() * scale, b), rtol=1e-3, atol=1e-7)
    idx = torch.rand(n, m, generator=g).topk(3, -1).indices
    sel = token_importance(x, y, z, b, scale, b.pow(2).sum(0), indices=idx).double()
    torch.testing.assert_close(sel, norm.gather(-1, idx))
    if d_in != d_out:
        with pytest.raises(ValueError, match="d_in == d_out"):
            token_importance(x, y, z, b, scale, b.pow(2).sum(0), reference="input")


def test_selected_importance_renormalises_gates_and_counts_selections() -> None:
    # Arrange: 3 tokens, M = 4, K = 2
    d = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.5]])
    weights = torch.tensor([[0.3, 0.1], [0.2, 0.2], [0.6, 0.2]])
    indices = torch.tensor([[3, 0], [1, 2], [0, 3]])
    # Act
    sums, counts = selected_importance(d.gather(-1, indices), weights, indices, 4)
    # Assert: token 0 -> 0.75*0.4 on e3, 0.25*0.1 on e0; token 1 -> .5, .5; token 2 -> .375, .125
    torch.testing.assert_close(sums, torch.tensor([0.025 + 0.375, 0.5, 0.5, 0.3 + 0.125]))
    assert counts.tolist() == [2, 1, 1, 2]
    # a matrix's total does not scale with K: every token spreads one unit of gate weight
    assert sums.sum().item() == pytest.approx(0.325 + 1.0 + 0.5)


# --- the tracker over real MoRE layers (tiny Llama + heterogeneous pool) --------------------------


@pytest.fixture
def more_model(tiny_model_dir: Path, tiny_pool: list[Path]) -> nn.Module:
    model, _ = load_tiny_base(tiny_model_dir)
    pool = resolve_pool([str(p) for p in tiny_pool])
    inject_more(model, pool, RouterConfig(topk_experts=4, router_init_std=0.5), seed=0)
    return model


def _expected_scores(infos: list, bank: nn.Module, keep: torch.Tensor) -> list[float]:  # type: ignore[type-arg]
    """Brute force from captured infos: mean of renormalised gate x (1 - cos(r, r + e_i))."""
    total = torch.zeros(bank.B.shape[1], dtype=torch.float64)
    tokens = 0
    for info in infos:
        x, y, z = (
            t.reshape(-1, t.shape[-1])[keep.reshape(-1)] for t in (info.x, info.base_out, info.z)
        )
        w, idx = (t.reshape(-1, t.shape[-1])[keep.reshape(-1)] for t in info.routing)
        rms = x.pow(2).mean(-1, keepdim=True).sqrt() * y.shape[-1] ** 0.5
        ref = y * rms / y.norm(dim=-1, keepdim=True)  # direction of W0 x, RMS of x
        d = _brute(ref, z * bank.scaling, bank.B.float())
        gate = torch.zeros_like(d).scatter(-1, idx, (w / w.sum(-1, keepdim=True)).double())
        total += (gate * d).sum(0)
        tokens += x.shape[0]
    return (total / tokens).tolist()


def test_tracker_matches_brute_force_on_every_matrix_kind(more_model: nn.Module) -> None:
    # Arrange: capture what each layer's observers see, next to the tracker
    layers = more_layers(more_model)
    captured: dict[str, list] = {name: [] for name in layers}  # type: ignore[type-arg]
    handles = [layer.add_observer(captured[n].append) for n, layer in layers.items()]
    ids = torch.randint(0, 400, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False  # padding
    # Act
    with torch.no_grad(), ImportanceTracker(more_model, num_adapters=3) as tracker:
        tracker.set_token_mask(mask)
        more_model(input_ids=ids)
    for h in handles:
        h.remove()
    # Assert
    scores, usage = tracker.scores(), tracker.usage()
    assert list(scores) == sorted(layers)
    kinds = {n.rsplit(".", 1)[-1] for n in scores}
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= kinds  # square, GQA, MLP in and out
    for name, layer in layers.items():
        want = _expected_scores(captured[name], layer.bank, mask)
        torch.testing.assert_close(
            torch.tensor(scores[name], dtype=torch.float64),
            torch.tensor(want, dtype=torch.float64),
            rtol=1e-3,
            atol=1e-7,
        )
        assert len(usage[name]) == 3
        assert sum(usage[name]) == layer.k * int(mask.sum())
        assert all(isinstance(v, float) for v in scores[name])
    assert set(tracker.tokens().values()) == {12}
    assert usage["model.layers.0.mlp.gate_proj"][:2] == [0, 0]  # only c_mlp has MLP experts
    assert all(not layer._observers for layer in layers.values())  # removed on exit


def test_tracker_scores_feed_the_server_allocation(more_model: nn.Module) -> None:
    # Importance -> aggregate -> allocate: plain numbers in, a budget-exact quota map out.
    with torch.no_grad(), ImportanceTracker(more_model) as tracker:
        more_model(input_ids=torch.randint(0, 400, (2, 9)))
    scores = aggregate_importance([(5, tracker.scores())])
    assert all(s > 0 for s in scores.values())
    experts = {n: layer.num_experts for n, layer in more_layers(more_model).items()}
    state = EEQAState.create(experts, 4)
    quotas = state.update(1, scores)
    assert sum(quotas.values()) == state.budget
    set_quotas(more_model, quotas)


def test_tracker_reset_and_errors(more_model: nn.Module) -> None:
    with ImportanceTracker(more_model) as tracker:
        more_model(input_ids=torch.randint(0, 400, (1, 4)))
        tracker.reset()
        assert set(tracker.tokens().values()) == {0}
        tracker.set_token_mask(torch.ones(7, dtype=torch.bool))
        with pytest.raises(ValueError, match="token mask shape"):
            more_model(input_ids=torch.randint(0, 400, (1, 4)))
    with pytest.raises(ValueError, match="no MoRE layer"):
        ImportanceTracker(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="reference="):
        ImportanceTracker(more_model, reference="sideways")  # type: ignore[arg-type]
