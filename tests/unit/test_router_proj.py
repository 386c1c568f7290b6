"""Projected routers (``router.router_proj_dim = h``): seeded fixed P, only W_r (M x h) trains and
travels, checkpoints refuse the other kind, unit routing stays exact against PEFT."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from factories import load_tiny, make_tokenizer
from smartfed.cli.pool_report import format_pool
from smartfed.config import RouterConfig, RunConfig
from smartfed.errors import CheckpointError, ConfigError
from smartfed.methods import get_method
from smartfed.model.inject import inject_more
from smartfed.model.state import (
    load_routers,
    more_layers,
    router_projection,
    router_state_dict,
    save_routers,
)
from smartfed.model.verify import unit_routing
from smartfed.pool.pool import resolve_pool
from smartfed.routing.router import TopKRouter, projection_seed, random_projection

H = 16


@pytest.fixture(scope="module")
def pool(tiny_pool: list[Path]):  # type: ignore[no-untyped-def]
    return resolve_pool([str(p) for p in tiny_pool])


def _more(model_dir: Path, pool, proj: int = H, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    model = load_tiny(model_dir)[0]
    inject_more(model, pool, RouterConfig(topk_experts=4, router_proj_dim=proj), seed=seed)
    return model


def test_config_validates_router_proj_dim() -> None:
    assert RouterConfig().router_proj_dim == 0  # off by default
    with pytest.raises(ConfigError, match="router_proj_dim=-1"):
        RouterConfig(router_proj_dim=-1)
    assert RunConfig.from_flat({"router_proj_dim": "8"}).router.router_proj_dim == 8
    with pytest.raises(ConfigError, match="router.router_proj_dim"):
        RunConfig.from_flat({"router.router_proj_dim": 2.5})


def test_projection_is_seeded_by_run_seed_and_matrix_name(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    a, b, c = _more(tiny_model_dir, pool), _more(tiny_model_dir, pool), _more(
        tiny_model_dir, pool, seed=1
    )
    la, lb, lc = more_layers(a), more_layers(b), more_layers(c)
    projs = [layer.router.proj for layer in la.values()]
    for name in la:
        assert torch.equal(la[name].router.proj, lb[name].router.proj), name
        assert torch.equal(la[name].router.weight, lb[name].router.weight), name
        assert not torch.equal(la[name].router.proj, lc[name].router.proj), name
    # two matrices with the same d_in still get different projections (the name is in the seed)
    assert not torch.equal(projs[0], projs[1])
    assert projection_seed(0, "x") != projection_seed(0, "y") != projection_seed(1, "y")
    assert router_projection(a) == router_projection(b) != router_projection(c)


def test_projection_keeps_the_scale_of_x() -> None:
    p = random_projection(512, 64, seed=7)
    x = torch.randn(4096, 512, generator=torch.Generator().manual_seed(1))
    ratio = (x @ p.T).pow(2).sum(-1).mean() / x.pow(2).sum(-1).mean()
    assert p.shape == (64, 512) and p.dtype == torch.float32
    assert abs(float(p.std()) - 1 / math.sqrt(64)) < 0.01
    assert 0.8 < float(ratio) < 1.2  # E ||P x||^2 = ||x||^2


def test_shapes_trainable_and_state_dict(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = load_tiny(tiny_model_dir)[0]
    report = inject_more(model, pool, RouterConfig(topk_experts=4, router_proj_dim=H), seed=0)
    layers = more_layers(model)
    for name, layer in layers.items():
        m = layer.num_experts
        assert layer.router.weight.shape == (m, H), name
        assert layer.router.proj.shape == (H, layer.in_features), name
        assert not layer.router.proj.requires_grad
    state = router_state_dict(model)
    assert sorted(state) == sorted(n + ".router.weight" for n in layers)
    assert all(v.shape[1] == H for v in state.values())
    assert not any(k.endswith("router.proj") for k in model.state_dict())  # never saved
    method = get_method("smartfed")
    assert [p.shape for p in method.trainable_parameters(model)] == [
        (layer.num_experts, H) for layer in layers.values()
    ]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".router.weight") for n in trainable)
    want = sum(report.experts_per_matrix.values()) * H
    assert report.router_params == want == 98 * H and report.router_proj_dim == H
    assert report.router_bytes_fp32 == 4 * want
    full = inject_more(load_tiny(tiny_model_dir)[0], pool, RouterConfig(topk_experts=4), seed=0)
    assert full.router_params == 6656 and full.router_proj_dim == 0  # 4x (d_in 64) / 8x (128)


def test_projected_logits_are_w_of_px() -> None:
    gen = torch.Generator().manual_seed(0)
    p = random_projection(32, 8, seed=3)
    router = TopKRouter(32, 6, init_std=0.5, projection=p, generator=gen)
    x = torch.randn(5, 32, generator=gen)
    want = torch.softmax((x @ p.T) @ router.weight.detach().T, dim=-1)
    assert torch.allclose(router.probs(x), want, atol=1e-6)
    assert router.proj_dim == 8 and TopKRouter(32, 6).proj_dim == 0
    with pytest.raises(ValueError, match="projection"):
        TopKRouter(32, 6, projection=torch.zeros(8, 31))


def test_only_router_weights_change_in_a_training_step(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = _more(tiny_model_dir, pool)
    projs = {n: layer.router.proj.clone() for n, layer in more_layers(model).items()}
    before = router_state_dict(model)
    params = get_method("smartfed").trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(0, 400, (2, 9), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    after = router_state_dict(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    for n, layer in more_layers(model).items():
        assert torch.equal(projs[n], layer.router.proj), n


def test_unit_routing_still_matches_peft(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel

    base = load_tiny(tiny_model_dir)[0]
    tok = make_tokenizer()
    batch = dict(tok(["What is 47 plus 38?", "def add(a, b):"], return_tensors="pt", padding=True))
    mask = batch["attention_mask"].bool()
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(pool.adapters[0].path), "a0")
    for i, adapter in enumerate(pool.adapters[1:], start=1):
        peft.load_adapter(str(adapter.path), adapter_name=f"a{i}")
    peft.eval()
    inject_more(base, pool, RouterConfig(topk_experts=4, router_proj_dim=H), seed=0)
    with torch.no_grad():
        for i in range(len(pool.adapters)):
            peft.set_adapter(f"a{i}")
            want = peft(**batch).logits
            with unit_routing(base, i):
                got = base(**batch).logits
            err = (got - want)[mask].abs().max() / want[mask].abs().max()
            assert float(err) < 1e-5, (i, float(err))
        routed = base(**batch).logits  # the projected routers themselves run and are finite
    assert torch.isfinite(routed).all()


def test_proj_dim_must_be_below_d_in(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="router_proj_dim=64 is not below d_in=64"):
        model = load_tiny(tiny_model_dir)[0]
        inject_more(model, pool, RouterConfig(topk_experts=4, router_proj_dim=64))


def test_mole_refuses_a_projection(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    cfg = RunConfig.from_flat({"router_proj_dim": H, "topk_experts": 4})
    with pytest.raises(ConfigError, match="mole"):
        get_method("mole").prepare(load_tiny(tiny_model_dir)[0], pool, cfg)


def test_checkpoint_refuses_the_other_router_kind(  # type: ignore[no-untyped-def]
    tiny_model_dir: Path, pool, tmp_path: Path
) -> None:
    proj, full = _more(tiny_model_dir, pool), _more(tiny_model_dir, pool, proj=0)
    save_routers(tmp_path / "proj", proj, pool)
    save_routers(tmp_path / "full", full, pool)
    msg = "routers saved with router_proj_dim={}, this model has router_proj_dim={}"
    with pytest.raises(CheckpointError, match=msg.format(16, 0)):
        load_routers(tmp_path / "proj", _more(tiny_model_dir, pool, proj=0), pool)
    with pytest.raises(CheckpointError, match=msg.format(0, 16)):
        load_routers(tmp_path / "full", _more(tiny_model_dir, pool), pool)
    with pytest.raises(CheckpointError, match=msg.format(16, 8)):
        load_routers(tmp_path / "proj", _more(tiny_model_dir, pool, proj=8), pool)
    with pytest.raises(CheckpointError, match="another seed"):
        load_routers(tmp_path / "proj", _more(tiny_model_dir, pool, seed=5), pool)
    # the right kind loads, bit-exactly
    with torch.no_grad():
        for layer in more_layers(proj).values():
            layer.router.weight.add_(0.5)
    save_routers(tmp_path / "proj", proj, pool)
    again = _more(tiny_model_dir, pool)
    load_routers(tmp_path / "proj", again, pool)
    a, b = router_state_dict(proj), router_state_dict(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pool_inspect_reports_the_projected_size(pool) -> None:  # type: ignore[no-untyped-def]
    full = "\n".join(format_pool(pool, RouterConfig(topk_experts=4)))
    proj = "\n".join(format_pool(pool, RouterConfig(topk_experts=4, router_proj_dim=H)))
    assert "router parameters: 6,656" in full and "fp32 26,624" in full
    assert f"router parameters: {98 * H:,}" in proj and f"fp32 {4 * 98 * H:,}" in proj
    assert f"router_proj_dim={H}" in proj
    with pytest.raises(ConfigError, match="router_proj_dim=64 is not below d_in=64"):
        format_pool(pool, RouterConfig(topk_experts=4, router_proj_dim=64))
