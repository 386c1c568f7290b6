"""Rank-one split: experts recompose to s * B @ A, per LoRA and inside the expert bank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smartfed.experts.bank import ExpertBank
from smartfed.experts.decompose import rank_one_factors, recompose
from smartfed.pool.pool import resolve_pool


def test_recompose_equals_scaled_b_at_a() -> None:
    # Arrange
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 12, generator=g), torch.randn(7, 5, generator=g)
    # Act
    f = rank_one_factors(a, b, 0.75)
    # Assert
    torch.testing.assert_close(recompose(f), 0.75 * b @ a)
    one = torch.zeros(5)
    one[2] = 1.0
    torch.testing.assert_close(recompose(f, one), 0.75 * torch.outer(b[:, 2], a[2]))
    with pytest.raises(ValueError, match="expected A"):
        rank_one_factors(a, b.T, 1.0)


def test_bank_holds_every_adapter_that_targets_the_matrix(tiny_pool: list[Path]) -> None:
    # Arrange
    pool = resolve_pool([str(p) for p in tiny_pool])
    for matrix in pool.matrices():
        # Act
        bank = ExpertBank.from_adapters(pool.adapters, matrix)
        # Assert: each adapter's slice recomposes to its own s * B @ A
        assert bank.num_experts == pool.experts_per_matrix()[matrix]
        for index, mod in pool.modules_for(matrix):
            ids = bank.experts_of(index)
            w = torch.zeros(bank.num_experts)
            w[ids] = 1.0
            torch.testing.assert_close(recompose(bank.factors(), w), mod.scaling * mod.B @ mod.A)
        assert bank.source_ranks == tuple(m.rank for _, m in pool.modules_for(matrix))
    v = ExpertBank.from_adapters(pool.adapters, "model.layers.0.self_attn.v_proj")
    assert v.adapter_index.tolist() == [0] * 4 + [1] * 8 + [2] * 2
    assert v.A.shape == (14, 64) and v.B.shape == (32, 14) and v.scaling.shape == (14,)


def test_bank_buffers_are_frozen_non_persistent_and_in_the_model_dtype(
    tiny_pool: list[Path],
) -> None:
    pool = resolve_pool([str(tiny_pool[0])])
    bank = ExpertBank.from_adapters(pool.adapters, "model.layers.0.self_attn.q_proj",
                                    dtype=torch.bfloat16)
    assert bank.A.dtype == bank.B.dtype == torch.bfloat16
    assert bank.scaling.dtype == torch.float32
    assert not list(bank.parameters()) and bank.state_dict() == {}
    with pytest.raises(ValueError, match="no adapter in the pool targets"):
        ExpertBank.from_adapters(pool.adapters, "model.layers.0.mlp.up_proj")
