"""``smartfed train``: a federated SmartFed run (flags generated from RunConfig, SPEC.md §2.2)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from smartfed.cli.config_flags import add_config_flags, config_from_args

EPILOG = (
    "examples:\n"
    "  smartfed train --model_name_or_path default --lora_pool zh_chat,math --task math23k \\\n"
    "      --num_clients 20 --sample_clients 2 --num_rounds 20 --local_steps 10 \\\n"
    "      --batch_size 16 --learning_rate 5e-4 --topk_experts 32 --enable_eeqa \\\n"
    "      --output_dir runs/zh_math\n"
    "  smartfed train --config run.toml --num_rounds 30 --resume   # continue a run\n"
)


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="federated SmartFed training (Flower simulation or deployment)",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Resolve the config and run the job; print the summary."""
    from smartfed.recipes.train import run_train

    cfg = config_from_args(args)
    summary = run_train(cfg)
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {cfg.output_dir}")
    return 0
