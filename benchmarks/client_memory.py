"""Peak memory and step time of one paper-default SmartFed client step, memory options on vs off.

The client step of the paper's protocol on the embedded SmolLM2-135M-Instruct (bf16, CPU): batch
16 x 256 tokens, MoRE over two rank-32 q/v PEFT LoRAs (M = 64 experts per matrix, K = 32), EEQA
importance tracking on, AdamW on the routers only - exactly ``smartfed.train.local.local_train``
as a client runs it. The LoRAs are built with random nonzero A and B in PEFT format (shapes are
what matters for memory and time; nothing is trained). Tokens are random (seeded); the first
``--prompt_frac`` of every row is prompt (no loss), the rest response.

Variants (``--variants``):

* ``hf_logits``: the loss from ``model(**batch).loss`` (full ``(16, 256, vocab)`` logits, float32
  upcast), no checkpointing - what a client held before the response-only loss.
* ``plain``: response-only LM head in one go (``loss_chunk_tokens = 0``), no checkpointing.
* ``chunk``: response-only LM head, ``loss_chunk_tokens = 256``, no checkpointing.
* ``ckpt``: activation checkpointing, LM head in one go.
* ``lean``: activation checkpointing + ``loss_chunk_tokens = 256`` (the defaults).

Every (variant, repeat) runs in a fresh subprocess, so its peak RSS is its own: ``peak_rss_mb`` is
the whole process (``ru_maxrss``, model load included: loading maps the float32 safetensors copy
of the GGUF, a transient of about 0.5 GB), ``step_peak_rss_mb`` the RSS high-water mark of the
training steps alone (Linux ``VmHWM`` reset after loading; it includes the resident model);
repeats rotate the variant order so all variants see the same machine load.
The JSON has per-run numbers, medians, ratios to ``plain`` and the per-step losses (identical
across variants up to float rounding: the options do not change the math). Step time is recorded
as wall time and as process CPU time (all threads); on a shared machine the CPU time is the less
load-sensitive of the two.

Run (from the repository root; about 10 minutes with 1 thread on a quiet machine)::

    .venv/bin/python benchmarks/client_memory.py --repeats 3 --threads 1

``--estimate`` prints instead the *computed* (not measured) GPU memory per client of the paper's
model sizes as a markdown table (docs/gpu.md): weights + experts + routers with AdamW + saved
activations + the loss, from the architecture numbers below and a count of what autograd keeps
per token and decoder layer when only routers train (bf16; RMSNorm saves float32 copies; SDPA
keeps q, k, v and its output; the SwiGLU MLP keeps gate, up and silu(gate)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict[str, Any]] = {
    "hf_logits": {"hf_logits": True, "gradient_checkpointing": False, "loss_chunk_tokens": 0},
    "plain": {"gradient_checkpointing": False, "loss_chunk_tokens": 0},
    "chunk": {"gradient_checkpointing": False, "loss_chunk_tokens": 256},
    "ckpt": {"gradient_checkpointing": True, "loss_chunk_tokens": 0},
    "lean": {"gradient_checkpointing": True, "loss_chunk_tokens": 256},
}


ARCHS: dict[str, dict[str, int]] = {
    # hidden, layers, MLP intermediate, key/value width, vocabulary, parameters, tied embeddings
    "SmolLM2-135M": {
        "h": 576,
        "L": 30,
        "i": 1536,
        "kv": 192,
        "V": 49152,
        "P": 134_515_008,
        "tied": 1,
    },
    "Llama-2-7B": {
        "h": 4096,
        "L": 32,
        "i": 11008,
        "kv": 4096,
        "V": 32000,
        "P": 6_738_415_616,
        "tied": 0,
    },
    "Qwen2-7B": {
        "h": 3584,
        "L": 28,
        "i": 18944,
        "kv": 512,
        "V": 152064,
        "P": 7_615_616_512,
        "tied": 0,
    },
}
QUANT_BYTES = {"none": 2.0, "8bit": 1.0, "4bit": 0.53}  # per linear weight (NF4 + double quant)
CUDA_CONTEXT_GB = 0.5


def estimate_gb(
    arch: dict[str, int],
    batch: int,
    seq: int,
    resp_frac: float,
    ckpt: bool,
    chunk: int,
    quant: str,
    rank: int = 32,
    loras: int = 2,
) -> dict[str, float]:
    """Computed GPU memory (GB) of one client step; see the module docstring for what is counted.

    Returns:
        ``weights``, ``routers_experts``, ``activations``, ``loss``, ``total`` (incl. the CUDA
        context), all in GB (1e9 bytes).
    """
    h, n_layers, inter, kv, vocab = arch["h"], arch["L"], arch["i"], arch["kv"], arch["V"]
    embed = vocab * h * (1 if arch["tied"] else 2)
    weights = (arch["P"] - embed) * QUANT_BYTES[quant] + embed * 2
    m = loras * rank  # experts per routed matrix (q and v)
    experts = n_layers * (m * h + h * m + m * h + kv * m) * 2
    routers = n_layers * 2 * m * h * 4 * 4  # fp32 weight, grad, AdamW m and v
    tokens = batch * seq
    per_token_layer = 2 * 10 * h + 2 * (2 * h + 2 * kv) + 6 * inter  # bytes (module docstring)
    layer_acts = tokens * per_token_layer
    acts = (tokens * h * 2 * n_layers + layer_acts) if ckpt else layer_acts * n_layers
    n_resp = int(tokens * resp_frac)
    loss = (min(chunk, n_resp) * vocab * 6 + n_resp * h * 2) if chunk > 0 else n_resp * vocab * 16
    parts = {
        "weights": weights,
        "routers_experts": experts + routers,
        "activations": acts,
        "loss": loss,
    }
    out = {k: round(v / 1e9, 2) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / 1e9 + CUDA_CONTEXT_GB, 1)
    return out


def estimate_table(batch: int, resp_frac: float) -> str:
    """Markdown table of :func:`estimate_gb` for the paper's sizes and the option combinations."""
    rows = [
        "| model | seq | quantization | checkpointing + chunked loss | weights | activations "
        "| loss | total GB (est.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, arch in ARCHS.items():
        seq = 256 if name.startswith("SmolLM2") else 512
        for quant in ("none", "8bit", "4bit"):
            if name.startswith("SmolLM2") and quant != "none":
                continue
            for lean in (False, True):
                e = estimate_gb(arch, batch, seq, resp_frac, lean, 256 if lean else 0, quant)
                rows.append(
                    f"| {name} | {seq} | {quant} | {'on' if lean else 'off'} | {e['weights']} "
                    f"| {e['activations']} | {e['loss']} | {e['total']} |"
                )
    return "\n".join(rows)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def hwm_rss_mb() -> float:
    """RSS high-water mark since the last :func:`reset_peak_rss` (``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return peak_rss_mb()


def make_loras(out_root: Path, rank: int, seed: int) -> list[str]:
    """Save two PEFT LoRAs for SmolLM2 (rank ``rank``, alpha 2*rank, q/v, random nonzero A, B)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.factories import make_peft_adapter

    from smartfed.config import ModelConfig
    from smartfed.model.base import local_model_dir

    model_dir = Path(local_model_dir(ModelConfig()).location)
    dirs = []
    for i in range(2):
        out = out_root / f"lora{i}"
        make_peft_adapter(model_dir, out, r=rank, alpha=2.0 * rank, seed=seed + i)
        dirs.append(str(out))
    return dirs


def make_batch(vocab: int, args: argparse.Namespace) -> dict[str, Any]:
    """Random tokens (seeded), ``(batch, seq)``; the first ``prompt_frac`` of a row has no loss."""
    import torch

    from smartfed.data.formatting import IGNORE_INDEX

    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    labels = ids.clone()
    labels[:, : int(args.seq * args.prompt_frac)] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def hf_logits_step(model: Any, batch: dict[str, Any], params: list[Any], lr: float) -> float:
    """One AdamW step with the loss from the full logits (``model(**batch).loss``)."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr)
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    for p in params:
        p.grad = None
    return float(loss.detach())


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Load, build one variant, run warmup + timed steps; return its numbers."""
    import torch

    torch.set_num_threads(args.threads)
    from smartfed.config import ModelConfig, RunConfig
    from smartfed.methods import get_method
    from smartfed.model.base import load_base_model
    from smartfed.pool.pool import resolve_pool
    from smartfed.quota.importance import ImportanceTracker
    from smartfed.train.local import local_train

    spec = VARIANTS[args.worker]
    model, _ = load_base_model(ModelConfig(dtype="bfloat16", device="cpu"))
    cfg = RunConfig.from_flat(
        {
            "topk_experts": args.topk,
            "seed": args.seed,
            "gradient_checkpointing": spec["gradient_checkpointing"],
            "loss_chunk_tokens": spec["loss_chunk_tokens"],
        }
    )
    method = get_method("smartfed")
    method.prepare(model, resolve_pool(args.loras.split(",")), cfg)
    params = method.trainable_parameters(model)
    batch = make_batch(model.config.vocab_size, args)
    loaded_mb = peak_rss_mb()
    hwm_reset = reset_peak_rss()  # the step peak excludes the model-load transient
    times, cpu_times, losses = [], [], []
    with ImportanceTracker(model) as tracker:
        for i in range(args.warmup + args.steps):
            tracker.set_token_mask(batch["attention_mask"])
            t0, c0 = time.perf_counter(), time.process_time()
            if spec.get("hf_logits"):
                loss = hf_logits_step(model, batch, params, cfg.train.learning_rate)
            else:
                loss = local_train(model, [batch], params, cfg.train, total=1).loss
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
            losses.append(loss)
        tokens = sum(tracker.tokens().values())
    return {
        "variant": args.worker,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "step_peak_rss_mb": round(hwm_rss_mb(), 1) if hwm_reset else None,
        "rss_after_load_mb": round(loaded_mb, 1),
        "step_s": [round(t, 3) for t in times],
        "step_s_median": round(statistics.median(times), 3),
        "step_cpu_s": [round(t, 3) for t in cpu_times],
        "losses": losses,
        "observed_tokens": tokens,
    }


def run_variant(name: str, args: argparse.Namespace, loras: list[str]) -> dict[str, Any]:
    """Run one variant in a fresh subprocess (1 repeat)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--worker", name, "--loras", ",".join(loras)]
    for key in ("threads", "batch", "seq", "prompt_frac", "topk", "seed", "steps", "warmup"):
        argv += [f"--{key}", str(getattr(args, key))]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Medians per variant, ratios to ``plain``, and the loss agreement across variants."""
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        out[name] = {
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in mine),
            "step_peak_rss_mb_median": statistics.median(r["step_peak_rss_mb"] for r in mine),
            "peak_rss_mb_runs": [r["peak_rss_mb"] for r in mine],
            "rss_after_load_mb_median": statistics.median(r["rss_after_load_mb"] for r in mine),
            "step_s_median": statistics.median(t for r in mine for t in r["step_s"]),
            "step_cpu_s_median": statistics.median(t for r in mine for t in r["step_cpu_s"]),
            "losses": mine[0]["losses"],
        }
    if "plain" in out:
        ref = out["plain"]
        for name in names:
            out[name]["step_time_vs_plain"] = round(
                out[name]["step_s_median"] / ref["step_s_median"], 3
            )
            out[name]["step_cpu_time_vs_plain"] = round(
                out[name]["step_cpu_s_median"] / ref["step_cpu_s_median"], 3
            )
            out[name]["step_peak_rss_vs_plain"] = round(
                out[name]["step_peak_rss_mb_median"] / ref["step_peak_rss_mb_median"], 3
            )
            out[name]["peak_rss_vs_plain"] = round(
                out[name]["peak_rss_mb_median"] / ref["peak_rss_mb_median"], 3
            )
            out[name]["max_abs_loss_diff_vs_plain"] = max(
                abs(a - b) for a, b in zip(out[name]["losses"], ref["losses"], strict=True)
            )
    return out


