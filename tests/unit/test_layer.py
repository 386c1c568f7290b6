"""MoRELinear: forward algebra, any routing, quotas, output scale modes, observers, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smartfed.errors import ConfigError
from smartfed.experts.bank import ExpertBank
from smartfed.routing.layer import MoREForwardInfo, MoRELinear
from smartfed.routing.router import RoutingOutput, TopKRouter

V_PROJ = "model.layers.0.self_attn.v_proj"  # 14 experts: a_qv r=4, b_attn r=8, c_mlp r=2


def _layer(pool, k: int = 4, mode: str = "rank", dtype: torch.dtype = torch.float32,  # type: ignore[no-untyped-def]
           renormalize: bool = False) -> MoRELinear:
    torch.manual_seed(0)
    base = nn.Linear(64, 32, bias=True).to(dtype).requires_grad_(False)
    bank = ExpertBank.from_adapters(pool.adapters, V_PROJ, dtype=dtype)
    router = TopKRouter(64, bank.num_experts, init_std=0.5, renormalize=renormalize,
                        generator=torch.Generator().manual_seed(0))
    return MoRELinear.from_linear(base, bank, router, k, output_scale_mode=mode, output_scale=3.0,
                                  name=V_PROJ)


def _dense(routing: RoutingOutput, m: int) -> torch.Tensor:
    return torch.zeros(*routing.weights.shape[:-1], m).scatter(-1, routing.indices, routing.weights)


def test_forward_is_base_plus_scaled_topk_mixture(pool) -> None:  # type: ignore[no-untyped-def]
    # Arrange
    layer = _layer(pool, k=5)
    x = torch.randn(2, 3, 64)
    # Act
    out = layer(x)
    routing = layer.route(x)
    # Assert: brute force over materialised experts, float64
    bank = layer.bank
    a, b, s = bank.A.double(), bank.B.double(), bank.scaling.double()
    experts = torch.einsum("dm,mi,...i->...md", b, a, x.double()) * s[:, None]  # (..., M, d_out)
    w = _dense(routing, bank.num_experts).double()
    c = sum(bank.source_ranks) / len(bank.source_ranks)  # mode "rank": mean source rank = 14/3
    want = layer.base_layer(x).double() + c * (w[..., None] * experts).sum(-2)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    assert layer.output_scale == pytest.approx(14 / 3)


def test_sparse_and_dense_routing_give_the_same_update(pool) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool, k=3)
    x = torch.randn(4, 64)
    sparse = layer.route(x)
    m = layer.num_experts
    dense = RoutingOutput(_dense(sparse, m), torch.arange(m).expand(4, m))
    torch.testing.assert_close(layer.apply_experts(x, sparse), layer.apply_experts(x, dense))
    empty = RoutingOutput(torch.zeros(4, 0), torch.zeros(4, 0, dtype=torch.long))
    assert layer.apply_experts(x, empty).abs().max() == 0


def test_unit_routing_on_one_adapter_with_c1_is_that_lora(pool) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool)
    x = torch.randn(5, 64)
    for index, mod in pool.modules_for(V_PROJ):
        ids = layer.bank.experts_of(index)
        unit = RoutingOutput(torch.ones(5, len(ids)), ids.expand(5, -1))
        got = layer.apply_experts(x, unit, output_scale=1.0)
        torch.testing.assert_close(got, mod.scaling * x @ mod.A.T @ mod.B.T, rtol=1e-5, atol=1e-5)


def test_delta_weight_matches_apply_experts(pool) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool, mode="constant")
    w = torch.rand(layer.num_experts)
    x = torch.randn(3, 64)
    dense = RoutingOutput(w.expand(3, -1), torch.arange(layer.num_experts).expand(3, -1))
    torch.testing.assert_close(x @ layer.get_delta_weight(w).T, layer.apply_experts(x, dense))
    assert layer.get_delta_weight().shape == (32, 64)


@pytest.mark.parametrize(
    ("mode", "want"), [("rank", 14 / 3), ("topk", 6.0), ("quota", 6.0), ("constant", 3.0)]
)
def test_output_scale_modes(pool, mode: str, want: float) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool, k=6, mode=mode)
    assert layer.output_scale == pytest.approx(want)
    layer.set_quota(2)  # only `quota` follows K_m; `topk` keeps the K the layer was built with
    assert layer.output_scale == pytest.approx(2.0 if mode == "quota" else want)


@pytest.mark.parametrize("k", [0, 15, -1, 2.5, True])
def test_impossible_quota_is_a_config_error(pool, k: object) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool)
    with pytest.raises(ConfigError, match=f"impossible top-K.*{V_PROJ}.*M=14"):
        layer.set_quota(k)  # type: ignore[arg-type]
    layer.set_quota(14)
    assert layer.route(torch.randn(2, 64)).indices.shape == (2, 14)


def test_observers_get_detached_info_and_can_be_removed(pool) -> None:  # type: ignore[no-untyped-def]
    # Arrange
    layer = _layer(pool, k=3)
    seen: list[MoREForwardInfo] = []
    handle = layer.add_observer(seen.append)
    x = torch.randn(2, 4, 64)
    # Act
    out = layer(x)
    # Assert
    (info,) = seen
    assert info.x.shape == (2, 4, 64) and info.base_out.shape == (2, 4, 32)
    assert info.z.shape == (2, 4, 14) and info.routing.indices.shape == (2, 4, 3)
    assert not any(t.requires_grad for t in (info.x, info.base_out, info.z, info.routing.weights))
    torch.testing.assert_close(info.z, x @ layer.bank.A.T)
    torch.testing.assert_close(info.base_out, layer.base_layer(x))
    assert out.requires_grad  # observers do not cut the graph
    handle.remove()
    layer(x)
    assert len(seen) == 1


def test_only_the_router_gets_gradients(pool) -> None:  # type: ignore[no-untyped-def]
    layer = _layer(pool, k=4)
    layer(torch.randn(3, 64)).pow(2).sum().backward()
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["router.weight"]
    assert layer.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("renormalize", [False, True])
def test_bf16_layer_computes_in_bf16_close_to_fp32(pool, renormalize: bool) -> None:  # type: ignore[no-untyped-def]
    f32 = _layer(pool, k=4, renormalize=renormalize)
    b16 = _layer(pool, k=4, dtype=torch.bfloat16, renormalize=renormalize)
    x = torch.randn(8, 64)
    out = b16(x.bfloat16())
    assert out.dtype == torch.bfloat16 and b16.bank.A.dtype == torch.bfloat16
    ref = f32(x)
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 3e-2
