"""Local training step time of ``mole`` (gates on the LoRAs' outputs) vs ``smartfed_no_eeqa``.

Usage: .venv/bin/python benchmarks/mole_cost.py --out benchmarks/results/mole_cost.json
(SmolLM2-135M bf16, pool = two random PEFT LoRAs r=``--rank`` on q_proj/v_proj, random token
batches; both methods timed in the same process, alternating, one optimizer step per timing; the
JSON holds every step time, the medians and their ratio, plus machine, versions and date).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]

METHODS = ("smartfed_no_eeqa", "mole")


def main() -> None:
    """Time ``--steps`` local steps per method and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="mole_cost.json")
    args = parser.parse_args()
    import torch
    from method_bytes import make_pool

    from smartfed.config import ModelConfig, RunConfig, TrainConfig
    from smartfed.meta import run_meta
    from smartfed.methods import get_method
    from smartfed.model.base import load_base_model
    from smartfed.pool.pool import resolve_pool
    from smartfed.train.local import local_train

    torch.set_num_threads(1)
    pool_dirs = make_pool("default", Path(tempfile.mkdtemp(prefix="mole-cost-")), args.rank)
    pool = resolve_pool([str(p) for p in pool_dirs])
    cfg = RunConfig.from_flat({"topk_experts": 2 * args.rank, "seed": 0})
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49000, (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    runs = {}
    for name in METHODS:
        model, _ = load_base_model(ModelConfig(dtype="bfloat16", device="cpu"))
        method = get_method(name)
        method.prepare(model, pool, cfg)
        params = method.trainable_parameters(model)
        aux = getattr(method, "auxiliary_loss", None)
        runs[name] = (model, params, None if aux is None else (lambda b, m=model, f=aux: f(m, b)))
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for step in range(args.steps + 1):  # step 0 warms up
        for name, (model, params, aux) in runs.items():
            t0 = time.perf_counter()
            local_train(model, [batch], params, TrainConfig(learning_rate=1e-3), aux_loss=aux)
            if step:
                times[name].append(time.perf_counter() - t0)
        print(step, {k: round(v[-1], 3) for k, v in times.items() if v}, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "meta": run_meta(engine="local"),
        "command": "benchmarks/mole_cost.py " + " ".join(sys.argv[1:]),
        "setup": vars(args) | {"model": "SmolLM2-135M bf16", "targets": "q_proj,v_proj"},
        "step_s": times,
        "median_step_s": med,
        "ratio_mole_vs_smartfed_no_eeqa": med["mole"] / med["smartfed_no_eeqa"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_step_s": med, "ratio": result["ratio_mole_vs_smartfed_no_eeqa"]}))


if __name__ == "__main__":
    main()
