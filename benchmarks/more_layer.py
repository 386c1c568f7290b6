"""Benchmark the MoRE layer's cost against the frozen base and a PEFT LoRA (issue 2, item 7).

On the embedded SmolLM2-135M-Instruct (bf16, CPU), batch 8 x seq 128 random tokens (seeded), targets
q_proj + v_proj, it measures the median time of one training step (forward + backward + AdamW
step) of:

* ``base``: the frozen model with ONE trainable scalar that multiplies the embedding output, so
  autograd runs backward through all 30 layers (activation gradients only, no weight gradients)
  and AdamW updates that scalar. This is the floor for any adapter method with trainable parts in
  layer 0.
* ``peft_r32``: PEFT LoRA r=32, alpha=64, dropout 0 on q_proj+v_proj (FedIT's client), PEFT defaults
  (``autocast_adapter_dtype=True``: the adapter weights are float32 on a bf16 base).
* ``peft_r32_bf16``: the same LoRA with bf16 adapter weights (``autocast_adapter_dtype=False``),
  shown for reference.
* ``more_k32`` / ``more_k64``: MoRE over two r=32 LoRAs (M=64 rank-one experts per matrix), only the
  routers trainable, K=32 and K=64, with the default RouterConfig otherwise.

Every variant lives in its own worker process (so its peak RSS, ``ru_maxrss``, is its own), and the
parent interleaves the steps (one step of each variant per round, rotating the order) so all
variants see the same machine load. Only one worker computes at a time. Generation: greedy, KV
cache, 8 chat prompts x 64 new tokens (``min_new_tokens`` = ``max_new_tokens``), base vs
``more_k32``, interleaved.

Run: ``.venv/bin/python benchmarks/more_layer.py`` (about 5 minutes on 2 idle cores).
Profile one variant instead: ``.venv/bin/python benchmarks/more_layer.py --profile more_k32``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from smartfed.config import ModelConfig, RouterConfig
from smartfed.files import atomic_write_json, atomic_write_text
from smartfed.log import configure_logging, get_logger
from smartfed.meta import run_meta

log = get_logger("smartfed.bench.more_layer")

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("q_proj", "v_proj")
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"kind": "base"},
    "peft_r32": {"kind": "peft", "autocast_adapter_dtype": True},
    "peft_r32_bf16": {"kind": "peft", "autocast_adapter_dtype": False},
    "more_k32": {"kind": "more", "k": 32},
    "more_k64": {"kind": "more", "k": 64},
}
GEN_VARIANTS = ("base", "more_k32")
PROMPTS = (
    "What is 47 plus 38?",
    "Write a short poem about the sea.",
    "Explain what a LoRA adapter is in one paragraph.",
    "Give three tips for learning French.",
    "def fibonacci(n):",
    "List the planets of the solar system.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish and German.",
)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size of this process, in MiB (from ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Sample the current RSS every ``interval_s`` in a thread; ``max_mb`` is the highest seen.

    ``ru_maxrss`` is a whole-life high-water mark, dominated by model loading; the sampler shows
    what the training steps themselves hold.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.max_mb = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.max_mb = max(self.max_mb, current_rss_mb())

    def stop(self) -> float:
        """Stop sampling; return the highest RSS seen, in MiB."""
        self._stop.set()
        self._thread.join()
        return self.max_mb


def make_source_adapters(model_dir: str, out_root: Path, rank: int, seed: int) -> list[str]:
    """Save two PEFT LoRAs (rank ``rank``, alpha 2*rank, q/v, random nonzero A and B)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.factories import make_peft_adapter

    dirs = []
    for i in range(2):
        out = out_root / f"lora{i}"
        make_peft_adapter(
            Path(model_dir), out, r=rank, alpha=2.0 * rank, targets=TARGETS, seed=seed + i
        )
        dirs.append(str(out))
    return dirs


def _attach_embedding_scalar(model: Any) -> list[torch.nn.Parameter]:
    """Variant ``base``: a trainable scalar times the embedding output (backward crosses all).

    Returns:
        The one trainable parameter.
    """
    scale = torch.nn.Parameter(torch.ones((), dtype=torch.float32))
    model.bench_scale = scale  # registers it as a module parameter

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output * scale.to(output.dtype)

    model.get_input_embeddings().register_forward_hook(hook)
    return [scale]


