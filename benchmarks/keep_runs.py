"""Keep a bench's finished runs in the repository, so that a fresh checkout can continue the bench.

Copies the small files of every finished run (``config.json``, ``meta.json``, ``metrics.jsonl``,
``summary.json``; no checkpoints) from a bench output dir into the same layout under ``--into``,
with the cache folder written as ``$SMARTFED_CACHE/`` instead of this machine's path. Continue
elsewhere with ``cp -r <into> runs/bench-v2`` and the bench command: finished runs are reused.

    python benchmarks/keep_runs.py runs/bench-v2 --into benchmarks/results/cpu-mini-v2-runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smartfed.files import atomic_write_text, default_cache_dir

SMALL = ("config.json", "meta.json", "metrics.jsonl", "summary.json")


def finished_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` with a ``summary.json`` (finished runs)."""
    return sorted(
        p.parent for p in root.rglob("summary.json") if (p.parent / "config.json").is_file()
    )


def keep(root: Path, into: Path, cache: Path) -> list[Path]:
    """Copy the small files of each finished run under ``root`` to ``into``; return the runs."""
    runs = finished_runs(root)
    for run in runs:
        target = into / run.relative_to(root)
        target.mkdir(parents=True, exist_ok=True)
        for name in SMALL:
            src = run / name
            if src.is_file():
                text = src.read_text(encoding="utf-8").replace(f"{cache}/", "$SMARTFED_CACHE/")
                atomic_write_text(target / name, text)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the bench's --output_dir")
    parser.add_argument("--into", type=Path, required=True, help="where to keep the runs")
    args = parser.parse_args(argv)
    if not args.output_dir.is_dir():
        print(f"keep_runs: error: {args.output_dir} is not a directory", file=sys.stderr)
        return 2
    runs = keep(args.output_dir, args.into, default_cache_dir().resolve())
    print(f"kept {len(runs)} finished runs in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