def main() -> None:
    """Parse flags; run the workers (parent) or one variant (``--worker``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="plain,lean")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt_frac", type=float, default=0.5)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--topk", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "client_memory.json")
    p.add_argument("--estimate", action="store_true", help="print the computed GPU table")
    p.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--loras", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))  # noqa: T201 - the parent reads this line
        return
    if args.estimate:
        print(estimate_table(args.batch, 1 - args.prompt_frac))  # noqa: T201 - the table
        return

    from smartfed.files import atomic_write_json
    from smartfed.log import configure_logging, get_logger
    from smartfed.meta import run_meta

    configure_logging()
    log = get_logger("smartfed.bench.client_memory")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="client_memory_") as tmp:
        loras = make_loras(Path(tmp), args.rank, args.seed)
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                r = run_variant(name, args, loras)
                r["repeat"] = rep
                runs.append(r)
                log.info(
                    "rep %d %-9s step peak %s MB (process %.0f MB), step %.2f s (cpu %.2f s), "
                    "loss %.5f",
                    rep,
                    name,
                    r["step_peak_rss_mb"],
                    r["peak_rss_mb"],
                    r["step_s_median"],
                    statistics.median(r["step_cpu_s"]),
                    r["losses"][0],
                )
    result = {
        "name": "client_memory",
        "command": "python benchmarks/client_memory.py " + " ".join(sys.argv[1:]),
        "setup": {
            "model": "SmolLM2-135M-Instruct (embedded, bf16, cpu)",
            "batch": args.batch,
            "seq": args.seq,
            "prompt_frac": args.prompt_frac,
            "loras": f"2 x PEFT r={args.rank} alpha={2 * args.rank} q_proj+v_proj, random A/B",
            "topk": args.topk,
            "eeqa_tracking": True,
            "threads": args.threads,
            "steps_per_run": args.steps,
            "warmup_steps": args.warmup,
            "repeats": args.repeats,
        },
        "variants": {k: VARIANTS[k] for k in names},
        "summary": summarize(runs, names),
        "runs": runs,
        "meta": run_meta(),
    }
    atomic_write_json(args.out, result)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
