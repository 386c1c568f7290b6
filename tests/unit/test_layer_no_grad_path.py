"""MoRELinear's no-autograd forward (generation, eval) computes the training path's function."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from smartfed.experts.bank import ExpertBank
from smartfed.pool.pool import resolve_pool
from smartfed.routing.layer import MoREForwardInfo, MoRELinear
from smartfed.routing.router import FixedRouter, TopKRouter

V_PROJ = "model.layers.0.self_attn.v_proj"  # 14 experts in the tiny heterogeneous pool


@pytest.fixture(scope="module")
def pool(tiny_pool: list[Path]):  # type: ignore[no-untyped-def]
    return resolve_pool([str(p) for p in tiny_pool])


def _layer(
    pool,
    k: int = 4,
    mode: str = "rank",
    renormalize: bool = False,
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> MoRELinear:
    torch.manual_seed(0)
    base = nn.Linear(64, 32, bias=True).to(dtype).requires_grad_(False)
    bank = ExpertBank.from_adapters(pool.adapters, V_PROJ, dtype=dtype)
    router = TopKRouter(
        64,
        bank.num_experts,
        init_std=0.5,
        renormalize=renormalize,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
    )
    return MoRELinear.from_linear(base, bank, router, k, output_scale_mode=mode, output_scale=3.0)


def _both(layer: MoRELinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        slow = layer(x).detach()
    with torch.no_grad():
        fast = layer(x)
    return slow, fast


@pytest.mark.parametrize(
    ("k", "mode", "renormalize", "temperature"),
    [
        (4, "rank", False, 1.0),
        (5, "topk", True, 1.0),
        (3, "constant", False, 0.5),
        (14, "rank", True, 2.0),
    ],
)
def test_no_grad_forward_equals_training_forward(  # type: ignore[no-untyped-def]
    pool, k, mode, renormalize, temperature
) -> None:
    layer = _layer(pool, k=k, mode=mode, renormalize=renormalize, temperature=temperature)
    x = torch.randn(2, 5, 64)
    slow, fast = _both(layer, x)
    assert fast.shape == (2, 5, 32)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    layer.no_grad_fast_path = False  # the reference path, also without autograd
    with torch.no_grad():
        torch.testing.assert_close(layer(x), slow, rtol=1e-6, atol=1e-6)


def test_cache_follows_optimizer_steps_quota_and_state_loads(pool) -> None:  # type: ignore[no-untyped-def]
    # Arrange: fill the cache
    layer = _layer(pool, k=4, mode="topk")
    x = torch.randn(6, 64)
    _both(layer, x)
    opt = torch.optim.AdamW(layer.router.parameters(), lr=0.5)
    # Act / Assert: an optimizer step changes the router weight in place
    layer(x).pow(2).sum().backward()
    opt.step()
    torch.testing.assert_close(*_both(layer, x), rtol=1e-5, atol=1e-5)
    # a new quota changes K and (mode topk) the scale c
    layer.set_quota(7)
    torch.testing.assert_close(*_both(layer, x), rtol=1e-5, atol=1e-5)
    # loading another router state (FedAvg result) in place
    layer.router.load_state_dict({"weight": torch.randn_like(layer.router.weight)})
    slow, fast = _both(layer, x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # replacing the parameter object
    layer.router.weight = nn.Parameter(torch.randn_like(layer.router.weight))
    slow2, fast2 = _both(layer, x)
    torch.testing.assert_close(fast2, slow2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast2, fast)


def test_bf16_no_grad_forward_is_close_to_training_forward(pool) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool, k=4, dtype=torch.bfloat16)
    slow, fast = _both(layer, torch.randn(8, 64).bfloat16())
    assert fast.dtype == torch.bfloat16
    assert ((fast.float() - slow.float()).abs().max() / slow.float().abs().max()) < 2e-2


def test_observers_and_fixed_routers_still_take_the_full_path(pool) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool, k=3)
    seen: list[MoREForwardInfo] = []
    handle = layer.add_observer(seen.append)
    with torch.no_grad():
        layer(torch.randn(2, 64))
    assert len(seen) == 1
    handle.remove()
    ids = layer.bank.experts_of(0)
    layer.router = FixedRouter(ids, torch.ones(len(ids)))
    x = torch.randn(3, 64)
    slow, fast = _both(layer, x)
    torch.testing.assert_close(fast, slow)
