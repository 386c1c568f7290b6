"""What a per-node worker holds, as one digest: the bundle spec plus the identity of its files.

A worker serves exactly one key. The key is derived, never hand-written: every field of
:class:`~smartfed.fed.cache.BundleSpec` (``dataclasses.asdict``; the spec is the only input of
:func:`~smartfed.fed.cache.get_bundle`, so a field that changes what is loaded is in the key by
construction), the path/size/mtime of the files that spec reads (base model dir, every pool
adapter, the training data), the registry entries of registered pool names, the environment
variables the loaders read (:func:`bundle_digest`), and the installed SmartFed
(:func:`code_identity`). A changed
adapter, model, data file or SmartFed install gives a new key, hence a fresh worker, never a stale
model.

Stdlib only (plus the torch-free config/cache/registry modules): the ClientApp computes the key
for every message without importing torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import smartfed
from smartfed.config import RunConfig
from smartfed.fed.cache import BundleSpec

ENV_KEYS = ("SMARTFED_CACHE", "SMARTFED_DATA", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")
"""Environment variables that change what the loaders read or where the model goes."""


def file_identity(path: Path) -> list[tuple[str, int, int]]:
    """``(absolute path, size, mtime_ns)`` of a file, or of a directory and its direct entries.

    A missing path yields nothing (the loader reports it; the key only has to change when a file
    does).
    """
    try:
        path = path.expanduser().resolve()
        st = path.stat()
    except OSError:
        return []
    out = [(str(path), st.st_size, st.st_mtime_ns)]
    if path.is_dir():
        for child in sorted(path.iterdir()):
            try:
                cst = child.stat()
            except OSError:  # a dangling link or a file removed meanwhile
                continue
            out.append((str(child), cst.st_size, cst.st_mtime_ns))
    return out


def _pool_paths(spec: BundleSpec) -> tuple[list[Path], list[tuple[str, str, str]]]:
    """The local directories of the pool entries, and the registry entries of registered names
    (their name/source/kind; not the registry file, which other entries change)."""
    from smartfed.pool.registry import load_registry

    try:
        entries = load_registry(spec.pool.registry)
    except Exception:  # an unreadable registry fails in the loader; the key needs no more
        entries = {}
    paths, used = [], []
    for source in spec.pool.sources:
        entry = entries.get(source)
        if entry is not None:
            used.append((entry.name, entry.source, entry.kind))
        paths.append(Path(entry.source) if entry and entry.kind == "local" else Path(source))
    return paths, used


def spec_files(spec: BundleSpec) -> list[Any]:
    """Identity of every local file or directory the spec's loaders read (+ registry entries)."""
    pool_paths, registered = _pool_paths(spec)
    paths = [Path(spec.model.model_name_or_path), *pool_paths]
    if spec.data.dataset:
        paths.append(Path(spec.data.dataset))
    data_dir = spec.data.data_dir or os.environ.get("SMARTFED_DATA", "")
    if data_dir:
        paths.append(Path(data_dir))
    return [ident for p in paths for ident in file_identity(p)] + registered


def code_identity() -> str:
    """The installed SmartFed: version + digest of the installation's ``RECORD`` (a reinstall or
    upgrade gives new keys; sources edited in place under an editable install do not)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("smartfed")
        record = dist.read_text("RECORD") or ""
        version = dist.version
    except metadata.PackageNotFoundError:  # running from a source tree
        record, version = "", getattr(smartfed, "__version__", "")
    return f"{version}:{hashlib.sha256(record.encode()).hexdigest()}"


def spec_of(cfg: RunConfig, dataset: str = "") -> BundleSpec:
    """The bundle spec a node serves for ``cfg`` (``dataset``: the node's own data file)."""
    return BundleSpec.from_config(cfg, dataset=dataset)


def bundle_digest(spec: BundleSpec, env: Mapping[str, str] | None = None) -> str:
    """SHA-256 of what the bundle holds: every spec field, the files it reads, the loader env
    (``env``: the worker's environment; default this process's)."""
    env = os.environ if env is None else env
    ident: dict[str, Any] = {
        "spec": dataclasses.asdict(spec),
        "files": spec_files(spec),
        "env": {k: env.get(k, "") for k in ENV_KEYS},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def bundle_key(spec: BundleSpec, env: Mapping[str, str] | None = None) -> str:
    """The worker key of ``spec``: :func:`bundle_digest` + :func:`code_identity`, hashed."""
    return hashlib.sha256(f"{bundle_digest(spec, env)}/{code_identity()}".encode()).hexdigest()
