"""Measure the cpu-mini skill LoRAs and check that no composite is solved without composition.

For each skill: the LoRA's training record (steps, seconds, losses) and its held-out accuracy
(greedy, the task's own scorer) next to the base model's. For each composite: base model, linear
merges of its two skill LoRAs (exact delta sum ``B_a A_a + B_b A_b`` and average, PEFT ``cat``),
optionally each LoRA alone — accuracy and held-out loss, no training. Results are merged into
``benchmarks/results/cpu_mini_skills.json`` after every measurement (a partial run keeps what it
measured).

    .venv/bin/python benchmarks/cpu_mini_skills.py --skills all --composites none
    .venv/bin/python benchmarks/cpu_mini_skills.py --skills none --composites all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from smartfed.config import ModelConfig
from smartfed.data.formatting import encode_for_training
from smartfed.files import atomic_write_json
from smartfed.log import configure_logging
from smartfed.meta import run_meta
from smartfed.model.base import load_base_model
from smartfed.train.skill_lora import RECORD_FILE, heldout_loss, resolve_task
from smartfed_bench.cpu_mini import SKILLS, SUITE
from smartfed_bench.pools import accuracy, cpu_mini_recipe, ensure_cpu_mini_pool

OUT = Path(__file__).parent / "results" / "cpu_mini_skills.json"


def _short(name: str) -> str:
    return name.removeprefix("cpu_mini.").replace(".", "_")


class Adapters:
    """One base model with PEFT adapters loaded on demand (the base is never reloaded)."""

    def __init__(self, base: Any, paths: dict[str, Path]) -> None:
        self.base, self.paths, self.model = base, paths, None

    def use(self, skill: str) -> Any:
        from peft import PeftModel

        name = _short(skill)
        if self.model is None:
            self.model = PeftModel.from_pretrained(
                self.base, str(self.paths[skill]), adapter_name=name
            )
        elif name not in self.model.peft_config:
            self.model.load_adapter(str(self.paths[skill]), adapter_name=name)
        self.model.set_adapter(name)
        return self.model

    def merged(self, a: str, b: str, weight: float) -> Any:
        self.use(a)
        self.use(b)
        name = f"merge_{_short(a)}_{_short(b)}_w{round(weight * 100)}"
        if name not in self.model.peft_config:
            self.model.add_weighted_adapter(
                [_short(a), _short(b)], [weight, weight], name, combination_type="cat"
            )
        self.model.set_adapter(name)
        return self.model


def _loss(model: Any, tok: Any, task_name: str, limit: int) -> float:
    rows = resolve_task(task_name).eval_examples()[:limit]
    return round(
        heldout_loss(model, [encode_for_training(tok, e, 128) for e in rows], tok.pad_token_id), 4
    )


def _measure(model: Any, tok: Any, task: str, limit: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = accuracy(model, tok, task, limit)
    out["heldout_loss"] = _loss(model, tok, task, limit)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _save(result: dict[str, Any]) -> None:
    command = " ".join([".venv/bin/python", *sys.argv])
    if command not in result.setdefault("commands", []):
        result["commands"].append(command)
    result["meta"] = run_meta(
        command=" ".join([".venv/bin/python", *sys.argv]), torch_threads=torch.get_num_threads()
    )
    atomic_write_json(OUT, result)


def _skills(
    ad: Adapters, tok: Any, skills: list[str], result: dict[str, Any], limit: int, base_limit: int
) -> None:
    for skill in skills:
        rec = json.loads((ad.paths[skill] / RECORD_FILE).read_text())
        entry = {
            k: rec[k]
            for k in (
                "steps",
                "seconds",
                "seconds_per_step",
                "rows",
                "first_train_loss",
                "final_train_loss",
                "initial_heldout_loss",
                "heldout_loss",
                "trainable_params",
            )
        }
        entry["recipe"] = rec["recipe"]
        entry["adapter_dir"] = str(ad.paths[skill])
        entry["build_command"] = (
            f"smartfed pool train --dataset {skill} --rank 8 --alpha 16 "
            f"--target_modules q_proj,v_proj --max_steps {rec['recipe']['max_steps']} "
            f"--learning_rate 2e-3 --batch_size {rec['recipe']['batch_size']} "
            f"--seed 0 --output_dir {ad.paths[skill]}  (run via ensure_cpu_mini_pool)"
        )
        old = result.get("skills", {}).get(skill, {})
        entry["lora"] = _measure(ad.use(skill), tok, skill, limit) if limit else old.get("lora")
        if base_limit:
            with ad.model.disable_adapter():
                entry["base"] = _measure(ad.model, tok, skill, base_limit)
        else:
            entry["base"] = old.get("base")
        result.setdefault("skills", {})[skill] = entry
        _save(result)
        print(skill, {k: (entry[k] or {}).get("accuracy") for k in ("lora", "base")}, flush=True)


def _composites(
    ad: Adapters, tok: Any, names: list[str], result: dict[str, Any], limit: int, alone: bool
) -> None:
    for comp in names:
        a, b = SUITE[comp].skills
        entry: dict[str, Any] = {"skills": [a, b]}
        ad.use(a)
        with ad.model.disable_adapter():
            entry["base"] = _measure(ad.model, tok, comp, limit)
        entry["merge_sum"] = _measure(ad.merged(a, b, 1.0), tok, comp, limit)
        entry["merge_avg"] = _measure(ad.merged(a, b, 0.5), tok, comp, limit)
        if alone:
            entry["alone_" + _short(a)] = _measure(ad.use(a), tok, comp, limit)
            entry["alone_" + _short(b)] = _measure(ad.use(b), tok, comp, limit)
        result.setdefault("composites", {})[comp] = entry
        _save(result)
        print(comp, {k: v["accuracy"] for k, v in entry.items() if isinstance(v, dict)}, flush=True)


def _pick(arg: str, every: list[str]) -> list[str]:
    return every if arg == "all" else [] if arg == "none" else arg.split(",")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skills", default="all")
    p.add_argument("--composites", default="all")
    p.add_argument(
        "--limit", type=int, default=100, help="held-out rows per skill-LoRA accuracy (0: keep old)"
    )
    p.add_argument(
        "--base_limit",
        type=int,
        default=50,
        help="held-out rows for the base on skills (0: keep old)",
    )
    p.add_argument("--composite_limit", type=int, default=50)
    p.add_argument(
        "--alone", action="store_true", help="also each skill LoRA alone on the composite"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core box)"
    )
    args = p.parse_args()
    configure_logging()
    torch.set_num_threads(args.threads)
    skills, comps = _pick(args.skills, list(SKILLS)), _pick(args.composites, list(SUITE))
    needed = sorted(set(skills) | {s for c in comps for s in SUITE[c].skills})
    model_cfg = ModelConfig(dtype="bfloat16")  # the recorded setup (the default is now auto)
    paths = ensure_cpu_mini_pool(model_cfg, skills=needed)
    base, tok = load_base_model(model_cfg)
    result = json.loads(OUT.read_text()) if OUT.exists() else {"suite": "cpu-mini"}
    result["recipes"] = {s: cpu_mini_recipe(s).key() for s in SKILLS}
    ad = Adapters(base, paths)
    _skills(ad, tok, skills, result, args.limit, args.base_limit)
    _composites(ad, tok, comps, result, args.composite_limit, args.alone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
