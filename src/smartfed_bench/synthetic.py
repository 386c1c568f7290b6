"""Synthetic adapters for controls: random experts with the shapes and norms of real ones.

The benchmark's "random experts" control routes over LoRAs whose every tensor is Gaussian noise
with the same shape and Frobenius norm as a real adapter's (so the mixture has the same magnitude
but none of the knowledge). If SmartFed wins there, its gain is not from reusing LoRAs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from smartfed.errors import AdapterFileError
from smartfed.files import atomic_write, atomic_write_text

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def random_like_adapter(src: str | Path, dest: str | Path, seed: int) -> Path:
    """Write a PEFT adapter dir at ``dest`` shaped like ``src`` with seeded Gaussian weights.

    Every tensor ``t`` becomes ``z * ||t|| / ||z||`` with ``z ~ N(0, I)`` of ``t``'s shape, drawn
    in sorted key order from ``torch.Generator().manual_seed(seed)`` (deterministic). The config is
    copied, so ranks, alpha, rsLoRA and targets are the same. An existing complete ``dest`` made
    with the same seed is reused.

    Raises:
        AdapterFileError: ``src`` is not a PEFT adapter dir with safetensors weights.
    """
    src, dest = Path(src), Path(dest)
    if not (src / WEIGHTS).is_file() or not (src / CONFIG).is_file():
        raise AdapterFileError(f"{src}: not a PEFT adapter dir ({CONFIG} + {WEIGHTS} expected)")
    stamp = dest / "random_like.json"
    record = {"source": str(src), "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == record:
        return dest
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(str(src / WEIGHTS))
    noisy: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        t = tensors[key].float()
        z = torch.randn(t.shape, generator=gen)
        noisy[key] = (
            (z * (t.norm() / z.norm().clamp_min(1e-12))).to(tensors[key].dtype).contiguous()
        )
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / WEIGHTS, lambda p: save_file(noisy, str(p), metadata={"format": "pt"}))
    atomic_write_text(dest / CONFIG, (src / CONFIG).read_text(encoding="utf-8"))
    atomic_write_text(stamp, json.dumps(record))
    return dest
