"""``smartfed pool train``: train a skill LoRA with PEFT and register it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smartfed.cli.config_flags import add_field_flags


def register(actions: Any) -> None:
    """Add ``smartfed pool train`` to the ``pool`` action subparsers."""
    p = actions.add_parser(
        "train",
        help="train a new skill LoRA with PEFT on a dataset and register it",
        description="Train one LoRA with PEFT (loss on the responses only) and write a standard "
        "PEFT adapter folder; optionally register it in the pool registry. Interrupted runs "
        "continue with --resume.",
    )
    add_field_flags(p, ("model_name_or_path", "dtype"))
    p.add_argument(
        "--dataset",
        required=True,
        metavar="DATA",
        help="a local .json/.jsonl/.parquet file (Alpaca instruction/input/output, chat "
        "messages, or prompt/response rows), a registered task, or a hub dataset id "
        "owner/name[:split] (the same loader as `smartfed train --dataset`; docs/data.md)",
    )
    p.add_argument(
        "--data_dir",
        default="",
        metavar="DIR",
        help="data folder of the file-backed registered tasks (docs/data.md)",
    )
    p.add_argument("--rank", type=int, required=True, metavar="R", help="LoRA rank r")
    p.add_argument(
        "--alpha", type=float, default=0.0, metavar="X", help="LoRA alpha (default 0 = 2 * rank)"
    )
    p.add_argument(
        "--target_modules",
        default="q_proj,v_proj",
        metavar="NAMES",
        help="comma-separated module names the LoRA wraps (default q_proj,v_proj)",
    )
    p.add_argument(
        "--max_steps", type=int, default=200, metavar="N", help="optimizer steps (default 200)"
    )
    p.add_argument(
        "--learning_rate",
        type=float,
        default=2e-3,
        metavar="LR",
        help="AdamW learning rate, constant (default 2e-3)",
    )
    p.add_argument(
        "--batch_size", type=int, default=8, metavar="N", help="examples per step (default 8)"
    )
    p.add_argument(
        "--max_len",
        type=int,
        default=128,
        metavar="N",
        help="tokens per row, prompt cut from the left (default 128)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seeds LoRA init, batch order and the held-out split (default 0)",
    )
    p.add_argument(
        "--checkpoint_every",
        type=int,
        default=50,
        metavar="N",
        help="steps between resume checkpoints (default 50)",
    )
    p.add_argument(
        "--output_dir", required=True, metavar="DIR", help="PEFT adapter directory to write"
    )
    p.add_argument(
        "--name",
        default="",
        metavar="NAME",
        help="register the adapter under NAME in the pool registry",
    )
    p.add_argument(
        "--registry",
        default="",
        metavar="FILE.json",
        help="registry JSON (default: <cache>/registry.json, cache = $SMARTFED_CACHE, else "
        "$XDG_CACHE_HOME/smartfed, else ~/.cache/smartfed)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/.resume")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="torch CPU threads (0: torch default; 1 on a shared box)",
    )
    p.set_defaults(handler=_cmd_train)


def _check_name(name: str, registry: str) -> None:
    import re

    from smartfed.errors import ConfigError
    from smartfed.pool.registry import load_registry

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise ConfigError(f"--name {name!r} is invalid: use letters, digits, '_', '-' or '.'")
    load_registry(registry)


PEFT_WRITES = ("README.md", "adapter_config.json", "adapter_model.safetensors")
"""Files ``PeftModel.save_pretrained`` writes into ``--output_dir`` (README.md: its model card)."""


def _check_user_files(out: Path) -> None:
    """Refuse a folder holding files PEFT would overwrite that an earlier pool train did not write.

    Raises:
        ConfigError: e.g. the user's own README.md in ``--output_dir``.
    """
    from smartfed.errors import ConfigError

    if (out / "training_record.json").is_file() or (out / ".resume").is_dir():
        return  # our own earlier output (refused or resumed by train_skill_lora)
    taken = [name for name in PEFT_WRITES if (out / name).exists()]
    if taken:
        raise ConfigError(
            f"--output_dir {out} already holds {taken[0]}, which saving the adapter would "
            "overwrite; choose a new or empty directory"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    from smartfed.config import ModelConfig
    from smartfed.train.skill_lora import SkillLoraRecipe, train_skill_lora

    if args.name:  # fail on a bad name or registry before spending minutes on training
        _check_name(args.name, args.registry)
    _check_user_files(Path(args.output_dir).expanduser())
    if args.threads < 0:
        from smartfed.errors import ConfigError

        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    recipe = SkillLoraRecipe(
        dataset=args.dataset,
        rank=args.rank,
        alpha=args.alpha,
        target_modules=targets,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        max_len=args.max_len,
        checkpoint_every=args.checkpoint_every,
        data_dir=args.data_dir,
    )
    model_cfg = ModelConfig(model_name_or_path=args.model_name_or_path, dtype=args.dtype)
    record = train_skill_lora(
        model_cfg, recipe, args.output_dir, resume=args.resume, progress=not args.no_progress
    )
    print(
        f"trained {args.dataset}: {record['steps']} steps in {record['seconds']:.0f} s, "
        f"train loss {record['first_train_loss']:.3f} -> {record['final_train_loss']:.3f}, "
        f"held-out loss {record['initial_heldout_loss']:.3f} -> {record['heldout_loss']:.3f}; "
        f"adapter in {args.output_dir}"
    )
    if args.name:
        from smartfed.pool.registry import add_entry, registry_path

        entry = add_entry(args.name, str(args.output_dir), args.registry)
        print(f"registered {entry.name} -> {entry.source} in {registry_path(args.registry)}")
    return 0
