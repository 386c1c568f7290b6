"""Measure the cost of EEQA importance tracking on a SmolLM2-135M training step (target <= 5%).

Setup (issue 3): the embedded SmolLM2-135M in bf16, MoRE on q_proj + v_proj over two random rank-32
LoRAs (PEFT, ``init_lora_weights=False``), topk_experts = 32, batch 8 x 128 tokens, one AdamW
step on the routers. The machine is shared and noisy, so steps with and without the tracker are
interleaved in pairs (alternating which goes first) and the median of the per-pair ratios is
reported together with the median step times.

Usage::

    .venv/bin/python benchmarks/importance_overhead.py --pairs 15 \
        --out benchmarks/results/importance_overhead.json
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

import torch

from smartfed.config import ModelConfig, RouterConfig
from smartfed.files import atomic_write_json
from smartfed.meta import run_meta
from smartfed.model.base import load_base_model, local_model_dir
from smartfed.model.inject import inject_more
from smartfed.pool.pool import resolve_pool
from smartfed.quota.importance import ImportanceTracker

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace, workdir: Path) -> tuple[Any, torch.Tensor, Any]:
    """Return ``(model with MoRE, batch of token ids (batch, seq), injection report)``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from factories import make_peft_adapter  # random nonzero LoRAs, PEFT init_lora_weights=False

    cfg = ModelConfig(dtype="bfloat16")  # the recorded setup (the default is now auto)
    model_dir = Path(local_model_dir(cfg).location)
    adapters = [
        make_peft_adapter(
            model_dir,
            workdir / f"lora{i}",
            r=args.rank,
            alpha=2.0 * args.rank,
            seed=100 + i,
            targets=("q_proj", "v_proj"),
        )
        for i in range(args.adapters)
    ]
    model, tok = load_base_model(cfg)
    pool = resolve_pool([str(a) for a in adapters])
    report = inject_more(model, pool, RouterConfig(topk_experts=args.topk), seed=0)
    model.train()
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, len(tok), (args.batch, args.seq), generator=gen)
    return model, batch, report


def timed_step(model: Any, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    """One router training step (forward, backward, AdamW); return seconds."""
    start = time.perf_counter()
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the interleaved pairs and return the result record."""
    with tempfile.TemporaryDirectory() as tmp:
        model, batch, report = build(args, Path(tmp))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    tracker = ImportanceTracker(model, single_thread=args.single_thread)
    for _ in range(args.warmup):
        timed_step(model, opt, batch)
        with tracker:
            timed_step(model, opt, batch)
    plain, tracked, ratios = [], [], []
    for i in range(args.pairs):
        first_plain = i % 2 == 0
        for with_tracker in (False, True) if first_plain else (True, False):
            if with_tracker:
                with tracker:
                    tracked.append(timed_step(model, opt, batch))
            else:
                plain.append(timed_step(model, opt, batch))
        ratios.append(tracked[-1] / plain[-1])
    scores = tracker.scores()
    ratio = statistics.median(ratios)
    observer_per_step = tracker.observer_seconds / (args.warmup + args.pairs)
    return {
        "meta": run_meta(torch_threads=torch.get_num_threads()),
        "setup": {
            "model": "SmolLM2-135M-Instruct (embedded GGUF -> safetensors)",
            "dtype": "bfloat16",
            "batch": args.batch,
            "seq": args.seq,
            "targets": ["q_proj", "v_proj"],
            "adapters": args.adapters,
            "rank": args.rank,
            "topk_experts": args.topk,
            "routed_matrices": len(scores),
            "router_params": sum(p.numel() for p in params),
            "step": "forward + backward + AdamW on routers",
            "warmup_pairs": args.warmup,
            "pairs": args.pairs,
            "tracker_single_thread": args.single_thread,
            "injection": str(type(report).__name__),
        },
        "results": {
            "median_step_s_without": statistics.median(plain),
            "median_step_s_with": statistics.median(tracked),
            "median_ratio": ratio,
            "overhead_pct": 100 * (ratio - 1),
            "target_pct": 5.0,
            "within_target": ratio <= 1.05,
            "ratios": ratios,
            "steps_s_without": plain,
            "steps_s_with": tracked,
            "tracked_tokens_per_matrix": next(iter(tracker.tokens().values())),
            "observer_s_per_tracked_step": observer_per_step,
            "observer_pct_of_median_step": 100 * observer_per_step / statistics.median(plain),
        },
    }


def main() -> int:
    """Parse flags, measure, write the JSON atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=2)
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--single-thread", action="store_true", help="tracker single_thread=True")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/importance_overhead.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    result = measure(args)
    atomic_write_json(args.out, result)
    print(
        json.dumps(
            result["results"] | {"ratios": None, "steps_s_without": None, "steps_s_with": None},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
