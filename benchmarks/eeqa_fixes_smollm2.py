"""Measure the EEQA fixes on the real SmolLM2-135M: quota spread, router gradient at K=1, gain.

One short central run (no Flower), 1 torch thread, bf16, MoRE on q_proj + v_proj of all 30 layers
over two random PEFT LoRAs (r=8, alpha=16, ``init_lora_weights=False``; M = 16 experts per
matrix), ``topk_experts = 8``, renormalised top-K; data: seeded two-digit sums ("What is 47 plus
38?" -> "The answer is 85."), training and held-out pairs disjoint.

1. *Importance reference* (fix 2): the routers train ``--importance_steps`` steps with two
   ``ImportanceTracker``s attached to the same forwards, ``reference="auto"`` (before the fix: ``x``
   for square q_proj, ``W0 x`` for GQA v_proj) and ``"normalized"`` (after: the direction of
   ``W0 x`` with the per-coordinate RMS of ``x``, everywhere); each score map is allocated with
   the default budget (8 x 60) and ``k_min = 1``.
   Reported: budget share of q_proj vs v_proj, per-layer totals, matrices at K = 1, and the mean
   norms ``|x|``, ``|W0 x|`` per kind.
2. *Router gradient at K = 1* (fix 3): median router-gradient norm of one backward with every
   quota at 1 and at 2, with the exact renormalisation (before) and the detached normaliser (after).
3. *Output scale under EEQA* (fix 4): routers reset to their seeded init, quotas = the "after"
   allocation, ``--train_steps`` steps each with ``output_scale_mode = topk`` (c = uniform K = 8,
   after the fix) and ``quota`` (c = K_m, before), plus the uniform-quota reference (K = 8
   everywhere), for ``--seeds`` data orders (variants interleaved per seed); held-out response
   loss of each, its median and the per-seed differences.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eeqa_fixes_smollm2.py \
        --out benchmarks/results/eeqa_fixes_smollm2.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from smartfed.config import ModelConfig, RouterConfig, TrainConfig
from smartfed.data.example import Example
from smartfed.data.formatting import collate, encode_for_training
from smartfed.files import atomic_write_json
from smartfed.meta import run_meta
from smartfed.model.base import load_base_model, local_model_dir
from smartfed.model.inject import inject_more
from smartfed.model.state import (
    get_quotas,
    load_router_state_dict,
    more_layers,
    router_state_dict,
    set_quotas,
)
from smartfed.pool.pool import resolve_pool
from smartfed.quota.allocate import aggregate_importance, allocate_quotas, matrix_caps
from smartfed.quota.importance import ImportanceTracker
from smartfed.routing.router import RoutingOutput
from smartfed.train.local import evaluate_loss, local_train, sample_batches

ROOT = Path(__file__).resolve().parents[1]


def sums(n: int, seed: int, exclude: set[tuple[int, int]]) -> list[Example]:
    """``n`` seeded two-digit sums whose ``(a, b)`` is not in ``exclude`` (which is extended)."""
    rng = random.Random(seed)
    out: list[Example] = []
    while len(out) < n:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if (a, b) in exclude:
            continue
        exclude.add((a, b))
        out.append(Example(prompt=f"What is {a} plus {b}?", response=f"The answer is {a + b}."))
    return out


def build(args: argparse.Namespace, workdir: Path) -> tuple[Any, Any, Any]:
    """SmolLM2 with MoRE over two random LoRAs; returns ``(model, tokenizer, pool)``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from factories import make_peft_adapter  # random nonzero LoRAs (PEFT init_lora_weights=False)

    cfg = ModelConfig(dtype="bfloat16", device="cpu")
    model_dir = Path(local_model_dir(cfg).location)
    adapters = [
        make_peft_adapter(model_dir, workdir / f"lora{i}", r=8, alpha=16.0, seed=100 + i)
        for i in range(2)
    ]
    model, tok = load_base_model(cfg)
    pool = resolve_pool([str(a) for a in adapters])
    return model, tok, pool


def inject(model: Any, pool: Any, mode: str, k: int) -> None:
    """(Re-)inject MoRE with seeded routers, renormalised top-K and output scale ``mode``."""
    cfg = RouterConfig(topk_experts=k, output_scale_mode=mode, renormalize_topk=True)
    inject_more(model, pool, cfg, seed=0)


