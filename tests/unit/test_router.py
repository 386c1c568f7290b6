"""TopKRouter invariants: shapes, selection, renormalisation, temperature, seeding, gradients."""

from __future__ import annotations

import pytest
import torch

from smartfed.routing.router import FixedRouter, TopKRouter


def _router(**kw: object) -> TopKRouter:
    return TopKRouter(16, 10, init_std=1.0, generator=torch.Generator().manual_seed(0), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [1, 3, 10])
def test_topk_keeps_the_k_largest_softmax_weights(k: int) -> None:
    # Arrange
    router = _router()
    x = torch.randn(2, 5, 16)
    # Act
    out = router(x, k)
    # Assert
    probs = router.probs(x)
    assert out.weights.shape == out.indices.shape == (2, 5, k)
    assert out.indices.dtype == torch.int64 and out.weights.dtype == torch.float32
    assert ((out.indices >= 0) & (out.indices < 10)).all()
    assert all(len(set(row.tolist())) == k for row in out.indices.reshape(-1, k))  # distinct
    torch.testing.assert_close(out.weights, probs.gather(-1, out.indices))
    kth = out.weights[..., -1:]
    masked = probs.scatter(-1, out.indices, -1.0)  # everything not kept
    assert (masked <= kth + 1e-7).all()
    assert (out.weights.sum(-1) <= 1 + 1e-6).all()
    if k == 10:
        torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, 5))


def test_renormalised_weights_sum_to_one_and_keep_the_order() -> None:
    x = torch.randn(7, 16)
    plain, renorm = _router()(x, 3), _router(renormalize=True)(x, 3)
    assert torch.equal(plain.indices, renorm.indices)
    torch.testing.assert_close(renorm.weights.sum(-1), torch.ones(7))
    torch.testing.assert_close(renorm.weights, plain.weights / plain.weights.sum(-1, keepdim=True))


def test_temperature_sharpens_and_seed_determines_the_init() -> None:
    x = torch.randn(4, 16)
    hot, cold = _router(temperature=10.0), _router(temperature=0.1)
    assert torch.equal(hot.weight, cold.weight)  # same seed, same W
    assert (cold(x, 1).weights > hot(x, 1).weights).all()
    other = TopKRouter(16, 10, init_std=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.weight, hot.weight)
    assert TopKRouter(16, 10, init_std=0.0).weight.abs().sum() == 0


def test_gradient_reaches_only_the_router_weight_and_no_state_is_kept() -> None:
    router = _router()
    x = torch.randn(3, 16, requires_grad=False)
    out = router(x, 2)
    out.weights.sum().backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert [n for n, _ in router.named_parameters()] == ["weight"]
    assert list(router.buffers()) == []
    assert torch.equal(router(x, 2).indices, out.indices)  # stateless


def test_bf16_input_routes_like_float32() -> None:
    router = _router()
    x = torch.randn(64, 16)
    a, b = router(x, 2), router(x.bfloat16(), 2)
    assert b.weights.dtype == torch.float32
    assert (a.indices[:, 0] == b.indices[:, 0]).float().mean() > 0.9


def test_fixed_router_ignores_input_and_k() -> None:
    fixed = FixedRouter(torch.tensor([4, 1]), torch.tensor([1.0, 0.5]))
    out = fixed(torch.randn(2, 3, 16), 7)
    assert out.indices.shape == (2, 3, 2) and out.indices[1, 2].tolist() == [4, 1]
    assert out.weights[0, 0].tolist() == [1.0, 0.5]


def test_bad_dimensions_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        TopKRouter(16, 0)


def test_full_projected_and_low_rank_routers_share_one_softmax_top_k() -> None:
    from smartfed.routing.lowrank import LowRankRouter
    from smartfed.routing.router import SoftmaxTopKRouter

    x = torch.randn(3, 16)
    gen = torch.Generator().manual_seed(0)
    routers = [
        _router(temperature=0.5, renormalize=True),
        TopKRouter(16, 10, projection=torch.randn(4, 16), generator=gen, temperature=0.5),
        LowRankRouter(16, 10, rank=4, generator=gen, temperature=0.5, renormalize=True),
    ]
    for router in routers:
        assert isinstance(router, SoftmaxTopKRouter) and router.num_experts == 10
        want = torch.softmax(router.logits(x).float() / 0.5, dim=-1)
        torch.testing.assert_close(router.probs(x), want)
        out = router(x, 3)
        assert out.indices.shape == (3, 3)
    assert not isinstance(FixedRouter(torch.tensor([0]), torch.tensor([1.0])), SoftmaxTopKRouter)
    with pytest.raises(ValueError, match="LowRankRouter: d_in=16, num_experts=10, rank=0"):
        LowRankRouter(16, 10, rank=0)
