"""LoRAHub (Huang et al., COLM 2024): Nevergrad CMA-ES by ask/tell on loss + 0.05 mean|w|, weights
in [-1.5, 1.5] from 0; the budget spread over rounds; seeded, deterministic, exactly resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from smartfed.config import ModelConfig, RunConfig
from smartfed.errors import CheckpointError
from smartfed.methods import get_method
from smartfed.methods.lorahub import l1_score, round_budget
from smartfed.model.base import load_base_model
from smartfed.pool.pool import resolve_pool

IDS = torch.tensor([[1, 5, 9, 20, 33, 41, 7, 2], [3, 3, 8, 60, 12, 4, 5, 6]])
TARGET = np.array([0.9, -0.4, 0.3])


def _lorahub(model_dir: Path, pool_dirs: list[Path], **flat: object):  # type: ignore[no-untyped-def]
    cfg = RunConfig.from_flat({"seed": 3, "num_rounds": 4, "lorahub_budget": 10, **flat})
    model = load_base_model(
        ModelConfig(model_name_or_path=str(model_dir), dtype="float32", device="cpu")
    )[0]
    method = get_method("lorahub")
    method.prepare(model, resolve_pool([str(p) for p in pool_dirs]), cfg)
    return model, method


def _np(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}


def _run(method, state: dict[str, np.ndarray], rounds: range, seed: int = 3):  # type: ignore[no-untyped-def]
    """Drive the server side with a known objective: loss = |w - TARGET|^2 (no model needed)."""
    sent_log = []
    for r in rounds:
        sent = method.server_propose(state, r, seed)
        losses = ((sent["candidates"] - TARGET) ** 2).sum(axis=1).astype(np.float32)
        state = method.server_update(state, sent, {"losses": losses})
        sent_log.append(sent["candidates"])
    return state, sent_log


def test_budget_is_spread_over_rounds() -> None:
    assert [round_budget(10, 4, r) for r in range(1, 6)] == [3, 3, 2, 2, 0]
    assert [round_budget(2, 4, r) for r in range(1, 5)] == [1, 1, 0, 0]
    assert sum(round_budget(40, 20, r) for r in range(1, 21)) == 40


def test_search_starts_at_zero_spends_the_budget_and_is_seeded(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    _, method = _lorahub(tiny_model_dir, tiny_pool)
    start = _np(method.trainable_state(None))
    assert np.array_equal(start["weights"], np.zeros(3)) and start["history_x"].shape == (0, 3)
    state, sent = _run(method, start, range(1, 6))
    assert [len(s) for s in sent] == [4, 4, 3, 3, 1]  # row 0 = current weights, then n_r asked
    assert state["history_x"].shape == (10, 3) and state["history_y"].shape == (10,)
    assert np.abs(state["history_x"]).max() <= 1.5  # LoRAHub's bounds
    np.testing.assert_array_equal(state["history_round"], [1, 1, 1, 2, 2, 2, 3, 3, 4, 4])
    for x, y in zip(state["history_x"], state["history_y"], strict=True):  # loss + 0.05 mean|w|
        assert y == pytest.approx(((x - TARGET) ** 2).sum() + 0.05 * np.abs(x).mean(), rel=1e-5)
    best = state["history_y"].min()
    assert ((state["weights"] - TARGET) ** 2).sum() < ((0 - TARGET) ** 2).sum()  # it searched
    assert best < ((0 - TARGET) ** 2).sum()
    again, _ = _run(method, start, range(1, 6))
    assert all(np.array_equal(again[k], state[k]) for k in state)  # deterministic
    other, _ = _run(method, start, range(1, 6), seed=4)
    assert not np.array_equal(other["history_x"], state["history_x"])  # the seed matters


def test_resume_from_a_checkpointed_state_is_exact(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, method = _lorahub(tiny_model_dir, tiny_pool)
    start = _np(method.trainable_state(model))
    full, _ = _run(method, start, range(1, 5))
    half, _ = _run(method, start, range(1, 3))
    # through the model and float32 tensors, as a checkpoint does
    method.load_trainable_state(model, {k: torch.from_numpy(v) for k, v in half.items()})
    _, resumed = _lorahub(tiny_model_dir, tiny_pool)
    resumed.load_trainable_state(model, method.trainable_state(model))
    rest, _ = _run(resumed, _np(resumed.trainable_state(model)), range(3, 5))
    assert all(np.array_equal(rest[k], full[k]) for k in full)
    tampered = dict(half, history_x=half["history_x"] + 0.5)
    with pytest.raises(CheckpointError, match="replay"):
        method.server_propose(tampered, 3, 3)
    with pytest.raises(CheckpointError):
        method.load_trainable_state(model, {"weights": torch.zeros(3)})


def test_weights_are_exact_and_clients_score_every_candidate(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, method = _lorahub(tiny_model_dir, tiny_pool)
    cands = torch.tensor([[0.0, 0.0, 0.0], [0.7, -0.3, 1.2], [1.5, 1.5, -1.5]])
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": IDS}
    out, metrics = method.local_update(model, [batch], RunConfig(), {"candidates": cands})
    assert out["losses"].shape == (3,) and metrics["steps"] == 0
    assert len(set(out["losses"].tolist())) == 3  # the weights change the model
    with pytest.raises(CheckpointError):
        method.local_update(model, [batch], RunConfig(), {"candidates": torch.zeros(2, 5)})


def test_l1_score_is_lorahub_objective() -> None:
    w = np.array([1.0, -0.5, 0.0, 0.5])
    assert l1_score(2.0, w, 0.05) == pytest.approx(2.0 + 0.05 * 0.5)


def test_raising_num_rounds_on_resume_replays_and_keeps_the_budget(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    _, short = _lorahub(tiny_model_dir, tiny_pool, num_rounds=2)
    start = _np(short.trainable_state(None))
    one, _ = _run(short, start, range(1, 2))  # 5 of 10 asked, then "killed"
    _, longer = _lorahub(tiny_model_dir, tiny_pool, num_rounds=4)  # resumed with more rounds
    state, sent = _run(longer, one, range(2, 5))
    assert [len(s) - 1 for s in sent] == [3, 2, 0]  # the new schedule, capped by what is left
    assert state["history_y"].shape == (10,)
