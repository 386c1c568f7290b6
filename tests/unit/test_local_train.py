"""Local training: only router weights move, losses are finite, batches are seeded."""

from __future__ import annotations

from pathlib import Path

import torch

from factories import load_tiny_base
from smartfed.config import RunConfig, TrainConfig
from smartfed.data.example import Example
from smartfed.data.formatting import encode_for_training
from smartfed.methods import get_method
from smartfed.pool.pool import resolve_pool
from smartfed.train.local import evaluate_loss, local_train, round_generator, sample_batches


def _setup(model_dir: Path, pool_dirs: list[Path]):  # type: ignore[no-untyped-def]
    model, tok = load_tiny_base(model_dir)
    method = get_method("smartfed")
    method.prepare(
        model, resolve_pool([str(p) for p in pool_dirs]), RunConfig.from_flat({"topk_experts": 2})
    )
    rows = [
        Example(prompt=f"What is {i} plus {i}?", response=f"The answer is {2 * i}.")
        for i in range(12)
    ]
    return model, tok, method, [encode_for_training(tok, ex, 48) for ex in rows]


def test_sample_batches_is_seeded_and_covers_rows() -> None:
    from smartfed.data.formatting import EncodedExample

    rows = [EncodedExample([i + 1, i + 2], [i + 1, i + 2]) for i in range(10)]

    def firsts(seed: int) -> list[int]:
        gen = round_generator(seed, 1, 0)
        return [int(x) for b in sample_batches(rows, 5, 2, 0, gen) for x in b["input_ids"][:, 0]]

    assert firsts(0) == firsts(0) and firsts(0) != firsts(1)
    assert sorted(firsts(0)) == list(range(1, 11))  # one pass = every row once


def test_only_routers_change_and_loss_drops(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    model, tok, method, rows = _setup(tiny_model_dir, tiny_pool)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    frozen_buffers = {n: b.clone() for n, b in model.named_buffers()}
    before = method.trainable_state(model)
    loss0 = evaluate_loss(model, rows, 4, tok.pad_token_id)
    params = method.trainable_parameters(model)
    gen = round_generator(0, 1, 0)
    result = local_train(
        model,
        sample_batches(rows, 4, 20, tok.pad_token_id, gen),
        params,
        TrainConfig(learning_rate=5e-2),
        total=20,
    )
    assert result.steps == 20 and all(torch.isfinite(torch.tensor(result.losses)))
    after = method.trainable_state(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(torch.equal(b, frozen_buffers[n]) for n, b in model.named_buffers())
    assert evaluate_loss(model, rows, 4, tok.pad_token_id) < loss0


def test_response_loss_equals_hf_loss(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    from smartfed.data.formatting import collate
    from smartfed.train.local import response_loss

    model, tok, _, rows = _setup(tiny_model_dir, tiny_pool)
    batch = collate(rows[:5], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(response_loss(model, batch), model(**batch).loss)
