"""Build skill LoRAs: one (``smartfed pool train``) or the cpu-mini pool, cached by recipe hash.

``ensure_cpu_mini_pool`` is what ``make demo`` and ``smartfed bench`` call: it returns the adapter
dir of every cpu-mini skill LoRA, training the missing ones under
``<cache>/pools/cpu-mini/<skill>-<hash>`` where the hash covers the base model, the concrete dtype
(``auto`` is resolved first, so a hash never holds ``auto``), the recipe, the seed and the
data-generator version. The quickstart paths (``smartfed demo``, ``cpu-mini:`` pool entries) take
the LoRAs shipped with the package for any dtype of the same base model
(:func:`smartfed_bench.packaged.packaged_adapter`); ``smartfed bench`` asks for its exact dtype.

``smartfed train`` accepts the same LoRAs as pool entries ``cpu-mini:<skill>[@<pool seed>]``
(``--lora_pool cpu-mini:skill.zh@1,cpu-mini:skill.code@1``): :func:`expand_cpu_mini_sources`
replaces each by its cached adapter dir (building it first if needed), so the pool seed is a
choice of the run, independent of the run's own ``seed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from smartfed.config import DTYPES, ModelConfig
from smartfed.data.example import Example
from smartfed.data.formatting import render_prompt
from smartfed.errors import ConfigError
from smartfed.log import get_logger
from smartfed.model.base import cache_root
from smartfed.model.dtype import AUTO, resolve_model_config
from smartfed.train.skill_lora import RECORD_FILE, SkillLoraRecipe, resolve_task, train_skill_lora
from smartfed_bench.packaged import packaged_adapter

log = get_logger(__name__)

SUITES = ("cpu-mini",)
CPU_MINI_VERSION = "cpu-mini-v1"
"""Bump when the generators change: cached LoRAs of older data are then rebuilt."""
SKILL_STEPS = {
    "cpu_mini.skill.math": 120,
    "cpu_mini.skill.zh": 60,
    "cpu_mini.skill.code": 60,
    "cpu_mini.skill.reverse": 30,
    "cpu_mini.skill.sort": 30,
}
"""[D] Optimizer steps per skill LoRA (batch 4), sized for 2 CPU cores shared with other jobs
(8-35 s/step measured under that load); controls get fewer: they only need to be real,
unrelated LoRAs."""
SKILL_BATCH = 4
"""[D] Rows per step of the cpu-mini skill LoRAs (the prototype used 8 on an idle machine)."""


def cpu_mini_recipe(skill: str, seed: int = 0) -> SkillLoraRecipe:
    """The recipe of one cpu-mini skill LoRA [D: r=8, alpha=16, q_proj+v_proj, lr 2e-3, batch 4].

    Raises:
        ConfigError: ``skill`` is not a cpu-mini skill.
    """
    if skill not in SKILL_STEPS:
        raise ConfigError(
            f"{skill!r} is not a cpu-mini skill; choose one of {', '.join(SKILL_STEPS)}"
        )
    return SkillLoraRecipe(
        dataset=skill,
        rank=8,
        alpha=16.0,
        max_steps=SKILL_STEPS[skill],
        learning_rate=2e-3,
        batch_size=SKILL_BATCH,
        seed=seed,
        heldout_rows=100,
    )


def recipe_hash(model_cfg: ModelConfig, recipe: SkillLoraRecipe) -> str:
    """12 hex digits identifying (base model, concrete dtype, recipe, seed, generator version).

    ``dtype auto`` is resolved for ``model_cfg.device`` first: the hash names the dtype the LoRA
    is trained in.
    """
    model_cfg = resolve_model_config(model_cfg)
    blob = json.dumps(
        {
            "model": model_cfg.model_name_or_path,
            "dtype": model_cfg.dtype,
            "recipe": recipe.key(),
            "data": CPU_MINI_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def recipe_hashes_any_dtype(model_cfg: ModelConfig, recipe: SkillLoraRecipe) -> set[str]:
    """The :func:`recipe_hash` of ``recipe`` on ``model_cfg``'s base model in every concrete
    dtype (what a shipped LoRA may be recorded under: it serves every dtype of its base)."""
    return {
        recipe_hash(dataclasses.replace(model_cfg, dtype=d), recipe)  # type: ignore[arg-type]
        for d in DTYPES
        if d != AUTO
    }


def ensure_cpu_mini_pool(
    model_cfg: ModelConfig,
    suite: str = "cpu-mini",
    cache_dir: str | Path = "",
    skills: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    shipped_any_dtype: bool = False,
) -> dict[str, Path]:
    """Return ``{skill name: PEFT adapter dir}`` for the suite, building the LoRAs not cached yet.

    A LoRA not in the cache is taken from the ones shipped with the package when they were
    built from the same recipe on the same base model: in the same dtype, or with
    ``shipped_any_dtype`` in whatever dtype. A LoRA trained on a bfloat16 base applies to the same
    model in float32 (and vice versa), as PEFT does when it loads an adapter, so the quickstart
    (``auto`` resolving to float32 on a CPU without bf16 instructions) does not retrain the
    shipped bfloat16 ones; a benchmark that fixes the dtype its LoRAs are trained in leaves it
    off. Trained LoRAs are cached per concrete dtype.

    Args:
        model_cfg: base model the LoRAs are trained on (and will be routed over); ``dtype auto``
            is resolved here.
        suite: only ``cpu-mini`` exists.
        cache_dir: cache root ("" = ``$SMARTFED_CACHE`` or ``~/.cache/smartfed``).
        skills: subset of skills (default: all, relevant and control).
        seed: LoRA seed (part of the cache key).
        progress: tqdm bars while training.
        shipped_any_dtype: accept a shipped LoRA trained in another dtype of the same base model
            [D: off; on for ``smartfed demo`` and ``cpu-mini:`` pool entries].

    Raises:
        ConfigError: unknown suite or skill.
    """
    from smartfed_bench.cpu_mini import SKILLS

    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    model_cfg = resolve_model_config(model_cfg)
    root = cache_root(str(cache_dir)) / "pools" / suite
    out: dict[str, Path] = {}
    for skill in skills or SKILLS:
        recipe = cpu_mini_recipe(skill, seed)
        digest = recipe_hash(model_cfg, recipe)
        path = root / f"{skill.removeprefix('cpu_mini.')}-{digest}"
        built = (path / "adapter_model.safetensors").is_file() and (path / RECORD_FILE).is_file()
        accepted = recipe_hashes_any_dtype(model_cfg, recipe) if shipped_any_dtype else {digest}
        shipped = None if built else packaged_adapter(suite, skill, accepted)
        if shipped is not None:  # shipped with the package (smartfed pool package)
            path = shipped
        elif not built:
            log.info("building skill LoRA %s -> %s", skill, path)
            train_skill_lora(model_cfg, recipe, path, resume=True, progress=progress)
        out[skill] = path
    return out


SOURCE_PREFIX = "cpu-mini:"
"""Pool entries ``cpu-mini:<skill>[@<pool seed>]`` name a cpu-mini skill LoRA (pool seed 0 if
omitted), e.g. ``cpu-mini:skill.zh@1``."""


def parse_cpu_mini_source(source: str) -> tuple[str, int] | None:
    """Return ``(skill task name, pool seed)`` of a ``cpu-mini:`` pool entry, None for others.

    Raises:
        ConfigError: a ``cpu-mini:`` entry with an unknown skill or a seed that is not an integer.
    """
    if not source.startswith(SOURCE_PREFIX):
        return None
    body = source.removeprefix(SOURCE_PREFIX)
    skill, _, seed = body.partition("@")
    name = "cpu_mini." + skill.removeprefix("cpu_mini.")
    if name not in SKILL_STEPS:
        short = ", ".join(s.removeprefix("cpu_mini.") for s in SKILL_STEPS)
        raise ConfigError(
            f"--lora_pool entry {source!r}: unknown cpu-mini skill {skill!r}; choose one of {short}"
        )
    if seed and not seed.isdigit():
        raise ConfigError(
            f"--lora_pool entry {source!r}: the pool seed after '@' must be a non-negative "
            "integer, e.g. cpu-mini:skill.zh@1"
        )
    return name, int(seed or 0)


def expand_cpu_mini_sources(
    sources: Sequence[str], model_cfg: ModelConfig, progress: bool = False
) -> list[str]:
    """Replace every ``cpu-mini:<skill>[@<seed>]`` entry by its adapter dir; keep the others.

    The LoRA is the one :func:`ensure_cpu_mini_pool` caches for ``model_cfg`` (its model, dtype
    and ``cache_dir``) and that pool seed, or the one shipped with the package for that model in
    any dtype; a missing one is trained first (minutes on a CPU).

    Raises:
        ConfigError: a malformed ``cpu-mini:`` entry.
    """
    out: list[str] = []
    for source in sources:
        parsed = parse_cpu_mini_source(source)
        if parsed is None:
            out.append(source)
            continue
        skill, seed = parsed
        dirs = ensure_cpu_mini_pool(
            model_cfg,
            cache_dir=model_cfg.cache_dir,
            skills=[skill],
            seed=seed,
            progress=progress,
            shipped_any_dtype=True,
        )
        out.append(str(dirs[skill]))
    return out


def _simple_greedy(
    model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Batched greedy decoding, left padding (fallback without smartfed.eval.generate)."""
    texts = [render_prompt(tok, p) for p in prompts]
    outs: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tok(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            outs += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return outs


def greedy_outputs(
    model: Any, tok: Any, task: Any, examples: Sequence[Example], batch_size: int = 16
) -> list[str]:
    """Greedy outputs for ``examples``, cut at the task's stop strings."""
    prompts = [e.prompt for e in examples]
    try:
        from smartfed.eval.generate import generate
    except ImportError:
        raw = _simple_greedy(model, tok, prompts, task.max_new_tokens, batch_size)
    else:
        return list(
            generate(
                model, tok, prompts, task.max_new_tokens, task.stop, batch_size, progress=False
            )
        )
    cut = []
    for text in raw:
        for s in task.stop:
            if s and s in text:
                text = text[: text.index(s)]
        cut.append(text)
    return cut


def accuracy(
    model: Any, tok: Any, task_name: str, limit: int = 100, batch_size: int = 16
) -> dict[str, Any]:
    """Held-out accuracy (greedy, the task's own scorer) on the first ``limit`` eval rows."""
    task = resolve_task(task_name)
    examples = task.eval_examples()[:limit]
    model.eval()
    outs = greedy_outputs(model, tok, task, examples, batch_size)
    hits = [bool(task.score(o, e)) for o, e in zip(outs, examples, strict=True)]
    return {
        "task": task_name,
        "n": len(hits),
        "accuracy": sum(hits) / max(1, len(hits)),
        "samples": [
            {"prompt": e.prompt, "output": o, "gold": e.answer, "correct": h}
            for e, o, h in list(zip(examples, outs, hits, strict=True))[:3]
        ],
    }
