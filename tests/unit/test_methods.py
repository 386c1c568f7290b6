"""Method registry and the smartfed methods: what is prepared and exactly what travels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factories import load_tiny_base
from smartfed.config import RunConfig
from smartfed.errors import CheckpointError, ConfigError
from smartfed.methods import METHODS, Method, get_method
from smartfed.methods.base import AuxiliaryLoss, LocalUpdate, ServerSearch
from smartfed.pool.pool import resolve_pool


def _model_and_pool(model_dir: Path, pool_dirs: list[Path]):  # type: ignore[no-untyped-def]
    model, tok = load_tiny_base(model_dir)
    return model, tok, resolve_pool([str(p) for p in pool_dirs])


def test_every_registered_method_resolves() -> None:
    for name in METHODS:
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name
    assert get_method("smartfed").uses_eeqa and not get_method("smartfed_no_eeqa").uses_eeqa


def test_optional_hooks_are_declared_by_protocol() -> None:
    hooks = (LocalUpdate, ServerSearch, AuxiliaryLoss)
    found = {n: {h.__name__ for h in hooks if isinstance(get_method(n), h)} for n in METHODS}
    assert {n: h for n, h in found.items() if h} == {
        "merge": {"LocalUpdate"},
        "lorahub": {"LocalUpdate", "ServerSearch"},
        "mole": {"AuxiliaryLoss"},
    }


def test_a_partial_server_search_is_not_one() -> None:
    class ProposeOnly:
        def server_propose(self, state, server_round, seed):  # type: ignore[no-untyped-def]
            return {}

    assert not isinstance(ProposeOnly(), ServerSearch)


def test_unknown_method_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="smartfed_no_eeqa"):
        get_method("nope")


def test_smartfed_sends_exactly_the_routers(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    model, _, pool = _model_and_pool(tiny_model_dir, tiny_pool)
    method = get_method("smartfed")
    experts = method.prepare(model, pool, RunConfig.from_flat({"topk_experts": 2}))
    state = method.trainable_state(model)
    assert set(state) == {m + ".router.weight" for m in experts}
    assert all(
        v.dtype == torch.float32 and v.shape[0] == experts[k.removesuffix(".router.weight")]
        for k, v in state.items()
    )
    params = method.trainable_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert sum(p.numel() for p in params) == sum(v.numel() for v in state.values())


def test_load_trainable_state_round_trips_and_refuses_other_keys(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, _, pool = _model_and_pool(tiny_model_dir, tiny_pool)
    method = get_method("smartfed")
    method.prepare(model, pool, RunConfig.from_flat({"topk_experts": 2}))
    new = {k: torch.randn_like(v) for k, v in method.trainable_state(model).items()}
    method.load_trainable_state(model, new)
    assert all(torch.equal(method.trainable_state(model)[k], v) for k, v in new.items())
    with pytest.raises(CheckpointError):
        method.load_trainable_state(model, {"x.router.weight": torch.zeros(1)})
