"""The LoRAHub-style registry: names -> local dirs or hub ids, atomic JSON, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.errors import AdapterFileError, ConfigError
from smartfed.model.base import cache_root
from smartfed.pool.pool import resolve_pool
from smartfed.pool.registry import (
    add_entry,
    default_registry_path,
    load_registry,
    locate,
    remove_entry,
)


def test_default_path_is_in_the_smartfed_cache(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTFED_CACHE", str(tmp_path / "c"))
    assert default_registry_path() == cache_root() / "registry.json" == tmp_path / "c/registry.json"
    monkeypatch.delenv("SMARTFED_CACHE")
    assert default_registry_path() == cache_root() / "registry.json"


def test_add_list_remove_round_trip(tiny_pool: list[Path], tmp_path: Path) -> None:
    # Arrange
    reg = tmp_path / "reg.json"
    # Act
    add_entry("en_math", str(tiny_pool[0]), reg)
    add_entry("cn_chat", "someone/cn-chat-lora", reg)
    # Assert
    entries = load_registry(reg)
    assert entries["en_math"].kind == "local" and entries["en_math"].source == str(tiny_pool[0])
    assert entries["cn_chat"].kind == "hub"
    assert json.loads(reg.read_text())["adapters"]["en_math"]["source"] == str(tiny_pool[0])
    assert not list(tmp_path.glob(".reg.json.*"))  # no temp file left behind
    remove_entry("cn_chat", reg)
    assert list(load_registry(reg)) == ["en_math"]
    with pytest.raises(ConfigError, match="not registered"):
        remove_entry("cn_chat", reg)


def test_registered_names_and_dirs_resolve_to_the_same_pool(tiny_pool: list[Path],
                                                           tmp_path: Path) -> None:
    reg = tmp_path / "reg.json"
    add_entry("qv", str(tiny_pool[0]), reg)
    by_name = resolve_pool(["qv", str(tiny_pool[1])], reg)
    assert by_name.names == ["qv", "b_attn"]
    assert by_name.fingerprint()["qv"] == resolve_pool([str(tiny_pool[0])]).fingerprint()["a_qv"]


@pytest.mark.parametrize(("name", "source", "pattern"), [
    ("a,b", ".", "invalid"),
    ("ok", "/does/not/exist", "neither an existing adapter directory nor a hub id"),
])
def test_add_rejects_bad_names_and_sources(name: str, source: str, pattern: str,
                                           tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=pattern):
        add_entry(name, source, tmp_path / "reg.json")


def test_corrupt_registry_is_a_config_error(tmp_path: Path) -> None:
    reg = tmp_path / "reg.json"
    reg.write_text("{oops")
    with pytest.raises(ConfigError, match="is not valid"):
        load_registry(reg)


def test_unknown_name_and_offline_hub_fail_clearly(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    reg = tmp_path / "reg.json"
    with pytest.raises(AdapterFileError, match="not a registered name"):
        locate("cn_chat", reg)
    with pytest.raises(AdapterFileError, match="cannot fetch hub adapter 'someone/x-lora'"):
        locate("someone/x-lora", reg)
    add_entry("remote", "someone/x-lora", reg)
    with pytest.raises(AdapterFileError, match="cannot fetch hub adapter"):
        resolve_pool(["remote"], reg)
