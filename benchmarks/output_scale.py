"""Measure which MoRE output scale lets a router compose two skill LoRAs (issue 2, item 4).

The mixture ``W0 x + c * sum_topK g_i E_i(x)`` needs a scale: softmax gates sum to 1, so with
c = 1 the mixture applies only a fraction of any one LoRA's update (our CPU-scale prototype).
This script reproduces the prototype's setting on the embedded SmolLM2-135M (bf16, CPU), centrally
(no Flower), and trains ONLY the MoRE routers for a fixed number of steps per variant:

* skills: two PEFT LoRAs, r=8, alpha=16, on q_proj+v_proj, trained here (cached under
  ``--work_dir``):
  A = two-digit addition ("What is 47 plus 38?" -> "85"), B = French numbers
  ("Write 85 in French." -> "quatre-vingt-cinq");
* composite (train / held-out pairs disjoint): "What is 47 plus 38? Give the number, then write it
  in French." -> "85 = quatre-vingt-cinq";
* variants (all K = 8 of M = 16 experts per matrix, the paper's K/M = 32/64 ratio, so c = rank = K):
  ``c1`` (constant 1, no renormalisation), ``rank`` (c = mean source rank, no renormalisation),
  ``topk_renorm`` (c = K, kept top-K gates renormalised), and the controls ``random_rank`` /
  ``random_topk_renorm``: the same router over RANDOM experts with the same shapes and per-tensor
  norms.

Reported per variant: held-out loss (response tokens), greedy exact match, wall time, trainable
parameters.
Run: ``.venv/bin/python benchmarks/output_scale.py`` (about 15 minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from smartfed.config import ModelConfig, RouterConfig
from smartfed.data.example import Example
from smartfed.data.formatting import collate, encode_for_training, render_prompt
from smartfed.files import atomic_write_json
from smartfed.log import configure_logging, get_logger
from smartfed.meta import run_meta
from smartfed.model.base import cache_root, load_base_model

log = get_logger("smartfed.bench.output_scale")

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("q_proj", "v_proj")
COMPOSITE = "What is {a} plus {b}? Give the number, then write it in French."
VARIANTS: dict[str, dict[str, Any]] = {  # run in this order
    "c1": {"output_scale_mode": "constant", "output_scale": 1.0, "renormalize_topk": False},
    "rank": {"output_scale_mode": "rank", "renormalize_topk": False},
    "topk_renorm": {"output_scale_mode": "topk", "renormalize_topk": True},
    "random_topk_renorm": {
        "output_scale_mode": "topk",
        "renormalize_topk": True,
        "random_experts": True,
    },
    "random_rank": {"output_scale_mode": "rank", "renormalize_topk": False, "random_experts": True},
}
_UNITS = [
    "zéro",
    "un",
    "deux",
    "trois",
    "quatre",
    "cinq",
    "six",
    "sept",
    "huit",
    "neuf",
    "dix",
    "onze",
    "douze",
    "treize",
    "quatorze",
    "quinze",
    "seize",
]
_TENS = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}


def french(n: int) -> str:
    """Spell ``0 <= n <= 199`` in French (traditional spelling: "vingt et un", "quatre-vingts")."""
    if n >= 100:
        return "cent" if n == 100 else f"cent {french(n - 100)}"
    if n <= 16:
        return _UNITS[n]
    if n < 20:
        return f"dix-{_UNITS[n - 10]}"
    tens, unit = divmod(n, 10)
    if tens in (7, 9):  # 70-79 = soixante + 10..19, 90-99 = quatre-vingt + 10..19
        head = "soixante" if tens == 7 else "quatre-vingt"
        rest = french(10 + unit)
        return f"{head} et {rest}" if (tens == 7 and unit == 1) else f"{head}-{rest}"
    head = "quatre-vingt" if tens == 8 else _TENS[tens]
    if unit == 0:
        return "quatre-vingts" if tens == 8 else head
    if unit == 1 and tens != 8:
        return f"{head} et un"
    return f"{head}-{_UNITS[unit]}"


def make_examples(seed: int, n_test: int) -> dict[str, list[Example]]:
    """Skill and composite splits; composite train/test (a, b) pairs are disjoint (seeded)."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    test, train = pairs[:n_test], pairs[n_test:]

    def comp(a: int, b: int) -> Example:
        return Example(
            COMPOSITE.format(a=a, b=b), f"{a + b} = {french(a + b)}", f"{a + b} = {french(a + b)}"
        )

    numbers = list(range(0, 200))
    return {
        "skill_add": [Example(f"What is {a} plus {b}?", str(a + b), str(a + b)) for a, b in train],
        "skill_french": [Example(f"Write {n} in French.", french(n), french(n)) for n in numbers],
        "composite_train": [comp(a, b) for a, b in train],
        "composite_test": [comp(a, b) for a, b in test],
    }


