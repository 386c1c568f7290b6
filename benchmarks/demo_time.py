"""Wall time of ``make demo``, cold then warm, written to ``benchmarks/results/demo_time.json``.

Cold = an empty cache (``SMARTFED_CACHE`` pointed at a fresh folder: the embedded model is
converted again, the skill LoRAs come from the package) and no ``runs/demo``; the venv is already
installed (``make install`` is not timed). Warm = ``make demo`` again right after: every run is
reused. The machine's load average is recorded before and after each phase, since on a shared
machine it moves the cold time by several x.

    .venv/bin/python benchmarks/demo_time.py                 # cold + warm
    .venv/bin/python benchmarks/demo_time.py --phases warm   # only the warm rerun
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from smartfed.files import atomic_write_json
from smartfed.meta import run_meta

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "demo_time.json"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def time_make_demo(env: dict[str, str], log: Path) -> dict[str, object]:
    """Run ``make demo`` once; return seconds, exit code and the load averages around it."""
    before = _load()
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(
            ["make", "demo"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False
        )
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "exit_code": proc.returncode,
        "loadavg_1_5_15_before": before,
        "loadavg_1_5_15_after": _load(),
    }


def main() -> int:
    """Time the phases asked for and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="cold,warm", help="comma list of cold, warm")
    parser.add_argument("--out", default=str(OUT), help="result JSON")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    cache = Path(tempfile.mkdtemp(prefix="smartfed-demo-cache-"))
    env = {**os.environ, "SMARTFED_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result: dict[str, object] = {"command": "make demo", "cache": "fresh folder (SMARTFED_CACHE)"}
    try:
        for phase in phases:
            if phase == "cold":
                shutil.rmtree(ROOT / "runs" / "demo", ignore_errors=True)
            log = Path(tempfile.gettempdir()) / f"smartfed-demo-{phase}.log"
            result[phase] = time_make_demo(env, log)
            print(phase, result[phase], flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result["meta"] = run_meta(engine="simulation")
    atomic_write_json(Path(args.out), result)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
