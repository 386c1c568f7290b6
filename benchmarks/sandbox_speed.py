"""Time scoring HumanEval's canonical solutions: today's sandbox vs the one at a git revision.

Every problem is scored once per variant, the variants interleaved per problem (the order rotates),
so both see the same machine load. Variants:

- ``current``: ``HumanEvalTask.judge`` of the working tree (the sandbox SmartFed uses now).
- ``baseline``: ``run_python(program).ok`` of ``src/smartfed/eval/sandbox.py`` as it was at
  ``--baseline_ref`` (loaded from git), on the same assembled program text.
- ``bare``: ``python -I -S -B -c program`` with a timeout and nothing else (the floor).

The JSON holds per-variant pass counts, total and median seconds per problem, the ratios of totals
and medians to ``baseline``, and a ``meta`` block (date, commit, machine, versions, load average).

Usage (HumanEval from ``humaneval/HumanEval.jsonl`` under ``--data_dir``; docs/data.md)::

    .venv/bin/python benchmarks/sandbox_speed.py --data_dir data \
        --out benchmarks/results/sandbox_speed.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from smartfed.data.tasks import get_task
from smartfed.data.tasks.code import humaneval_program
from smartfed.files import atomic_write_json
from smartfed.meta import run_meta

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_PATH = "src/smartfed/eval/sandbox.py"


def load_baseline(ref: str, workdir: Path) -> ModuleType:
    """Import ``sandbox.py`` as it was at git revision ``ref`` (module ``sandbox_baseline``)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{SANDBOX_PATH}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = workdir / "sandbox_baseline.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("sandbox_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def bare_run(program: str, timeout_s: float) -> bool:
    """Run ``program`` in a plain isolated interpreter; True when it exits 0 in time."""
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-B", "-c", program],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Score every selected problem once per variant (interleaved) and summarise."""
    task = get_task("humaneval")
    examples = task.eval_examples(args.data_dir)[: args.limit or None]
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline_ref, Path(tmp))
        variants: dict[str, Any] = {
            "current": lambda ex, pred, prog: task.judge(pred, ex)[1],
            "baseline": lambda ex, pred, prog: baseline.run_python(prog, timeout_s=10.0).ok,
            "bare": lambda ex, pred, prog: bare_run(prog, 10.0),
        }
        names = [n for n in variants if n in args.variants.split(",")]
        times: dict[str, list[float]] = {n: [] for n in names}
        passed = dict.fromkeys(names, 0)
        for i, ex in enumerate(examples):
            pred = ex.response
            prog = humaneval_program(pred, dict(ex.meta))
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                start = time.perf_counter()
                ok = variants[name](ex, pred, prog)
                times[name].append(time.perf_counter() - start)
                passed[name] += int(bool(ok))
    ref = "baseline" if "baseline" in names else names[0]
    results = {
        n: {
            "passed": passed[n],
            "n": len(examples),
            "total_s": round(sum(times[n]), 3),
            "median_ms": round(1000 * statistics.median(times[n]), 2),
            "ratio_total_vs_" + ref: round(sum(times[n]) / sum(times[ref]), 3),
            "ratio_median_vs_" + ref: round(
                statistics.median(times[n]) / statistics.median(times[ref]), 3
            ),
        }
        for n in names
    }
    return {
        "meta": run_meta(load_average=os.getloadavg()),
        "setup": {
            "task": "humaneval canonical solutions",
            "n": len(examples),
            "baseline_ref": args.baseline_ref,
            "variants": names,
            "interleaved": True,
            "timeout_s": 10.0,
        },
        "results": results,
    }


def main() -> int:
    """Parse flags, measure, write the JSON atomically and print the results block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="folder holding humaneval/ (docs/data.md)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems (0 = all 164)")
    parser.add_argument("--baseline_ref", default="41c5001", help="git revision of the baseline")
    parser.add_argument("--variants", default="current,baseline,bare")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/sandbox_speed.json"))
    args = parser.parse_args()
    result = measure(args)
    atomic_write_json(args.out, result)
    print(json.dumps(result["results"], indent=2))  # noqa: T201 - a script's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
