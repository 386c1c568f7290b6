"""Low-rank factorised routers (``router.router_rank = r``): logits ``U (V x)``, both factors train
and travel, EEQA importance and top-K work, checkpoints refuse the other kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from factories import load_tiny
from smartfed.cli.pool_report import format_pool
from smartfed.config import RouterConfig, RunConfig
from smartfed.errors import CheckpointError, ConfigError
from smartfed.methods import get_method
from smartfed.model.inject import inject_more
from smartfed.model.state import (
    load_router_state_dict,
    load_routers,
    more_layers,
    router_state_dict,
    save_routers,
)
from smartfed.quota.importance import ImportanceTracker
from smartfed.routing.lowrank import LowRankRouter, lowrank_seed, router_param_count
from smartfed.routing.router import random_projection

R = 4


def _more(model_dir: Path, pool, rank: int = R, proj: int = 0, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    model = load_tiny(model_dir)[0]
    cfg = RouterConfig(topk_experts=4, router_rank=rank, router_proj_dim=proj)
    inject_more(model, pool, cfg, seed=seed)
    return model


def test_config_validates_router_rank() -> None:
    assert RouterConfig().router_rank == 0  # off by default: the paper's full router
    with pytest.raises(ConfigError, match="router_rank=-1"):
        RouterConfig(router_rank=-1)
    with pytest.raises(ConfigError, match="router_rank=8: a low-rank router has no fixed"):
        RunConfig.from_flat({"router_rank": 8, "router_proj_dim": 16})
    assert RunConfig.from_flat({"router_rank": "8"}).router.router_rank == 8


def test_logits_are_u_of_vx_and_init_is_seeded() -> None:
    gen = torch.Generator().manual_seed(0)
    router = LowRankRouter(32, 6, 3, init_std=0.5, generator=gen, down_seed=7)
    x = torch.randn(5, 32, generator=gen)
    u, v = router.weight.detach(), router.down.detach()
    assert u.shape == (6, 3) and v.shape == (3, 32)
    assert torch.allclose(router.probs(x), torch.softmax((x @ v.T) @ u.T, dim=-1), atol=1e-6)
    assert torch.equal(v, random_projection(32, 3, 7))  # V starts as a seeded projection
    out = router(x, 2)
    assert out.weights.shape == (5, 2) and out.indices.shape == (5, 2)
    assert lowrank_seed(0, "a") != lowrank_seed(0, "b") != lowrank_seed(1, "a")
    with pytest.raises(ValueError, match="rank=0"):
        LowRankRouter(32, 6, 0)


def test_shapes_state_and_report(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = load_tiny(tiny_model_dir)[0]
    report = inject_more(model, pool, RouterConfig(topk_experts=4, router_rank=R), seed=0)
    layers = more_layers(model)
    state = router_state_dict(model)
    want_keys = {f"{n}.router.{p}" for n in layers for p in ("weight", "down")}
    assert set(state) == want_keys
    for name, layer in layers.items():
        assert state[f"{name}.router.weight"].shape == (layer.num_experts, R)
        assert state[f"{name}.router.down"].shape == (R, layer.in_features)
    params = get_method("smartfed").trainable_parameters(model)
    assert len(params) == 2 * len(layers)
    want = sum(router_param_count(ly.num_experts, ly.in_features, rank=R) for ly in layers.values())
    assert report.router_params == want == sum(v.numel() for v in state.values())
    assert report.router_rank == R and report.full_router_params == 6656
    assert want < 6656  # r (M + d_in) < M d_in (M_m is 4-8 here; 64 on the paper pool)
    (line,) = report.summary_lines()
    assert f"(low-rank r={R}): {want:,} parameters" in line and "routers: 6,656 param" in line
    with pytest.raises(ConfigError, match="router_rank=64 is not below d_in=64"):
        inject_more(
            load_tiny(tiny_model_dir)[0], pool, RouterConfig(topk_experts=4, router_rank=64)
        )


def test_both_factors_train_and_eeqa_sees_them(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = _more(tiny_model_dir, pool)
    before = router_state_dict(model)
    params = get_method("smartfed").trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(0, 400, (2, 9), generator=torch.Generator().manual_seed(0))
    model.train()
    with ImportanceTracker(model) as tracker:
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    after = router_state_dict(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # U and V both moved
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith((".router.weight", ".router.down")) for n in trainable)
    scores = tracker.scores()
    assert set(scores) == set(more_layers(model))
    assert all(sum(v) > 0 for v in scores.values())


def test_checkpoint_refuses_the_other_router_kind(  # type: ignore[no-untyped-def]
    tiny_model_dir: Path, pool, tmp_path: Path
) -> None:
    low, full = _more(tiny_model_dir, pool), _more(tiny_model_dir, pool, rank=0)
    save_routers(tmp_path / "low", low, pool)
    save_routers(tmp_path / "full", full, pool)
    msg = "routers saved with router_rank={}, this model has router_rank={}"
    with pytest.raises(CheckpointError, match=msg.format(R, 0)):
        load_routers(tmp_path / "low", _more(tiny_model_dir, pool, rank=0), pool)
    with pytest.raises(CheckpointError, match=msg.format(0, R)):
        load_routers(tmp_path / "full", _more(tiny_model_dir, pool), pool)
    with pytest.raises(CheckpointError, match=msg.format(R, 8)):
        load_routers(tmp_path / "low", _more(tiny_model_dir, pool, rank=8), pool)
    with pytest.raises(CheckpointError, match=msg.format(R, 0)):  # projected h == r: refused
        load_routers(tmp_path / "low", _more(tiny_model_dir, pool, rank=0, proj=R), pool)
    with pytest.raises(CheckpointError, match="unexpected"):  # raw state (resume path) too
        load_router_state_dict(full, router_state_dict(low))
    with torch.no_grad():
        for layer in more_layers(low).values():
            layer.router.down.add_(0.5)
    save_routers(tmp_path / "low", low, pool)
    again = _more(tiny_model_dir, pool)
    load_routers(tmp_path / "low", again, pool)
    a, b = router_state_dict(low), router_state_dict(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mole_refuses_a_low_rank_router(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    cfg = RunConfig.from_flat({"router_rank": R, "topk_experts": 4})
    with pytest.raises(ConfigError, match="mole"):
        get_method("mole").prepare(load_tiny(tiny_model_dir)[0], pool, cfg)


def test_pool_inspect_reports_the_low_rank_size(pool) -> None:  # type: ignore[no-untyped-def]
    text = "\n".join(format_pool(pool, RouterConfig(topk_experts=4, router_rank=R)))
    model_params = R * (98 + sum(m[0][1].d_in for m in map(pool.modules_for, pool.matrices())))
    assert f"router parameters: {model_params:,}" in text and f"router_rank={R}" in text
    assert "paper-faithful" in text
