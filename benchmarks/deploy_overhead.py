"""Per-round overhead of the Deployment Runtime: `smartfed deploy-local` vs simulation, same job.

Runs the same short job twice on this machine, one after the other in one invocation:
``smartfed train`` (simulation, Ray actors keep the model) and ``smartfed deploy-local
--num_supernodes 2`` (SuperLink + 2 SuperNodes; each node's worker keeps the model, the
per-message ``flwr-clientapp`` process only forwards). Reads each run's ``metrics.jsonl`` and
writes per-round wall time, ``client_load_s`` and ``client_train_s``, the medians over the steady
rounds (2 .. N-1: round 1 loads, the last round adds the final evaluation) and the overhead
``median(deploy) - median(simulation)`` next to the 2 s target, with the load average around each
run (other work on the machine inflates both). Per engine it also gives the median server
evaluation (the same code in both engines) and the median time of the clients phase beyond the
slowest client's training (transport, process start, polling). The headline numbers of the file
being replaced are kept under ``previous``.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deploy_overhead.py --lora DIR [--rounds 6]
        [--local_steps 2] [--batch_size 4] [--repeats 1] [--out OUT.json] [--note TEXT]

``--lora``: a PEFT LoRA directory for the default base model (SmolLM2-135M), e.g. a cpu-mini
skill LoRA from ``smartfed pool train``; it is copied to a temporary folder named ``skill_lora``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from smartfed.files import atomic_write_json
from smartfed.meta import run_meta

OUT = Path(__file__).parent / "results" / "deploy_overhead.json"
TARGET_S = 2.0
JOB = [
    "--model_name_or_path", "default", "--dtype", "float32", "--device", "cpu",
    "--task", "cpu_mini.hard_math",
    "--num_clients", "2", "--sample_clients", "2",
    "--max_seq_len", "128", "--topk_experts", "8", "--heldout_examples", "16",
    "--eval_every", "0", "--eval_limit", "4", "--max_new_tokens", "16",
    "--no-track_energy", "--client_cpus", "1", "--seed", "0",
]  # fmt: skip
"""The job of both engines: SmolLM2-135M, one LoRA, 2 clients (both sampled). float32: on a CPU
without native bfloat16 instructions a bfloat16 step is 16x slower (dtype_speed.py), and the overhead is what
is measured here, not the arithmetic."""


def _smartfed() -> str:
    return str(Path(sys.executable).parent / "smartfed")


def run_engine(engine: str, lora: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run the job on ``engine`` (``simulation`` / ``deploy-local``) and summarize its rounds."""
    sub = ["deploy-local", "--num_supernodes", "2"] if engine == "deploy-local" else ["train"]
    argv = [_smartfed(), "-q", *sub, *JOB, "--lora_pool", str(lora)]
    argv += ["--num_rounds", str(args.rounds), "--output_dir", str(out)]
    argv += ["--local_steps", str(args.local_steps), "--batch_size", str(args.batch_size)]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steady = rows[1:-1] if len(rows) > 2 else rows[1:]
    return {
        "engine": engine,
        "command": " ".join(["smartfed", *argv[1:]])
        .replace(str(lora), "<skill_lora>")
        .replace(str(out), f"<tmp>/{out.name}"),
        "process_wall_s": round(total, 2),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": [
            {k: r.get(k) for k in ("round", "wall_s", "client_load_s", "client_train_s", "phases")}
            for r in rows
        ],
        "steady_rounds": [r["round"] for r in steady],
        "median_round_wall_s": statistics.median(r["wall_s"] for r in steady),
        "median_client_load_s_after_round1": statistics.median(
            s for r in rows[1:] for s in r["client_load_s"]
        ),
        "max_client_load_s_after_round1": max(s for r in rows[1:] for s in r["client_load_s"]),
        "median_client_train_s": statistics.median(s for r in steady for s in r["client_train_s"]),
        "median_eval_s": statistics.median(r["phases"]["eval_s"] for r in steady),
        "median_clients_phase_beyond_training_s": statistics.median(
            r["phases"]["clients_s"] - max(r["client_train_s"]) for r in steady
        ),
    }


def _headline(path: Path) -> dict[str, Any] | None:
    """The medians, overhead, load and date of the result ``path`` holds now (kept as
    ``previous`` in the new result, for comparison), or ``None``."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keep = ("median_round_wall_s", "overhead_s", "target_met", "note")
    head = {k: old[k] for k in keep if k in old}
    head["date"] = old.get("meta", {}).get("date")
    head["git_commit"] = old.get("meta", {}).get("git_commit")
    head["loadavg"] = [r.get("loadavg_before") for r in old.get("runs", [])]
    return head


def main() -> None:
    """Run both engines (``--repeats`` times, alternating) and write the result JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lora", type=Path, required=True, help="a PEFT LoRA dir for SmolLM2-135M")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local_steps", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="simulation/deploy pairs, alternating")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--note", default="", help="kept in the JSON (what the machine was doing)")
    args = p.parse_args()
    previous = _headline(args.out)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deploy-overhead-") as tmp:
        lora = Path(tmp) / "skill_lora"
        shutil.copytree(args.lora, lora)
        for i in range(args.repeats):
            for engine in ("simulation", "deploy-local"):
                runs.append(run_engine(engine, lora, args, Path(tmp) / f"{engine}-{i}"))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "rounds"}), flush=True)
    sim = [r["median_round_wall_s"] for r in runs if r["engine"] == "simulation"]
    dep = [r["median_round_wall_s"] for r in runs if r["engine"] == "deploy-local"]
    overhead = statistics.median(dep) - statistics.median(sim)
    result = {
        "name": "deploy_overhead",
        "target_overhead_s": TARGET_S,
        "median_round_wall_s": {
            "simulation": statistics.median(sim),
            "deploy-local": statistics.median(dep),
        },
        "overhead_s": round(overhead, 3),
        "ratio_deploy_over_simulation": round(statistics.median(dep) / statistics.median(sim), 3),
        "target_met": overhead <= TARGET_S,
        "runs": runs,
        "previous": previous,
        "note": args.note,
        "meta": run_meta(
            command=" ".join([".venv/bin/python", "benchmarks/deploy_overhead.py", *sys.argv[1:]]),
            omp_num_threads=os.environ.get("OMP_NUM_THREADS", ""),
        ),
    }
    for path, name in ((args.lora, "<skill_lora>"), (args.out, f"<out>/{args.out.name}")):
        result["meta"]["command"] = result["meta"]["command"].replace(str(path), name)
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("median_round_wall_s", "overhead_s", "target_met")}))


if __name__ == "__main__":
    main()
