"""Router state: what travels, checkpoint round-trip, and refusing another pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bad_adapters import copy_adapter, edit_tensors
from smartfed.config import RouterConfig
from smartfed.errors import CheckpointError, ConfigError
from smartfed.model.inject import inject_more
from smartfed.model.state import (
    get_quotas,
    load_router_state_dict,
    load_routers,
    more_layers,
    router_state_dict,
    save_routers,
    set_quotas,
)
from smartfed.pool.pool import resolve_pool

Q0 = "model.layers.0.self_attn.q_proj"


def _more(model_dir: Path, pool, seed: int = 0):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inject_more(model, pool, RouterConfig(topk_experts=4, router_init_std=0.3), seed=seed)
    return model


@pytest.fixture(scope="module")
def pool(tiny_pool: list[Path]):  # type: ignore[no-untyped-def]
    return resolve_pool([str(p) for p in tiny_pool])


def test_router_state_dict_is_exactly_the_routers(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = _more(tiny_model_dir, pool)
    sd = router_state_dict(model)
    assert list(sd) == [f"{m}.router.weight" for m in pool.matrices()]
    assert sd[f"{Q0}.router.weight"].shape == (12, 64)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in sd.values())
    sd[f"{Q0}.router.weight"].zero_()  # a copy: the model is untouched
    assert more_layers(model)[Q0].router.weight.abs().sum() > 0


def test_state_dict_round_trip_and_shape_key_checks(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    a, b = _more(tiny_model_dir, pool, seed=0), _more(tiny_model_dir, pool, seed=1)
    load_router_state_dict(b, router_state_dict(a))
    ids = torch.randint(0, 400, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits)
    sd = router_state_dict(a)
    with pytest.raises(CheckpointError, match="1 missing"):
        load_router_state_dict(b, {k: v for k, v in sd.items() if not k.startswith(Q0)})
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_router_state_dict(b, {**sd, "x.router.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=f"router {Q0}: shape"):
        load_router_state_dict(b, {**sd, f"{Q0}.router.weight": torch.zeros(3, 64)})


def test_quotas(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = _more(tiny_model_dir, pool)
    set_quotas(model, {Q0: 12, "model.layers.0.mlp.up_proj": 1})
    assert get_quotas(model)[Q0] == 12 and get_quotas(model)["model.layers.0.mlp.up_proj"] == 1
    with pytest.raises(ConfigError, match="no MoRE layer"):
        set_quotas(model, {"model.layers.9.self_attn.q_proj": 1})
    with pytest.raises(ConfigError, match="impossible top-K"):
        set_quotas(model, {Q0: 13})


def test_save_load_round_trip(tiny_model_dir: Path, pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Arrange
    a, b = _more(tiny_model_dir, pool, seed=0), _more(tiny_model_dir, pool, seed=1)
    set_quotas(a, {Q0: 7})
    # Act
    path = save_routers(tmp_path / "ckpt", a, pool)
    quotas = load_routers(tmp_path / "ckpt", b, pool)
    # Assert
    assert path.name == "routers.safetensors"
    assert quotas == get_quotas(a) and quotas[Q0] == 7
    assert json.loads((tmp_path / "ckpt/quotas.json").read_text())[Q0] == 7
    for k, v in router_state_dict(a).items():
        assert torch.equal(v, router_state_dict(b)[k])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert {k: meta[k] for k in pool.names} == pool.fingerprint()


def test_load_refuses_another_pool(tiny_model_dir: Path, tiny_pool: list[Path], pool,  # type: ignore[no-untyped-def]
                                   tmp_path: Path) -> None:
    # Arrange: routers for the 3-adapter pool
    save_routers(tmp_path / "ckpt", _more(tiny_model_dir, pool), pool)
    smaller = resolve_pool([str(p) for p in tiny_pool[:2]])
    changed_dir = edit_tensors(copy_adapter(tiny_pool[2], tmp_path / "c_mlp"),
                               lambda t: {k: v * 2 for k, v in t.items()})
    changed = resolve_pool([*(str(p) for p in tiny_pool[:2]), str(changed_dir)])
    reordered = resolve_pool([str(tiny_pool[1]), str(tiny_pool[0]), str(tiny_pool[2])])
    # Act / Assert
    with pytest.raises(CheckpointError, match="adapter 'c_mlp' is not in the current pool"):
        load_routers(tmp_path / "ckpt", _more(tiny_model_dir, smaller), smaller)
    with pytest.raises(CheckpointError, match="adapter 'c_mlp' has other weights"):
        load_routers(tmp_path / "ckpt", _more(tiny_model_dir, changed), changed)
    with pytest.raises(CheckpointError, match="pool order"):
        load_routers(tmp_path / "ckpt", _more(tiny_model_dir, reordered), reordered)
    with pytest.raises(CheckpointError, match="not found"):
        load_routers(tmp_path / "nothing", _more(tiny_model_dir, pool), pool)
