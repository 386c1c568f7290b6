"""bfloat16 vs float32 on this CPU: one-thread GEMM throughput and one MoRE training step.

The numbers behind ``model.dtype = auto`` (``smartfed.model.dtype``): on a CPU without native
bf16 matrix instructions (``avx512_bf16`` / ``amx_bf16``) PyTorch emulates bf16 matmuls. Measures,
side by side in one process on one thread:

- ``gemm``: GFLOPS of ``(376 x 576) @ (576 x 1536)`` (a SmolLM2-135M MLP matmul at batch 4 x 94
  tokens), median of ``--reps`` products, per dtype;
- ``step``: seconds of one SmartFed local training step (SmolLM2-135M, the shipped cpu-mini code
  LoRA as the pool, K = 8, batch 4 of ``cpu_mini.hard_math`` rows), median of ``--steps`` steps
  after one warm-up step, per dtype.

Writes ``benchmarks/results/dtype_speed.json`` with the CPU flags ``auto`` reads and the dtype it
resolves to here.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dtype_speed.py [--reps 20] [--steps 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from smartfed.config import RunConfig
from smartfed.files import atomic_write_json
from smartfed.meta import run_meta
from smartfed.model.dtype import CPU_BF16_FLAGS, resolve_dtype

OUT = Path(__file__).parent / "results" / "dtype_speed.json"
DTYPES = ("float32", "bfloat16")
M, K, N = 376, 576, 1536


def gemm_gflops(dtype: torch.dtype, reps: int) -> float:
    """Median GFLOPS of ``reps`` products ``(M x K) @ (K x N)`` in ``dtype`` (after one warm-up)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(M, K, generator=gen).to(dtype)
    w = torch.randn(N, K, generator=gen).to(dtype)
    a @ w.T
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ w.T
        times.append(time.perf_counter() - t0)
    return 2 * M * K * N / statistics.median(times) / 1e9


def step_seconds(dtype: str, steps: int) -> dict[str, Any]:
    """Median seconds of one MoRE local training step (batch 4) after one warm-up step."""
    from smartfed.data.formatting import encode_for_training
    from smartfed.methods.assemble import assemble, training_split
    from smartfed.train.local import local_train, round_generator, sample_batches
    from smartfed_bench.packaged import PACKAGED_ROOT, read_manifest

    lora = (
        PACKAGED_ROOT
        / "cpu-mini"
        / read_manifest("cpu-mini")["adapters"]["cpu_mini.skill.code"]["dir"]
    )
    cfg = RunConfig.from_flat(
        {
            "model_name_or_path": "default",
            "dtype": dtype,
            "device": "cpu",
            "task": "cpu_mini.hard_math",
            "lora_pool": str(lora),
            "batch_size": 4,
            "max_seq_len": 128,
            "topk_experts": 8,
            "gradient_checkpointing": False,
            "num_clients": 2,
            "sample_clients": 2,
        }
    )
    built = assemble(cfg)
    data, split = training_split(cfg)
    rows = [
        encode_for_training(built.tokenizer, data.examples[i], 128) for i in split.partitions[0]
    ]
    params = built.method.trainable_parameters(built.model)
    pad = built.tokenizer.pad_token_id
    times = []
    for i in range(steps + 1):
        batch = list(sample_batches(rows, 4, 1, pad, round_generator(0, i, 0)))
        result = local_train(built.model, batch, params, cfg.train)
        if i:  # the first step warms up
            times.append(result.seconds)
    return {
        "median_s": statistics.median(times),
        "steps_s": times,
        "tokens": int(batch[0]["input_ids"].numel()),
    }


def main() -> None:
    """Measure both dtypes and write the result JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20, help="GEMM products per dtype")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per dtype")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(1)
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    gemm = {d: gemm_gflops(getattr(torch, d), args.reps) for d in DTYPES}
    step = {d: step_seconds(d, args.steps) for d in DTYPES}
    result = {
        "name": "dtype_speed",
        "meta": run_meta(
            threads=1, command="OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dtype_speed.py"
        ),
        "cpu_flags": {f: bool(caps.get(f, False)) for f in (*CPU_BF16_FLAGS, "avx2", "avx512_f")},
        "auto_resolves_to": resolve_dtype("auto", "cpu"),
        "gemm_gflops": gemm,
        "gemm_float32_over_bfloat16": gemm["float32"] / gemm["bfloat16"],
        "step": step,
        "step_bfloat16_over_float32": step["bfloat16"]["median_s"] / step["float32"]["median_s"],
    }
    atomic_write_json(args.out, result)
    print(
        {
            k: result[k]
            for k in (
                "auto_resolves_to",
                "gemm_gflops",
                "gemm_float32_over_bfloat16",
                "step_bfloat16_over_float32",
            )
        }
    )


if __name__ == "__main__":
    main()
