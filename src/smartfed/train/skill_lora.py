"""Train one skill LoRA with PEFT (``smartfed pool train``): loss on responses only, resumable.

The output directory is a standard PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` loads as is, plus
``training_record.json``. While training, a checkpoint (LoRA weights, optimizer, step, RNG states,
losses) is written atomically to ``<output_dir>/.resume`` every ``checkpoint_every`` steps;
``resume=True`` continues from it with the same batches it would have seen.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from smartfed.config import ModelConfig
from smartfed.data.example import Example
from smartfed.data.formatting import EncodedExample, collate, encode_for_training
from smartfed.errors import CheckpointError, ConfigError, DataError
from smartfed.files import atomic_write, atomic_write_json
from smartfed.log import get_logger

log = get_logger(__name__)

RESUME_DIR = ".resume"
RESUME_FILE = "state.pt"
RECORD_FILE = "training_record.json"
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class SkillLoraRecipe:
    """Everything that decides a skill LoRA (hashed by the cpu-mini pool cache).

    Attributes:
        dataset: a registered task, a local ``.json``/``.jsonl``/``.parquet`` file or a hub
            dataset id (rows: Alpaca fields, chat ``messages`` or prompt/response).
        rank: LoRA rank r.
        alpha: LoRA alpha (scaling alpha / r); 0 means 2 * rank [D].
        target_modules: module names the LoRA wraps [D: q_proj, v_proj as in the prototype].
        max_steps: optimizer steps.
        learning_rate: AdamW learning rate, constant [D: 2e-3 from the prototype].
        batch_size: rows per step.
        seed: seeds LoRA init, batch order and the held-out split of a file dataset.
        max_len: tokens per row (prompt cut from the left).
        heldout_rows: rows of the held-out split used for the held-out loss.
        checkpoint_every: steps between resume checkpoints (0 = only at the end).
        data_dir: data folder for file-backed registered tasks ("" = task default).
    """

    dataset: str
    rank: int = 8
    alpha: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    max_steps: int = 200
    learning_rate: float = 2e-3
    batch_size: int = 8
    seed: int = 0
    max_len: int = 128
    heldout_rows: int = 100
    checkpoint_every: int = 50
    data_dir: str = ""

    def __post_init__(self) -> None:
        checks = [
            (bool(self.dataset), "dataset", "name a registered task, a data file or a hub id"),
            (self.rank > 0, "rank", "must be > 0"),
            (self.alpha >= 0, "alpha", "must be >= 0"),
            (
                bool(self.target_modules),
                "target_modules",
                "name at least one module, e.g. q_proj,v_proj",
            ),
            (self.max_steps > 0, "max_steps", "must be > 0"),
            (0 < self.learning_rate < 1, "learning_rate", "must be in (0, 1)"),
            (self.batch_size > 0, "batch_size", "must be > 0"),
            (self.max_len > 8, "max_len", "must be > 8"),
            (self.heldout_rows >= 0, "heldout_rows", "must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise ConfigError(f"pool train: invalid --{name}={getattr(self, name)!r}: {fix}")

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used (2 * rank when ``alpha`` is 0) [D]."""
        return self.alpha or 2.0 * self.rank

    def key(self) -> dict[str, Any]:
        """Return the recipe as a JSON-able dict (stored in checkpoints and records)."""
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def load_dataset(recipe: SkillLoraRecipe) -> tuple[list[Example], list[Example]]:
    """Return ``(train, heldout)`` rows of ``recipe.dataset`` (the loader ``smartfed train`` uses).

    A task gives its train and eval splits; a file or hub dataset is shuffled with ``recipe.seed``
    and its last 5% (at least one row) held out [D].

    Raises:
        DataError: unknown dataset, unreadable file or too few rows.
    """
    from smartfed.data.source import load_examples

    task = _registered(recipe.dataset)
    if task is None:
        rows, _ = load_examples(recipe.dataset, recipe.data_dir)
        rows = [e for e in rows if e.response]
        if len(rows) < 2:
            raise DataError(
                f"--dataset {recipe.dataset}: needs at least 2 rows with a response "
                f"(one is held out), has {len(rows)}"
            )
        random.Random(recipe.seed).shuffle(rows)
        n_out = max(1, len(rows) // 20)
        return rows[:-n_out], rows[-n_out:]
    data_dir = recipe.data_dir or None
    train = task.train_examples(data_dir)
    try:
        heldout = task.eval_examples(data_dir)
    except DataError:
        heldout = []
    heldout = [e for e in heldout if e.response]
    if not train:
        raise DataError(f"task {recipe.dataset!r} has no training rows")
    return train, heldout


def _registered(name: str) -> Any:
    from smartfed.data.local import is_local_file
    from smartfed.data.tasks import list_tasks

    if is_local_file(name) or name not in list_tasks():
        return None
    return resolve_task(name)


def resolve_task(name: str) -> Any:
    """Return a registered task by name (built-in or from an installed extension).

    Raises:
        DataError: unknown task.
    """
    from smartfed.data.tasks import get_task

    return get_task(name)


def batch_indices(n_rows: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Rows of batch ``step``: epochs are seeded permutations, so any step is reproducible."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n_rows)
        perm = torch.randperm(
            n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
        )
        out.append(int(perm[offset]))
    return out


def heldout_loss(
    model: Any, encoded: Sequence[EncodedExample], pad_id: int, batch_size: int = 16
) -> float:
    """Mean per-token loss over response tokens of ``encoded`` (nan when empty)."""
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = collate(encoded[i : i + batch_size], pad_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            total += float(out.loss) * n
            tokens += n
    return total / tokens if tokens else math.nan


def _state_path(output_dir: Path) -> Path:
    return output_dir / RESUME_DIR / RESUME_FILE


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, recipe: SkillLoraRecipe) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is the same user-facing error
        raise CheckpointError(
            f"{path}: unreadable resume checkpoint ({type(err).__name__}); delete it to restart"
        ) from err
    if state.get("recipe") != recipe.key():
        raise CheckpointError(
            f"{path} was written by another recipe; use the same flags or a new --output_dir"
        )
    return state


def _save_adapter(peft_model: Any, output_dir: Path) -> None:
    """Save the PEFT adapter in a temp dir, then move each file into ``output_dir`` (atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=output_dir))
    try:
        peft_model.save_pretrained(tmp)
        for item in tmp.iterdir():
            os.replace(item, output_dir / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_peft(model: Any, recipe: SkillLoraRecipe) -> Any:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.seed)
    cfg = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(recipe.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as err:
        raise ConfigError(
            f"--target_modules {','.join(recipe.target_modules)}: {str(err).splitlines()[0]}"
        ) from err


def train_skill_lora(
    model_cfg: ModelConfig,
    recipe: SkillLoraRecipe,
    output_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train a LoRA on ``recipe.dataset`` and write a PEFT adapter + ``training_record.json``.

    Args:
        model_cfg: the base model (``default`` = embedded SmolLM2); ``dtype auto`` is resolved
            here (on ``resume``: the dtype the interrupted training used), and the record
            holds the concrete dtype.
        recipe: data and optimisation settings.
        output_dir: adapter directory (created).
        resume: continue from ``output_dir/.resume`` if present.
        progress: show a tqdm bar.
        on_step: called with ``(step, loss)`` after each optimizer step (tests use it to interrupt).

    Returns:
        The training record (also written to ``output_dir/training_record.json``).

    Raises:
        SmartFedError: bad data, flags, model or checkpoint (one-line messages).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from smartfed.model.base import load_base_model

    out = Path(output_dir).expanduser()
    if (out / _ADAPTER_FILES[0]).exists() and not resume and not _state_path(out).exists():
        raise ConfigError(
            f"--output_dir {out} already holds an adapter; choose a new directory or delete it"
        )
    train, heldout = load_dataset(recipe)
    state = _load_state(_state_path(out), recipe) if resume and _state_path(out).exists() else None
    from smartfed.model.dtype import resolve_model_config  # auto: the dtype a resume recorded

    model_cfg = resolve_model_config(model_cfg, recorded=(state or {}).get("dtype"))
    model, tok = load_base_model(model_cfg)
    peft_model = _build_peft(model, recipe)
    enc_train = [encode_for_training(tok, e, recipe.max_len) for e in train]
    enc_held = [encode_for_training(tok, e, recipe.max_len) for e in heldout[: recipe.heldout_rows]]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    out.mkdir(parents=True, exist_ok=True)
    start, losses, elapsed, initial_held = 0, [], 0.0, None
    if state is not None:
        set_peft_model_state_dict(peft_model, state["lora"])
        optim.load_state_dict(state["optim"])
        random.setstate(state["rng_python"])
        torch.set_rng_state(state["rng_torch"])
        start, losses, elapsed, initial_held = (
            state["step"],
            state["losses"],
            state["elapsed"],
            state["initial_heldout"],
        )
        log.info("resuming %s from step %d", out, start)
    elif resume:
        log.info("no checkpoint in %s: starting from step 0", out / RESUME_DIR)
    if initial_held is None:
        initial_held = heldout_loss(peft_model, enc_held, tok.pad_token_id)

    def checkpoint(step: int, spent: float) -> None:
        _save_state(
            _state_path(out),
            {
                "step": step,
                "recipe": recipe.key(),
                "dtype": model_cfg.dtype,
                "losses": losses,
                "elapsed": spent,
                "initial_heldout": initial_held,
                "lora": get_peft_model_state_dict(peft_model),
                "optim": optim.state_dict(),
                "rng_python": random.getstate(),
                "rng_torch": torch.get_rng_state(),
            },
        )

    t0 = time.perf_counter() - elapsed
    bar = _progress(range(start, recipe.max_steps), progress, recipe)
    peft_model.train()
    for step in bar:
        batch = collate(
            [
                enc_train[i]
                for i in batch_indices(len(enc_train), recipe.batch_size, recipe.seed, step)
            ],
            tok.pad_token_id,
        )
        loss = peft_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        if progress:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (
            recipe.checkpoint_every
            and (step + 1) % recipe.checkpoint_every == 0
            and step + 1 < recipe.max_steps
        ):
            checkpoint(step + 1, time.perf_counter() - t0)
        if on_step is not None:
            on_step(step + 1, losses[-1])
    seconds = time.perf_counter() - t0
    final_held = heldout_loss(peft_model, enc_held, tok.pad_token_id)
    _save_adapter(peft_model, out)
    record = _record(
        model_cfg, recipe, train, enc_held, losses, initial_held, final_held, seconds, params, start
    )
    atomic_write_json(out / RECORD_FILE, record)
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    return record


def _progress(steps: range, enabled: bool, recipe: SkillLoraRecipe) -> Any:
    if not enabled:
        return steps
    from tqdm.auto import tqdm

    return tqdm(
        steps,
        total=recipe.max_steps,
        initial=steps.start,
        desc=f"pool train {recipe.dataset}",
        unit="step",
    )


def _record(
    model_cfg: ModelConfig,
    recipe: SkillLoraRecipe,
    train: list[Example],
    enc_held: list[EncodedExample],
    losses: list[float],
    initial_held: float,
    final_held: float,
    seconds: float,
    params: list[torch.Tensor],
    resumed_from: int,
) -> dict[str, Any]:
    from smartfed.meta import run_meta

    tail = losses[-10:]
    return {
        "dataset": recipe.dataset,
        "rows": len(train),
        "heldout_rows": len(enc_held),
        "steps": len(losses),
        "resumed_from_step": resumed_from,
        "seed": recipe.seed,
        "base_model": model_cfg.model_name_or_path,
        "dtype": model_cfg.dtype,
        "recipe": recipe.key(),
        "trainable_params": int(sum(p.numel() for p in params)),
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "initial_heldout_loss": initial_held,
        "heldout_loss": final_held,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, len(losses)), 4),
        "train_losses": losses,
        "meta": run_meta(),
    }
