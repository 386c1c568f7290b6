"""A LoRAHub-style name registry: ``--lora_pool cn_chat,en_math`` resolves names to sources.

The registry is one JSON file, ``{"adapters": {name: {"source": ..., "kind": "local"|"hub"}}}``,
at ``PoolConfig.registry`` or ``$SMARTFED_CACHE/registry.json`` (``~/.cache/smartfed`` without the
variable; the same folder as :func:`smartfed.model.base.cache_root`). Every write is atomic.
A source is a local PEFT directory (stored as an absolute path) or a Hugging Face hub id, which is
only downloaded (``huggingface_hub.snapshot_download``) when it is not a local path.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from smartfed.errors import AdapterFileError, ConfigError
from smartfed.files import atomic_write_json

REGISTRY_FILE = "registry.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


@dataclass(frozen=True)
class RegistryEntry:
    """One registered adapter: its name, where it comes from and which kind of source that is."""

    name: str
    source: str
    kind: str  # "local" or "hub"


def default_registry_path() -> Path:
    """Return ``<cache>/registry.json`` (:func:`smartfed.files.default_cache_dir`)."""
    from smartfed.files import default_cache_dir

    return default_cache_dir() / REGISTRY_FILE


def registry_path(path: str | Path = "") -> Path:
    """Return ``path`` when given, else :func:`default_registry_path`."""
    return Path(path).expanduser() if str(path) else default_registry_path()


def load_registry(path: str | Path = "") -> dict[str, RegistryEntry]:
    """Read the registry (an absent file is an empty registry).

    Raises:
        ConfigError: the file is not a valid registry.
    """
    p = registry_path(path)
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        entries = data["adapters"]
        return {
            name: RegistryEntry(name, str(e["source"]), str(e.get("kind", "local")))
            for name, e in entries.items()
        }
    except (
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        KeyError,
        TypeError,
        AttributeError,
    ) as err:
        raise ConfigError(
            f"pool registry {p} is not valid ({err}); fix or delete it and re-add adapters "
            "with `smartfed pool add NAME SOURCE`"
        ) from err


def add_entry(
    name: str, source: str, path: str | Path = "", *, replace: bool = False
) -> RegistryEntry:
    """Register ``name`` -> ``source`` (a local adapter dir or a hub id); atomic write.

    A local directory is stored as an absolute path and must exist. Re-adding a name with the same
    source changes nothing; another source needs ``replace``. Everything else in the file (other
    names, keys SmartFed does not know) is kept as it was.

    Raises:
        ConfigError: a bad name, a source that is neither an existing dir nor a hub id, or a name
            already registered for another source without ``replace``.
    """
    if not _NAME.match(name) or "," in name:
        raise ConfigError(
            f"pool name {name!r} is invalid: use letters, digits, '_', '-' or '.' (no ',' or '/')"
        )
    local = Path(source).expanduser()
    if local.is_dir():
        entry = RegistryEntry(name, str(local.resolve()), "local")
    elif is_hub_id(source) and not local.exists():
        entry = RegistryEntry(name, source, "hub")
    else:
        raise ConfigError(
            f"pool source {source!r} is neither an existing adapter directory nor a hub id "
            "(owner/name); pass one of those"
        )
    old = load_registry(path).get(name)
    if old is not None and old.source != entry.source and not replace:
        raise ConfigError(
            f"pool name {name!r} is already registered for {old.source}; pass --force to replace "
            "it, or choose another name"
        )
    _update(path, name, {"source": entry.source, "kind": entry.kind})
    return entry


def remove_entry(name: str, path: str | Path = "") -> None:
    """Remove ``name`` from the registry (everything else in the file is kept).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    entries = load_registry(path)
    if name not in entries:
        raise ConfigError(f"pool name {name!r} is not registered; see `smartfed pool list`")
    _update(path, name, None)


def is_hub_id(source: str) -> bool:
    """True when ``source`` looks like ``owner/name`` and not like a filesystem path."""
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "~"))


def locate(source: str, path: str | Path = "") -> tuple[str, Path]:
    """Resolve one pool entry to ``(name, local_dir)``.

    Order: a registered name, an adapter an installed extension ships under that name
    (``smartfed.adapters`` entry points, e.g. ``cpu_mini.skill.zh``), an existing local path, then
    a hub id (downloaded only then).

    Raises:
        AdapterFileError: a missing path, an unknown name, or a hub id that cannot be fetched.
    """
    entries = load_registry(path)
    if source in entries:
        entry = entries[source]
        if entry.kind == "hub":
            return entry.name, download_hub_adapter(entry.source)
        return entry.name, Path(entry.source)
    from smartfed.plugins import find_adapter

    shipped = find_adapter(source)  # shipped by an extension, e.g. cpu_mini.skill.zh
    if shipped is not None:
        return shipped.name, shipped
    local = Path(source).expanduser()
    if local.exists() or not is_hub_id(source):
        if not local.exists() and "/" not in source and os.sep not in source:
            raise AdapterFileError(
                f"pool entry {source!r} is not a registered name ({registry_path(path)}), an "
                "existing directory or a hub id; register it with `smartfed pool add NAME SOURCE`"
            )
        return local.name or source, local
    return source.rsplit("/", 1)[-1], download_hub_adapter(source)


def download_hub_adapter(repo_id: str) -> Path:
    """Fetch (or find in the HF cache) the adapter files of hub repo ``repo_id``.

    Raises:
        AdapterFileError: offline, unknown repo, or any download failure.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=_ADAPTER_FILES))
    except Exception as err:  # offline mode, HTTP and cache errors all mean "not available"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterFileError(
            f"cannot fetch hub adapter {repo_id!r} ({type(err).__name__}: {detail}); the hub may "
            "be unreachable: download it elsewhere and pass or register the local directory"
        ) from err


def _update(path: str | Path, name: str, value: dict[str, str] | None) -> None:
    """Set (or, with ``None``, delete) one name in the file, keeping every other key as it was."""
    p = registry_path(path)
    load_registry(path)  # refuses a file that is not a registry
    data = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {"adapters": {}}
    adapters = data["adapters"]
    if value is None:
        adapters.pop(name, None)
    else:
        adapters[name] = {**adapters.get(name, {}), **value}
    atomic_write_json(p, data)
