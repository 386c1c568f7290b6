"""``smartfed pool train``: train a skill LoRA with PEFT and register it (SPEC.md §2.2)."""

from __future__ import annotations

import argparse
from typing import Any


def register(actions: Any) -> None:
    """Add ``smartfed pool train`` to the ``pool`` action subparsers."""
    p = actions.add_parser(
        "train", help="train a new skill LoRA with PEFT on a dataset and register it"
    )
    p.add_argument(
        "--model_name_or_path", default="default", help="base model (hub id, dir, .gguf, default)"
    )
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    p.add_argument(
        "--dataset",
        required=True,
        help="registered task name or a .json/.jsonl {prompt,response} file",
    )
    p.add_argument("--data_dir", default="", help="data folder for file-backed registered tasks")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=0.0, help="LoRA alpha (default 2 * rank)")
    p.add_argument("--target_modules", default="q_proj,v_proj", help="comma-separated module names")
    p.add_argument("--max_steps", type=int, default=200)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument(
        "--max_len", type=int, default=128, help="tokens per row (prompt cut from the left)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint_every", type=int, default=50, help="steps between resume checkpoints"
    )
    p.add_argument("--output_dir", required=True, help="PEFT adapter directory to write")
    p.add_argument(
        "--name", default="", help="register the adapter under NAME in the pool registry"
    )
    p.add_argument(
        "--registry", default="", help="registry JSON (default: $SMARTFED_CACHE/registry.json)"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/.resume")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
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


def _cmd_train(args: argparse.Namespace) -> int:
    from smartfed.config import ModelConfig
    from smartfed.train.skill_lora import SkillLoraRecipe, train_skill_lora

    if args.name:  # fail on a bad name or registry before spending minutes on training
        _check_name(args.name, args.registry)
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
