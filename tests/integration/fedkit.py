"""Shared helpers for the federated integration tests: a tiny dataset and a tiny run config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.config import RunConfig

SKIP_VOLATILE = {
    "wall_s",
    "phases",
    "client_train_s",
    "client_load_s",
    "energy_kwh_clients",
    "energy_kwh_server",
    "bytes_up",
    "bytes_down",
}
"""Metrics that depend on time, the machine or random node ids (message metadata varints)."""


def write_dataset(path: Path, rows: int = 60) -> Path:
    """Alpaca-style JSONL of small sums with a 3-valued ``cat`` label."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            a, b = i % 7, i % 5
            fh.write(
                json.dumps(
                    {
                        "instruction": f"What is {a} plus {b}?",
                        "input": "",
                        "output": f"{a} + {b} = {a + b}. The answer is {a + b}.",
                        "cat": str(i % 3),
                    }
                )
                + "\n"
            )
    return path


def tiny_config(model_dir: Path, pool: list[Path], data: Path, out: Path, **kw: Any) -> RunConfig:
    """A seconds-per-round run over the tiny model and pool."""
    flat: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "dtype": "float32",
        "max_seq_len": 48,
        "lora_pool": ",".join(str(p) for p in pool),
        "dataset": str(data),
        "topk_experts": 4,
        "num_clients": 3,
        "sample_clients": 2,
        "num_rounds": 3,
        "local_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "heldout_examples": 6,
        "output_dir": str(out),
    }
    flat.update(kw)
    return RunConfig.from_flat(flat)


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows without the volatile fields."""
    return [{k: v for k, v in r.items() if k not in SKIP_VOLATILE} for r in rows]
