"""The bundle cache key is derived from the config: every field is in it unless listed in
``NOT_IN_BUNDLE`` (a new config field is in the key without anyone copying it by hand)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from smartfed import config as config_mod
from smartfed.config import RunConfig
from smartfed.fed.cache import NOT_IN_BUNDLE, BundleSpec
from smartfed.fed.worker_key import bundle_digest

BASE = RunConfig()
TOGETHER: dict[str, dict[str, object]] = {
    # fields whose other value is valid only with another field changed too (both excluded)
    "fed.dp_noise_multiplier": {"fed.dp_clipping_norm": 1.0},
    "fed.wire_delta": {"fed.wire_dtype": "int8"},
    "fed.wire_error_feedback": {"fed.wire_dtype": "int8"},
}
VALUES: dict[str, object] = {"model.device": "cpu", "fed.country_iso_code": "DEU"}


def _field_type(key: str) -> object:
    section, _, leaf = key.rpartition(".")
    cls = type(getattr(BASE, section)) if section else RunConfig
    return typing.get_type_hints(cls, vars(config_mod))[leaf]


def _other_value(key: str, value: object) -> object:
    """A valid value of ``key`` other than ``value``."""
    if key in VALUES:
        return VALUES[key]
    kind = _field_type(key)
    if typing.get_origin(kind) is typing.Literal:
        return next(v for v in typing.get_args(kind) if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.5
    return f"{value}x" if value else "other"


def _changed(key: str) -> RunConfig:
    flat = BASE.to_flat()
    return RunConfig.from_flat({key: _other_value(key, flat[key]), **TOGETHER.get(key, {})})


def test_exclusions_name_real_fields() -> None:
    assert NOT_IN_BUNDLE.issubset(BASE.to_flat())


@pytest.mark.parametrize("key", sorted(BASE.to_flat()))
def test_a_field_changes_the_key_unless_it_is_excluded(key: str) -> None:
    base, other = BundleSpec.from_config(BASE), BundleSpec.from_config(_changed(key))
    in_key = key not in NOT_IN_BUNDLE
    assert (base != other) == in_key, f"{key}: in the key {base != other}, expected {in_key}"
    digests = {bundle_digest(s, env={}) for s in (base, other)}  # the worker key follows
    assert (len(digests) == 2) == in_key, key
    if in_key:  # and the loaders see the value
        section, _, leaf = key.rpartition(".")
        seen = getattr(getattr(other.run_config(), section), leaf)
        assert seen == getattr(getattr(_changed(key), section), leaf)


def test_excluded_fields_reach_the_loaders_as_one_neutral_value() -> None:
    a = RunConfig.from_flat({"num_clients": 4, "sample_clients": 4, "num_rounds": 3})
    b = RunConfig.from_flat({"num_clients": 4, "sample_clients": 2, "learning_rate": 1e-3})
    spec_a, spec_b = BundleSpec.from_config(a), BundleSpec.from_config(b)
    assert spec_a == spec_b and hash(spec_a) == hash(spec_b)
    assert spec_a.run_config().fed.num_clients == 4


def test_a_nodes_own_file_trains_on_all_of_it() -> None:
    cfg = RunConfig.from_flat({"num_clients": 4, "sample_clients": 3, "heldout_examples": 8})
    spec = BundleSpec.from_config(cfg, dataset="node.jsonl")
    got = spec.run_config()
    assert got.data.dataset == "node.jsonl"
    assert (got.fed.num_clients, got.eval.heldout_examples) == (1, 0)
    assert dataclasses.asdict(spec) != dataclasses.asdict(BundleSpec.from_config(cfg))
