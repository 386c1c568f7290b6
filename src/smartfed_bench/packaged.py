"""Skill LoRAs shipped inside the package (``smartfed_bench/packaged_pools/<suite>/``).

The quickstart (``smartfed demo``) routes over small cpu-mini skill LoRAs that take ~15 minutes to
train on 2 CPU cores; the ones it needs ship as package data so a first run skips that. Each
adapter folder is named like its cache folder (``<skill>-<recipe hash>``) and is recorded in
``manifest.json`` with its recipe, recipe hash, the sha256 of ``adapter_model.safetensors`` and the
command that rebuilds it. An adapter is used only when its recorded recipe hash is one the caller
accepts and the file's sha256 matches the manifest; otherwise the caller trains it as before.
The caller accepts the hashes of its recipe on its base model in *every* dtype: a LoRA trained on
a bfloat16 base applies to the same model in float32 (PEFT loads adapters across dtypes all the
time), so the shipped bfloat16 LoRAs also serve ``model.dtype auto`` when it resolves to float32.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from smartfed.files import atomic_write_json
from smartfed.log import get_logger
from smartfed.pool.adapter import file_sha256

log = get_logger(__name__)

PACKAGED_ROOT = Path(__file__).resolve().parent / "packaged_pools"
MANIFEST = "manifest.json"
WEIGHTS = "adapter_model.safetensors"
SHIPPED_FILES = ("adapter_config.json", WEIGHTS, "training_record.json")


def read_manifest(suite: str, root: Path = PACKAGED_ROOT) -> dict[str, Any]:
    """The suite's manifest (``{"adapters": {skill: entry}}``), empty when nothing is shipped."""
    path = root / suite / MANIFEST
    if not path.is_file():
        return {"adapters": {}}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def packaged_adapter(
    suite: str, skill: str, recipe_hashes: Collection[str], root: Path = PACKAGED_ROOT
) -> Path | None:
    """The shipped adapter dir of ``skill`` when its recorded recipe hash is in
    ``recipe_hashes`` and its sha256 matches, else None.

    Args:
        suite: the packaged suite (``cpu-mini``).
        skill: the skill task name (``cpu_mini.skill.zh``).
        recipe_hashes: the accepted recipe hashes: pass those of the recipe on the same base
            model in every dtype (:func:`smartfed_bench.pools.recipe_hashes_any_dtype`), so the
            shipped LoRA is used whatever dtype the base model is loaded in.
        root: the packaged pools folder.
    """
    entry = read_manifest(suite, root)["adapters"].get(skill)
    if not entry:
        return None
    path = root / suite / entry["dir"]
    if entry.get("recipe_hash") not in recipe_hashes:
        log.info("packaged %s was built from another recipe (%s): not used", skill, entry["dir"])
        return None
    weights = path / WEIGHTS
    if not weights.is_file() or file_sha256(weights) != entry.get("sha256"):
        log.warning("packaged %s: %s is missing or its sha256 differs: not used", skill, weights)
        return None
    return path


def packaged_by_name(name: str, root: Path = PACKAGED_ROOT) -> Path | None:
    """The shipped adapter dir whose skill is ``name`` (e.g. ``cpu_mini.skill.zh``), sha256-checked;
    None when no suite ships it."""
    if not root.is_dir():
        return None
    for suite_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        entry = read_manifest(suite_dir.name, root)["adapters"].get(name)
        if entry:
            path = suite_dir / entry["dir"]
            weights = path / WEIGHTS
            if weights.is_file() and file_sha256(weights) == entry.get("sha256"):
                return path
            log.warning("packaged %s: %s is missing or its sha256 differs", name, weights)
    return None


def _drop_machine_paths(dest: Path) -> None:
    """Shipped JSON keeps only the last component of local paths (no build machine's folders)."""
    for name in ("adapter_config.json", "training_record.json"):
        path = dest / name
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, value in list(data.items()):
            if isinstance(value, str) and value.startswith(("/", "~")) and len(value) > 1:
                data[key] = Path(value).name
        atomic_write_json(path, data)


def package_adapter(
    suite: str,
    skill: str,
    adapter_dir: Path,
    recipe: Mapping[str, Any],
    recipe_hash: str,
    provenance: Mapping[str, Any],
    root: Path = PACKAGED_ROOT,
) -> Path:
    """Copy a built adapter into the package and record it in the manifest; return its new dir."""
    dest = root / suite / adapter_dir.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in SHIPPED_FILES:
        shutil.copy(adapter_dir / name, dest / name)
    _drop_machine_paths(dest)
    manifest = read_manifest(suite, root)
    old = manifest["adapters"].get(skill)
    if old and old["dir"] != dest.name and (root / suite / old["dir"]).is_dir():
        shutil.rmtree(root / suite / old["dir"])
    manifest["adapters"][skill] = {
        "dir": dest.name,
        "recipe": dict(recipe),
        "recipe_hash": recipe_hash,
        "sha256": file_sha256(dest / WEIGHTS),
        "bytes": (dest / WEIGHTS).stat().st_size,
        **provenance,
    }
    atomic_write_json(root / suite / MANIFEST, manifest)
    return dest