def spread(quotas: dict[str, int]) -> dict[str, Any]:
    """Budget share per kind and per layer, matrices at K = 1, extremes."""
    kinds: dict[str, int] = {}
    layers: dict[int, int] = {}
    for name, k in quotas.items():
        kind = name.rsplit(".", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + k
        layer = int(name.split(".")[2])
        layers[layer] = layers.get(layer, 0) + k
    total = sum(quotas.values())
    by_kind = {
        kind: {
            "share": kinds[kind] / total,
            "min": min(v for n, v in quotas.items() if n.endswith(kind)),
            "median": statistics.median(v for n, v in quotas.items() if n.endswith(kind)),
            "max": max(v for n, v in quotas.items() if n.endswith(kind)),
            "at_k1": sum(1 for n, v in quotas.items() if n.endswith(kind) and v == 1),
        }
        for kind in sorted(kinds)
    }
    return {
        "by_kind": by_kind,
        "per_layer_total": [layers[i] for i in sorted(layers)],
        "matrices_at_k1": sum(1 for v in quotas.values() if v == 1),
        "quotas": quotas,
    }


def norms(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Mean token norms ``|x|`` and ``|W0 x|`` per matrix kind on one batch."""
    acc: dict[str, dict[str, list[float]]] = {}
    handles = []
    for name, layer in more_layers(model).items():
        kind = name.rsplit(".", 1)[-1]

        def obs(info: Any, kind: str = kind) -> None:
            d = acc.setdefault(kind, {"x": [], "W0x": []})
            d["x"].append(float(info.x.float().norm(dim=-1).mean()))
            d["W0x"].append(float(info.base_out.float().norm(dim=-1).mean()))

        handles.append(layer.add_observer(obs))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    return {k: {n: statistics.mean(v) for n, v in d.items()} for k, d in acc.items()}


def importance_phase(args: argparse.Namespace, model: Any, rows: list[Any], pad: int) -> dict:
    """Train the routers with both trackers attached; allocate each score map."""
    params = [layer.router.weight.requires_grad_(True) for layer in more_layers(model).values()]
    gen = torch.Generator().manual_seed(1)
    batches = sample_batches(rows, args.batch, args.importance_steps, pad, gen)
    before, after = ImportanceTracker(model, reference="auto"), ImportanceTracker(model)
    start = time.perf_counter()
    with before, after:
        local_train(
            model, batches, params, TrainConfig(learning_rate=args.lr, gradient_checkpointing=False)
        )
    experts = {n: layer.num_experts for n, layer in more_layers(model).items()}
    caps, budget = matrix_caps(experts, 0), args.topk * len(experts)
    out: dict[str, Any] = {"seconds": time.perf_counter() - start}
    for label, tracker in (("before_auto_reference", before), ("after_normalized", after)):
        scores = aggregate_importance([(1, tracker.scores())])
        quotas = allocate_quotas(scores, budget, 1, caps)
        out[label] = {"scores": scores, **spread(quotas)}
    return out


def _exact_select(router: Any) -> Any:
    """The renormalisation before fix 3 (normaliser not detached), for the gradient comparison."""

    def select(probs: torch.Tensor, k: int) -> RoutingOutput:
        weights, indices = torch.topk(probs, k, dim=-1)
        return RoutingOutput(weights / weights.sum(-1, keepdim=True), indices)

    return select


def gradient_phase(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Median router-gradient norm at K = 1 and K = 2, exact vs detached normaliser."""
    layers = more_layers(model)
    out: dict[str, float] = {}
    for label in ("exact_renorm_before", "detached_normaliser_after"):
        for k in (1, 2):
            set_quotas(model, dict.fromkeys(layers, k))
            for layer in layers.values():
                layer.router.weight.requires_grad_(True)
                layer.router.weight.grad = None
                if label.startswith("exact"):
                    layer.router.select = _exact_select(layer.router)
            model(**batch).loss.backward()
            grads = [float(layer.router.weight.grad.float().norm()) for layer in layers.values()]
            out[f"{label}_k{k}_median_grad_norm"] = statistics.median(grads)
            for layer in layers.values():
                layer.router.__dict__.pop("select", None)
                layer.router.weight.grad = None
    return out


def train_eval(
    args: argparse.Namespace,
    model: Any,
    init: dict[str, torch.Tensor],
    mode: str,
    quotas: dict[str, int],
    rows: list[Any],
    held: list[Any],
    pad: int,
    seed: int,
) -> dict[str, Any]:
    """Seeded initial routers, fixed quotas, ``train_steps`` steps; held-out loss before/after."""
    load_router_state_dict(model, init)
    for layer in more_layers(model).values():
        layer.output_scale_mode = mode  # every layer was built with K = topk (its scale_k)
    set_quotas(model, quotas)
    scales = [layer.output_scale for layer in more_layers(model).values()]
    params = [layer.router.weight.requires_grad_(True) for layer in more_layers(model).values()]
    loss0 = evaluate_loss(model, held, args.batch, pad)
    gen = torch.Generator().manual_seed(seed)
    batches = sample_batches(rows, args.batch, args.train_steps, pad, gen)
    result = local_train(
        model, batches, params, TrainConfig(learning_rate=args.lr, gradient_checkpointing=False)
    )
    return {
        "output_scale_mode": mode,
        "c_min": min(scales),
        "c_max": max(scales),
        "heldout_loss_init": loss0,
        "heldout_loss_trained": evaluate_loss(model, held, args.batch, pad),
        "train_loss_mean": result.loss,
        "seconds": result.seconds,
    }


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median held-out loss per variant and the per-seed differences to ``eeqa_topk_fixed_c``."""
    ref = [r["heldout_loss_trained"] for r in runs["eeqa_topk_fixed_c"]]
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        losses = [r["heldout_loss_trained"] for r in rs]
        diffs = [a - b for a, b in zip(losses, ref, strict=False)]
        out[name] = {
            "seeds": len(losses),
            "median_heldout_loss": statistics.median(losses),
            "heldout_losses": losses,
            "paired_diff_vs_eeqa_topk_fixed_c": diffs,
        }
    return out


def main() -> int:
    """Parse flags, run the three measurements, write the JSON atomically."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--importance_steps", type=int, default=6)
    p.add_argument("--train_steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--heldout", type=int, default=48)
    p.add_argument("--seeds", type=int, default=3, help="data-order seeds of the output-scale runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/eeqa_fixes_smollm2.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, pool = build(args, Path(tmp))
    seen: set[tuple[int, int]] = set()
    rows = [encode_for_training(tok, ex, 64) for ex in sums(256, 0, seen)]
    held = [encode_for_training(tok, ex, 64) for ex in sums(args.heldout, 1, seen)]
    pad = tok.pad_token_id
    inject(model, pool, "topk", args.topk)
    init = router_state_dict(model)
    probe = collate(rows[: args.batch], pad)
    record: dict[str, Any] = {
        "meta": run_meta(torch_threads=torch.get_num_threads()),
        "setup": {
            "model": "SmolLM2-135M-Instruct (embedded GGUF -> safetensors), bfloat16, CPU",
            "pool": "two random PEFT LoRAs r=8 alpha=16 on q_proj+v_proj (seeds 100, 101)",
            "experts_per_matrix": 16,
            "topk_experts": args.topk,
            "renormalize_topk": True,
            "budget": args.topk * len(get_quotas(model)),
            "k_min": 1,
            "data": "two-digit sums, 256 training rows, held-out pairs disjoint",
            **{k: v for k, v in vars(args).items() if k != "out"},
        },
        "norms": norms(model, probe),
    }
    record["importance"] = importance_phase(args, model, rows, pad)
    record["gradient"] = gradient_phase(model, probe)
    quotas = record["importance"]["after_normalized"]["quotas"]
    uniform = dict.fromkeys(quotas, args.topk)
    variants = {
        "eeqa_topk_fixed_c": ("topk", quotas),
        "eeqa_quota_c_eq_k": ("quota", quotas),
        "uniform_k": ("topk", uniform),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for seed in range(2, 2 + args.seeds):  # data-order seeds; variants interleaved per seed
        for name, (mode, q) in variants.items():
            runs[name].append(train_eval(args, model, init, mode, q, rows, held, pad, seed))
        record["output_scale"] = {"runs": runs, "summary": summarize(runs)}
        atomic_write_json(Path(args.out), record)  # a partial run keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
