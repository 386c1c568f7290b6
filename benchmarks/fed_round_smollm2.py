"""Record time per federated round of a finished (or running) `smartfed train` run as a result JSON.

Usage: python benchmarks/fed_round_smollm2.py RUN_DIR --command "smartfed train ..." \
           [--out benchmarks/results/fed_round_smollm2.json] [--note TEXT]
Reads RUN_DIR/metrics.jsonl (one line per complete round) and RUN_DIR/config.json; adds provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from smartfed.files import atomic_write_json
from smartfed.meta import run_meta


def summarize(run_dir: Path) -> dict[str, object]:
    """Per-round timings, bytes and energy of the run's complete rounds."""
    rows = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]
    cfg = json.loads((run_dir / "config.json").read_text())
    rounds = [
        {
            k: r.get(k)
            for k in (
                "round",
                "wall_s",
                "phases",
                "client_train_s",
                "client_load_s",
                "train_loss",
                "eval_loss",
                "bytes_up",
                "bytes_down",
                "payload_up",
                "payload_down",
                "energy_kwh_clients",
                "energy_kwh_server",
            )
        }
        for r in rows
    ]
    steps = cfg["train"]["local_steps"]
    train_s = [t for r in rows for t in r["client_train_s"]]
    return {
        "rounds_complete": len(rows),
        "config": cfg,
        "per_round": rounds,
        "round_wall_s_mean": statistics.fmean(r["wall_s"] for r in rows) if rows else None,
        "client_step_s_mean": statistics.fmean(train_s) / steps if train_s else None,
    }


def main() -> None:
    """Write the result JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--command", required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fed_round_smollm2.json"))
    p.add_argument("--note", default="")
    args = p.parse_args()
    result = {
        "name": "fed_round_smollm2",
        "command": args.command,
        "note": args.note,
        **summarize(args.run_dir),
        "meta": run_meta(),
    }
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