def _wrap_peft(model: Any, rank: int, autocast_adapter_dtype: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg, autocast_adapter_dtype=autocast_adapter_dtype)


def _inject_more(model: Any, adapter_dirs: list[str], k: int, seed: int) -> dict[str, Any]:
    from smartfed.model.inject import inject_more
    from smartfed.pool.pool import resolve_pool

    pool = resolve_pool(adapter_dirs)
    report = inject_more(model, pool, RouterConfig(topk_experts=k), seed)
    return {
        "router_params": report.router_params,
        "router_bytes_fp32": report.router_bytes_fp32,
        "experts_per_matrix": sorted(set(report.experts_per_matrix.values())),
        "output_scales": sorted(set(report.output_scales.values())),
        "matrices": len(report.replaced),
    }


def build_variant(spec: dict[str, Any], adapter_dirs: list[str], rank: int, seed: int) -> tuple:
    """Load the bf16 base and turn it into one benchmark variant.

    Returns:
        ``(model, tokenizer, trainable_params, info)``.
    """
    from smartfed.model.base import load_base_model

    torch.manual_seed(seed)
    model, tok = load_base_model(ModelConfig(dtype="bfloat16"))
    info: dict[str, Any] = {}
    if spec["kind"] == "base":
        params = _attach_embedding_scalar(model)
    elif spec["kind"] == "peft":
        model = _wrap_peft(model, rank, spec["autocast_adapter_dtype"])
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        info = _inject_more(model, adapter_dirs, spec["k"], seed)
        params = [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    info["trainable_dtypes"] = sorted({str(p.dtype) for p in params})
    return model, tok, params, info


def train_step(model: Any, opt: torch.optim.Optimizer, batch: torch.Tensor) -> tuple[float, float]:
    """One fwd + bwd + AdamW step on ``batch`` (B, T), LM loss on all tokens.

    Returns:
        ``(wall seconds, process CPU seconds)``; CPU time (all threads) is far less sensitive to
        other people's load on a shared machine than wall time.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def generate_once(model: Any, tok: Any, new_tokens: int) -> tuple[float, int, float]:
    """Greedy KV-cached generation of exactly ``new_tokens`` per prompt.

    Returns:
        ``(wall seconds, generated tokens, process CPU seconds)``.
    """
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
            pad_token_id=tok.pad_token_id,
        )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, int((out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]), cpu


def worker(conn: Any, spec: dict[str, Any], adapter_dirs: list[str], cfg: dict[str, Any]) -> None:
    """Build one variant, then serve ``step`` / ``gen`` / ``rss`` / ``quit`` requests."""
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    model, tok, params, info = build_variant(spec, adapter_dirs, cfg["rank"], cfg["seed"])
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(cfg["seed"])
    batch = torch.randint(0, model.config.vocab_size, (cfg["batch"], cfg["seq"]), generator=gen)
    info["peak_rss_after_build_mb"] = peak_rss_mb()
    info["rss_after_build_mb"] = current_rss_mb()
    conn.send(info)
    sampler = RssSampler()
    while True:
        cmd = conn.recv()
        if cmd == "step":
            conn.send(train_step(model, opt, batch))
        elif cmd == "gen":
            conn.send(generate_once(model, tok, cfg["gen_tokens"]))
        elif cmd == "rss":  # highest RSS sampled since the previous "rss" (one phase)
            conn.send({"peak_rss_mb": peak_rss_mb(), "rss_max_in_phase_mb": sampler.stop()})
            sampler = RssSampler()
        else:
            conn.send(None)
            return


class Worker:
    """A spawned worker process for one variant and its pipe."""

    def __init__(self, ctx: Any, name: str, adapter_dirs: list[str], cfg: dict[str, Any]) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=worker,
            args=(child, VARIANTS[name], adapter_dirs, cfg),
            name=f"bench-{name}",
            daemon=True,
        )
        self.proc.start()
        self.info: dict[str, Any] = self.conn.recv()

    def ask(self, cmd: str) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def close(self) -> None:
        self.ask("quit")
        self.proc.join(timeout=60)


def interleave(workers: list[Worker], cmd: str, rounds: int) -> dict[str, list[Any]]:
    """Send ``cmd`` to every worker once per round, rotating the order (ABC, BCA, CAB, ...)."""
    out: dict[str, list[Any]] = {w.name: [] for w in workers}
    for r in range(rounds):
        for i in range(len(workers)):
            w = workers[(i + r) % len(workers)]
            out[w.name].append(w.ask(cmd))
        last = {k: round(v[-1][0], 2) for k, v in out.items()}
        log.info("%s round %d/%d (wall s): %s load %s", cmd, r + 1, rounds, last, os.getloadavg())
    return out


def _ratios(values: dict[str, float]) -> dict[str, float]:
    """``more_* / reference`` for every MoRE variant and every non-MoRE reference, + PEFT / base."""
    out = {
        f"{m}_over_{ref}": values[m] / values[ref]
        for m in values
        if m.startswith("more")
        for ref in values
        if not ref.startswith("more")
    }
    if "peft_r32" in values and "base" in values:
        out["peft_r32_over_base"] = values["peft_r32"] / values["base"]
    return out


def _paired_ratios(series: dict[str, list[float]]) -> dict[str, float]:
    """Median over rounds of the per-round ratio (each round's steps ran back to back)."""
    rounds = range(len(next(iter(series.values()))))
    per_round = [_ratios({k: v[i] for k, v in series.items()}) for i in rounds]
    return {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}


def _gen_ratios(variants: dict[str, Any], key: str) -> dict[str, float]:
    """Generation throughput of each MoRE generation variant over the base (``key`` = a median)."""
    if key not in variants.get("base", {}):
        return {}
    out = {
        f"gen_{n}_over_base": v[key] / variants["base"][key]
        for n, v in variants.items()
        if n.startswith("more") and key in v
    }
    return out


def summarise(
    cfg: dict[str, Any],
    workers: list[Worker],
    steps: dict[str, list[tuple[float, float]]],
    gens: dict[str, list[tuple[float, int, float]]],
    rss: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Build the result object: per-variant medians, ratios (wall, paired, CPU) and targets."""
    variants: dict[str, Any] = {w.name: {**rss[w.name], **w.info} for w in workers}
    wall = {n: [t[0] for t in v] for n, v in steps.items()}
    cpu = {n: [t[1] for t in v] for n, v in steps.items()}
    for name in steps:
        variants[name].update(
            median_s=statistics.median(wall[name]),
            all_s=wall[name],
            cpu_median_s=statistics.median(cpu[name]),
            cpu_all_s=cpu[name],
        )
    for name, runs in gens.items():
        tps = [n / s for s, n, _ in runs]
        variants[name].update(
            gen_tokens_per_s_median=statistics.median(tps),
            gen_tokens_per_s_all=tps,
            gen_tokens_per_cpu_s_median=statistics.median(n / c for _, n, c in runs),
        )
    ratios = _ratios({n: variants[n]["median_s"] for n in steps})
    ratios.update(_gen_ratios(variants, "gen_tokens_per_s_median"))
    ratios_cpu = _ratios({n: variants[n]["cpu_median_s"] for n in steps})
    ratios_cpu.update(_gen_ratios(variants, "gen_tokens_per_cpu_s_median"))
    return {
        "meta": run_meta(benchmark="more_layer"),
        "config": cfg,
        "variants": variants,
        "ratios": ratios,
        "ratios_paired_wall": _paired_ratios(wall),
        "ratios_cpu_time": ratios_cpu,
        "targets": _targets(ratios),
        "targets_cpu_time": _targets(ratios_cpu),
    }


def _targets(ratios: dict[str, Any]) -> dict[str, Any]:
    checks = {
        "step_more_k32_over_peft_r32": ("more_k32_over_peft_r32", 0.9, "<="),
        "step_more_k64_over_peft_r32": ("more_k64_over_peft_r32", 0.9, "<="),
        "step_more_k32_over_base": ("more_k32_over_base", 1.15, "<="),
        "step_more_k64_over_base": ("more_k64_over_base", 1.15, "<="),
        "gen_more_k32_over_base": ("gen_more_k32_over_base", 0.85, ">="),
    }
    out: dict[str, Any] = {}
    for name, (key, bound, op) in checks.items():
        value = ratios.get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out[name] = {"ratio": value, "bound": f"{op} {bound}", "met": met}
    return out


def _rss_phase(reply: dict[str, float], phase: str) -> dict[str, float]:
    return {
        "peak_rss_mb": reply["peak_rss_mb"],
        f"rss_max_{phase}_mb": reply["rss_max_in_phase_mb"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn one worker per variant, warm up, interleave timed steps and generations, summarise."""
    from smartfed.model.base import local_model_dir

    cfg = {
        "model": "default (SmolLM2-135M-Instruct)",
        "dtype": "bfloat16",
        "batch": args.batch,
        "seq": args.seq,
        "targets": list(TARGETS),
        "rank": args.rank,
        "seed": args.seed,
        "steps": args.steps,
        "warmup": args.warmup,
        "gen_prompts": len(PROMPTS),
        "gen_tokens": args.gen_tokens,
        "gen_reps": args.gen_reps,
        "optimizer": "AdamW lr 1e-4",
        "threads": args.threads,
        "torch_threads": args.threads or torch.get_num_threads(),
        "variants": {n: VARIANTS[n] for n in args.variants},
    }
    cfg["loadavg_1_5_15_at_start"] = list(os.getloadavg())
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="smartfed-bench-") as tmp:
        adapter_dirs = []
        if any(VARIANTS[n]["kind"] == "more" for n in args.variants):
            adapter_dirs = make_source_adapters(
                local_model_dir(ModelConfig()).location, Path(tmp), args.rank, args.seed
            )
        workers = []
        for name in args.variants:
            workers.append(Worker(ctx, name, adapter_dirs, cfg))
            log.info("built %s: %s", name, workers[-1].info)
        try:
            trainers = [w for w in workers if not VARIANTS[w.name].get("gen_only")]
            interleave(trainers, "step", args.warmup)
            steps = interleave(trainers, "step", args.steps)
            rss = {w.name: _rss_phase(w.ask("rss"), "train") for w in workers}
            gen_workers = [w for w in workers if w.name in GEN_VARIANTS]
            gens = interleave(gen_workers, "gen", args.gen_reps) if args.gen_reps else {}
            for w in gen_workers:
                rss[w.name].update(_rss_phase(w.ask("rss"), "gen"))
        finally:
            for w in workers:
                w.close()
    cfg["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    return summarise(cfg, workers, steps, gens, rss)


def profile(args: argparse.Namespace) -> str:
    """Profile two training steps of one variant in-process (torch profiler); return the table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from smartfed.model.base import local_model_dir

    with tempfile.TemporaryDirectory(prefix="smartfed-prof-") as tmp:
        spec = VARIANTS[args.profile]
        dirs = (
            make_source_adapters(
                local_model_dir(ModelConfig()).location, Path(tmp), args.rank, args.seed
            )
            if spec["kind"] == "more"
            else []
        )
        model, _tok, params, _info = build_variant(spec, dirs, args.rank, args.seed)
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = torch.randint(
        0,
        model.config.vocab_size,
        (args.batch, args.seq),
        generator=torch.Generator().manual_seed(args.seed),
    )
    train_step(model, opt, batch)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            train_step(model, opt, batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen_tokens", type=int, default=64)
    p.add_argument(
        "--gen_reps", type=int, default=3, help="generation repeats per variant (0 = skip)"
    )
    p.add_argument("--variants", default=",".join(VARIANTS), type=lambda s: s.split(","))
    p.add_argument("--out", default=str(RESULTS / "more_layer.json"))
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = default)")
    p.add_argument(
        "--profile",
        default="",
        choices=["", *VARIANTS],
        help="profile this variant instead of benchmarking",
    )
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    configure_logging(logging.INFO)
    args = parse_args(argv)
    if args.profile:
        table = profile(args)
        dest = RESULTS / f"more_layer_profile_{args.profile}.txt"
        atomic_write_text(dest, table + "\n")
        log.info("profile written to %s\n%s", dest, table)
        return 0
    result = run(args)
    atomic_write_json(args.out, result)
    log.info("ratios %s", result["ratios"])
    log.info("targets %s", {k: v["met"] for k, v in result["targets"].items()})
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
