"""Bytes per round of every router-size / wire candidate: counted on the tiny model, computed for
SmolLM2.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wire_bytes.py \
        --out benchmarks/results/wire_bytes.json

1. Tiny model (the test suite's tiny Llama and heterogeneous pool, tests/conftest.py): every
   candidate of ``smartfed.fed.candidates.CANDIDATE_SETTINGS`` whose ``h``/``r`` is below the
   tiny d_in (64), plus ``proj16`` and ``lowrank4``; ``--rounds`` rounds, 2 of 3 clients sampled,
   in-process delivery (tests/integration/directgrid.py) through the real driver, strategy, wire
   and ClientApp. Counted: ``payload_*`` (records) and ``bytes_*`` (whole messages) per round from
   metrics.jsonl, next to the formula's router value bytes for the same shapes.
2. SmolLM2-135M with the paper-default pool (two r=32 LoRAs on q_proj/v_proj, 30 layers: 60
   matrices, M = 64, d_in = 576), 2 of 20 clients sampled, 20 rounds: the formula only (router
   value bytes; Flower adds ~210 B per tensor per message).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

SMOLLM2_SHAPES = {f"layers.{i}.{p}": (64, 576) for i in range(30) for p in ("q_proj", "v_proj")}
TINY_EXTRA = {"proj16": {"router_proj_dim": 16}, "lowrank4": {"router_rank": 4}}


def tiny_pool(root: Path) -> tuple[Path, list[Path]]:
    """The tiny Llama and the three adapters of tests/conftest.py's ``tiny_pool``."""
    from factories import make_peft_adapter, make_tiny_llama

    make_tiny_llama(root / "tiny")
    model = root / "tiny"
    kw: list[dict[str, Any]] = [
        {"r": 4, "alpha": 8, "seed": 1},
        {
            "r": 8,
            "alpha": 16,
            "use_rslora": True,
            "seed": 2,
            "targets": ("q_proj", "k_proj", "v_proj", "o_proj"),
        },
        {
            "r": 2,
            "alpha": 4,
            "seed": 3,
            "targets": ("gate_proj", "up_proj", "down_proj", "v_proj"),
            "rank_pattern": {"down_proj": 3},
        },
    ]
    names = ("a_qv", "b_attn", "c_mlp")
    return model, [make_peft_adapter(model, root / n, **k) for n, k in zip(names, kw, strict=True)]


def run_tiny(name: str, setting: dict[str, Any], root: Path, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of one setting on the tiny model; per-round bytes from metrics.jsonl."""
    from directgrid import DirectGrid
    from fedkit import tiny_config, write_dataset

    from smartfed.fed.client_app import make_client_app
    from smartfed.fed.driver import run_server
    from smartfed.io.rundir import RunDir
    from smartfed.meta import run_meta

    model, pool = root / "tiny", [root / n for n in ("a_qv", "b_attn", "c_mlp")]
    data = root / "data.jsonl"
    if not data.exists():
        write_dataset(data)
    kw = {"num_rounds": rounds, "track_energy": False, "eval_every": 0, "heldout_examples": 0}
    cfg = tiny_config(model, pool, data, root / name, **kw, **setting)
    RunDir.open(cfg, run_meta(engine="direct"))
    t0 = time.perf_counter()
    run_server(DirectGrid(make_client_app(cfg), cfg.fed.num_clients), cfg)
    rows = RunDir(cfg.output_dir).metrics()
    keys = ("payload_up", "payload_down", "bytes_up", "bytes_down")
    out: dict[str, Any] = {k: [r[k] for r in rows] for k in keys}
    out["rejected"] = sum(len(r["rejected"]) for r in rows)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def formula(shapes: dict[str, tuple[int, int]], setting: dict[str, Any], n: int, r: int) -> Any:
    """The formula's per-round router value bytes (2 sampled clients)."""
    from smartfed.fed.candidates import round_bytes

    b = round_bytes(shapes, setting, 2, n, r)
    return {
        "params": b.params,
        "up": b.up,
        "down_full": b.down_full,
        "down_held": b.down_held,
        "down_mean": round(b.down_mean),
        "total_mean": round(b.total_mean),
    }


def main() -> None:
    """Run the tiny candidates, compute the SmolLM2 table, write JSON, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="wire_bytes.json")
    args = parser.parse_args()
    from flwr.supercore.task_identity import TaskIdentity

    from smartfed.fed.candidates import CANDIDATE_SETTINGS
    from smartfed.meta import run_meta
    from smartfed.pool.pool import resolve_pool

    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0  # in-process run
    root = Path(tempfile.mkdtemp(prefix="wire-bytes-"))
    _, adapters = tiny_pool(root)
    pool = resolve_pool([str(p) for p in adapters])
    shapes = {m: (k, pool.modules_for(m)[0][1].d_in) for m, k in pool.experts_per_matrix().items()}
    tiny: dict[str, Any] = {}
    for name, setting in {**CANDIDATE_SETTINGS, **TINY_EXTRA}.items():
        width = max(int(setting.get("router_proj_dim", 0)), int(setting.get("router_rank", 0)))
        if width >= min(d for _, d in shapes.values()):
            continue
        tiny[name] = {"setting": setting, **run_tiny(name, setting, root, args.rounds)}
        tiny[name]["formula"] = formula(shapes, setting, 3, args.rounds)
        print(name, tiny[name], flush=True)
    smol = {
        name: {"setting": s, **formula(SMOLLM2_SHAPES, s, 20, 20)}
        for name, s in CANDIDATE_SETTINGS.items()
    }
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wire_bytes.py " + " ".join(sys.argv[1:])
    result = {
        "meta": run_meta(command=cmd),
        "tiny": {"rounds": args.rounds, "clients": "2 of 3", "settings": tiny},
        "smollm2": {
            "pool": "2 x r=32 on q_proj/v_proj, 60 matrices, M=64, d_in=576",
            "clients": "2 of 20",
            "rounds": 20,
            "settings": smol,
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ref = smol["full_fp32"]["total_mean"]
    print("| setting | params | up MB | down MB (mean) | MB/round | vs full fp32 |")
    for name, row in smol.items():
        print(
            f"| `{name}` | {row['params']:,} | {row['up'] / 1e6:.3f} | "
            f"{row['down_mean'] / 1e6:.3f} | {row['total_mean'] / 1e6:.3f} | "
            f"{ref / row['total_mean']:.1f}x |"
        )
    print("| tiny setting | payload up (median/round) | payload down (median/round) |")
    for name, row in tiny.items():
        print(
            f"| `{name}` | {statistics.median(row['payload_up']):,.0f} | "
            f"{statistics.median(row['payload_down']):,.0f} |"
        )


if __name__ == "__main__":
    main()