def batches(
    examples: list[Example], tok: Any, steps: int, batch: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``steps`` seeded random batches (with replacement) as collated tensors."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(examples), (batch,), generator=gen).tolist()
        yield collate([encode_for_training(tok, examples[i], 96) for i in idx], tok.pad_token_id)


def train(
    model: Any,
    params: list[torch.nn.Parameter],
    examples: list[Example],
    tok: Any,
    steps: int,
    lr: float,
    seed: int,
) -> list[float]:
    """AdamW on ``params`` for ``steps`` batches of 8; returns the training losses."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for i, b in enumerate(batches(examples, tok, steps, 8, seed)):
        opt.zero_grad(set_to_none=True)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (i + 1) % 25 == 0:
            log.info("  step %d/%d loss %.3f", i + 1, steps, statistics.mean(losses[-25:]))
    model.eval()
    return losses


@torch.no_grad()
def held_out_loss(model: Any, tok: Any, examples: list[Example]) -> float:
    """Mean cross-entropy over all response tokens of ``examples`` (token-weighted)."""
    total, count = 0.0, 0
    for start in range(0, len(examples), 25):
        b = collate(
            [encode_for_training(tok, e, 96) for e in examples[start : start + 25]],
            tok.pad_token_id,
        )
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        labels = b["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((labels != -100).sum())
    return total / count


@torch.no_grad()
def exact_match(model: Any, tok: Any, examples: list[Example], max_new_tokens: int = 24) -> float:
    """Greedy (KV cache) generation; fraction whose stripped output equals ``answer`` exactly."""
    tok.padding_side = "left"
    hits = 0
    for start in range(0, len(examples), 25):
        chunk = examples[start : start + 25]
        enc = tok(
            [render_prompt(tok, e.prompt) for e in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += sum(t.strip() == e.answer for t, e in zip(texts, chunk, strict=True))
    return hits / len(examples)


def ensure_skill_lora(
    name: str, examples: list[Example], work: Path, args: argparse.Namespace
) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse from ``work``) a PEFT LoRA on one skill; return its dir and its record.

    60 examples are held out of the skill's training set to measure its exact match.
    """
    import json

    from peft import LoraConfig, get_peft_model

    steps = args.french_steps if name == "french" and args.french_steps else args.skill_steps
    out = work / f"skill_{name}_r{args.skill_rank}_s{steps}_seed{args.seed}"
    info_file = out / "skill_info.json"
    if info_file.is_file() and (out / "adapter_model.safetensors").is_file():
        return out, {**json.loads(info_file.read_text()), "reused_from_cache": True}
    t0 = time.perf_counter()
    model, tok = load_base_model(ModelConfig(dtype="bfloat16"))
    cfg = LoraConfig(
        r=args.skill_rank,
        lora_alpha=2 * args.skill_rank,
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(args.seed)
    peft_model = get_peft_model(model, cfg)
    order = list(range(len(examples)))
    random.Random(args.seed).shuffle(order)
    held = [examples[i] for i in order[:60]]
    train_set = [examples[i] for i in order[60:]]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    losses = train(peft_model, params, train_set, tok, steps, args.skill_lr, args.seed)
    record = {
        "skill": name,
        "rank": args.skill_rank,
        "alpha": 2 * args.skill_rank,
        "steps": steps,
        "lr": args.skill_lr,
        "seed": args.seed,
        "train_examples": len(train_set),
        "final_train_loss": statistics.mean(losses[-10:]),
        "held_out_em_60": exact_match(peft_model, tok, held),
        "seconds": time.perf_counter() - t0,
    }
    peft_model.save_pretrained(out)
    atomic_write_json(info_file, record)
    log.info("skill %s: %s", name, record)
    return out, record


def random_like(src: Path, dest: Path, seed: int) -> Path:
    """Copy a PEFT adapter dir with every weight replaced by Gaussian noise of the same norm."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(src / "adapter_model.safetensors")
    noisy = {}
    for key in sorted(tensors):
        t = tensors[key].float()
        r = torch.randn(t.shape, generator=gen)
        noisy[key] = (r * (t.norm() / r.norm())).to(tensors[key].dtype).contiguous()
    save_file(noisy, dest / "adapter_model.safetensors", metadata={"format": "pt"})
    (dest / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    return dest


def run_variant(
    name: str, adapter_dirs: list[str], data: dict[str, list[Example]], args: argparse.Namespace
) -> dict[str, Any]:
    """Inject MoRE with this variant's scale, train only the routers, evaluate on held-out pairs."""
    from smartfed.model.inject import inject_more
    from smartfed.pool.pool import resolve_pool

    spec = VARIANTS[name]
    t0 = time.perf_counter()
    model, tok = load_base_model(ModelConfig(dtype="bfloat16"))
    router_cfg = RouterConfig(
        topk_experts=args.k,
        output_scale_mode=spec["output_scale_mode"],
        output_scale=spec.get("output_scale", 1.0),
        renormalize_topk=spec["renormalize_topk"],
        router_init_std=0.01,
    )
    rseed = args.seed if args.router_seed < 0 else args.router_seed
    report = inject_more(model, resolve_pool(adapter_dirs), router_cfg, rseed)
    params = [p for p in model.parameters() if p.requires_grad]
    test = data["composite_test"]
    loss_init = held_out_loss(model, tok, test)
    t_train = time.perf_counter()
    losses = train(model, params, data["composite_train"], tok, args.steps, args.router_lr, rseed)
    train_s = time.perf_counter() - t_train
    out = {
        "spec": spec,
        "router_config": vars_of(router_cfg),
        "held_out_loss_init": loss_init,
        "held_out_loss": held_out_loss(model, tok, test),
        "train_loss_curve": losses,
        "final_train_loss": statistics.mean(losses[-10:]),
        "train_seconds": train_s,
        "trainable_params": sum(p.numel() for p in params),
        "router_params_reported": getattr(report, "router_params", None),
    }
    out["exact_match"] = exact_match(model, tok, test) if args.em else None
    out["seconds"] = time.perf_counter() - t0
    log.info(
        "variant %s: loss %.3f -> %.3f, EM %s, %.0f s",
        name,
        loss_init,
        out["held_out_loss"],
        out["exact_match"],
        out["seconds"],
    )
    return out


def vars_of(cfg: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for the result file)."""
    import dataclasses

    return dataclasses.asdict(cfg)


def base_reference(data: dict[str, list[Example]], args: argparse.Namespace) -> dict[str, Any]:
    """Held-out loss and EM of the base model with no adapter (the floor to beat)."""
    model, tok = load_base_model(ModelConfig(dtype="bfloat16"))
    test = data["composite_test"]
    return {
        "held_out_loss": held_out_loss(model, tok, test),
        "exact_match": exact_match(model, tok, test) if args.em else None,
    }


def summarise(variants: dict[str, Any]) -> dict[str, Any]:
    """Rank variants by held-out loss; compare the best with the current default (``rank``)."""
    ranked = sorted(variants, key=lambda n: variants[n]["held_out_loss"])
    best = ranked[0]
    out: dict[str, Any] = {"ranking_by_held_out_loss": ranked, "best": best}
    if "rank" in variants:
        ref = variants["rank"]
        out["best_loss_over_rank_loss"] = variants[best]["held_out_loss"] / ref["held_out_loss"]
        if ref["exact_match"] is not None:
            out["best_em_minus_rank_em"] = variants[best]["exact_match"] - ref["exact_match"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="router training steps per variant")
    p.add_argument("--router_lr", type=float, default=5e-3)
    p.add_argument("--k", type=int, default=8, help="top-K of M = 2 x skill_rank experts")
    p.add_argument("--skill_rank", type=int, default=8)
    p.add_argument("--skill_steps", type=int, default=80)
    p.add_argument(
        "--french_steps", type=int, default=0, help="French skill steps (0 = skill_steps)"
    )
    p.add_argument("--skill_lr", type=float, default=2e-3)
    p.add_argument("--n_test", type=int, default=100)
    p.add_argument(
        "--router_seed", type=int, default=-1, help="router init + batch order (-1 = --seed)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_em", dest="em", action="store_false", help="skip greedy exact match")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        type=lambda s: [v for v in s.split(",") if v and v != "none"],
        help="comma-separated; `none` = only train/cache the skill LoRAs",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--work_dir", default=str(cache_root() / "bench" / "output_scale"))
    p.add_argument("--out", default=str(RESULTS / "output_scale.json"))
    args = p.parse_args(argv)
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    configure_logging(logging.INFO)
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work_dir)
    data = make_examples(args.seed, args.n_test)
    skills = {}
    dirs = []
    for name, key in (("add", "skill_add"), ("french", "skill_french")):
        path, skills[name] = ensure_skill_lora(name, data[key], work, args)
        dirs.append(str(path))
    random_dirs = [
        str(random_like(Path(d), work / f"random_{i}_seed{args.seed}", args.seed + 100 + i))
        for i, d in enumerate(dirs)
    ]
    result: dict[str, Any] = {
        "config": {
            **{k: v for k, v in vars(args).items() if k != "variants"},
            "model": "default (SmolLM2-135M-Instruct)",
            "dtype": "bfloat16",
            "targets": list(TARGETS),
            "batch": 8,
            "max_len": 96,
            "optimizer": "AdamW, clip 1.0",
            "experts_per_matrix": 2 * args.skill_rank,
            "composite_prompt": COMPOSITE,
            "train_examples": len(data["composite_train"]),
        },
        "skills": skills,
        "base_no_adapter": base_reference(data, args),
        "variants": {},
        "summary": {},
    }
    for name in args.variants:
        use = random_dirs if VARIANTS[name].get("random_experts") else dirs
        result["variants"][name] = run_variant(name, use, data, args)
        result["summary"] = summarise(result["variants"])
        result["meta"] = run_meta(
            benchmark="output_scale",
            total_seconds=time.perf_counter() - t0,
            loadavg_1_5_15=list(os.getloadavg()),
        )
        atomic_write_json(args.out, result)  # after every variant: a crash keeps what was measured
    log.info("summary %s", result["summary"])
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
