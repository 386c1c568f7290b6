from __future__ import annotations

import dataclasses

import pytest

from smartfed.config import RunConfig, leaf_index
from smartfed.errors import ConfigError


def test_defaults_are_the_papers() -> None:
    cfg = RunConfig()
    assert (cfg.fed.num_clients, cfg.fed.sample_clients, cfg.fed.num_rounds) == (20, 2, 20)
    assert (cfg.train.local_steps, cfg.train.batch_size, cfg.train.learning_rate) == (10, 16, 5e-4)
    assert cfg.router.topk_experts == 32


def test_flat_roundtrip_and_bare_keys() -> None:
    cfg = RunConfig.from_flat({"topk_experts": "8", "fed.num_rounds": 3, "enable_eeqa": "false"})
    assert cfg.router.topk_experts == 8 and cfg.fed.num_rounds == 3 and not cfg.quota.enable_eeqa
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().router.topk_experts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("topk_experts", 0, "topk_experts"),
        ("sample_clients", 50, "sample_clients"),
        ("learning_rate", "abc", "learning_rate"),
        ("no_such_key", 1, "no_such_key"),
        ("dtype", "int8", "dtype"),
        ("data_fraction", 0.0, "data_fraction"),
    ],
)
def test_bad_values_name_the_field(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_flat({key: value})


def test_leaf_names_unique() -> None:
    assert leaf_index()["topk_experts"] == "router"


def test_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "c.toml"
    p.write_text('[router]\ntopk_experts = 4\n[fed]\nnum_rounds = 2\n')
    cfg = RunConfig.from_toml(p, {"num_rounds": 5})
    assert cfg.router.topk_experts == 4 and cfg.fed.num_rounds == 5
    p.write_text("[router\n")
    with pytest.raises(ConfigError, match="TOML"):
        RunConfig.from_toml(p)
