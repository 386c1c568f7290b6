"""Builders of broken PEFT adapter directories for the bad-input tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def copy_adapter(src: Path, dst: Path) -> Path:
    """Copy an adapter directory."""
    shutil.copytree(src, dst)
    return dst


def edit_config(adapter: Path, **changes: object) -> Path:
    """Set fields of ``adapter_config.json``."""
    cfg = json.loads((adapter / CONFIG).read_text())
    cfg.update(changes)
    (adapter / CONFIG).write_text(json.dumps(cfg))
    return adapter


def edit_tensors(adapter: Path, fn) -> Path:  # type: ignore[no-untyped-def]
    """Rewrite the weights with ``fn(dict) -> dict``."""
    tensors = load_file(str(adapter / WEIGHTS))
    save_file(fn(tensors), str(adapter / WEIGHTS))
    return adapter


def corrupt(adapter: Path) -> Path:
    """Overwrite the weights with bytes that are not a safetensors file."""
    (adapter / WEIGHTS).write_bytes(b"\x89PNG this is not a safetensors file" * 8)
    return adapter


def truncate(adapter: Path) -> Path:
    """Cut the weights file to half its length (an interrupted download)."""
    data = (adapter / WEIGHTS).read_bytes()
    (adapter / WEIGHTS).write_bytes(data[: len(data) // 2])
    return adapter


def poison(adapter: Path, value: float = float("nan")) -> Path:
    """Put one NaN (or Inf) into the first lora_B tensor."""
    def fn(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = sorted(k for k in t if "lora_B" in k)[0]
        t[key] = t[key].clone()
        t[key][0, 0] = value
        return t

    return edit_tensors(adapter, fn)


def retarget(adapter: Path, old: str, new: str) -> Path:
    """Rename module paths in the weights (e.g. ``q_proj`` -> ``qkv_proj``: absent from Llama)."""
    return edit_tensors(adapter, lambda t: {k.replace(old, new): v for k, v in t.items()})
