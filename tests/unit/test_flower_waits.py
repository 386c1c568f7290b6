"""flower_waits: a module's sleeps are capped and its pull back-off starts at 0.1 s, once, and
only where the Flower module has what is patched; the Flower 1.41 modules SmartFed patches do."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest
from flwr.superlink.grid import http_grid
from flwr.supernode import start_client_internal
from flwr.supernode.runtime import run_clientapp

from smartfed.fed import flower_waits as fw


def _module(**attrs: Any) -> types.ModuleType:
    mod = types.ModuleType("fake_flower_module")
    mod.__dict__.update(attrs)
    return mod


def test_cap_sleeps_caps_every_sleep_of_that_module_only() -> None:
    mod = _module(time=time)
    assert fw.cap_sleeps(mod, 0.05) and fw.cap_sleeps(mod, 0.05)  # twice: still one wrapper
    t0 = time.perf_counter()
    mod.time.sleep(3)
    assert time.perf_counter() - t0 < 2.5  # capped at 0.05 s; uncapped it would be 3 s
    assert mod.time.monotonic() > 0  # everything else is the time module's
    assert time.sleep is not mod.time.sleep  # the real module is untouched
    assert not fw.cap_sleeps(_module())  # nothing to cap: the caller keeps Flower's waits


def test_quick_backoff_binds_initial_backoff_once() -> None:
    calls: list[float] = []

    def pull(ids: list[str], *, initial_backoff: float = 1.0) -> None:
        calls.append(initial_backoff)

    mod = _module(pull=pull)
    assert fw.quick_backoff(mod, "pull", 0.1) and fw.quick_backoff(mod, "pull", 0.1)
    mod.pull(["a"])
    assert calls == [0.1]
    assert not fw.quick_backoff(_module(pull=lambda ids: None), "pull")  # no such argument
    assert not fw.quick_backoff(_module(), "pull")


def test_the_flower_1_41_waits_smartfed_shortens_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)
    for mod, name in (
        (start_client_internal, "pull_objects"),
        (run_clientapp, "pull_and_inflate_object_from_tree"),
        (http_grid, "pull_objects"),
    ):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # restored after the test
        assert fw.quick_backoff(mod, name), (mod.__name__, name)
    assert fw.cap_sleeps(start_client_internal)
