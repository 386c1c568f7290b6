"""``smartfed pool package``: rebuild the cpu-mini skill LoRAs shipped with the package."""

from __future__ import annotations

import argparse
from typing import Any

from smartfed.cli.config_flags import add_field_flags


def register(actions: Any) -> None:
    """Add ``smartfed pool package`` to the ``pool`` action subparsers."""
    p = actions.add_parser(
        "package",
        help="rebuild the skill LoRAs shipped with the package (the demo's pool)",
        description="Train (or take from the cache) the cpu-mini skill LoRAs the demo and "
        "`flwr run .` route over, copy them into smartfed_bench/packaged_pools/cpu-mini/ and "
        "record recipe, recipe hash and sha256 in its manifest.json. About 15 minutes on 2 "
        "CPU cores when nothing is cached.",
    )
    add_field_flags(p, ("model_name_or_path", "dtype", "cache_dir"))
    p.add_argument(
        "--skills",
        default="",
        metavar="NAMES",
        help="comma-separated cpu-mini skills (default: the demo task's, "
        "cpu_mini.skill.zh,cpu_mini.skill.code)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="LoRA seed (default 0)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_package)


def _cmd_package(args: argparse.Namespace) -> int:
    from smartfed.config import ModelConfig
    from smartfed_bench.demo import package_pool
    from smartfed_bench.packaged import WEIGHTS, file_sha256

    skills = tuple(s.strip() for s in args.skills.split(",") if s.strip())
    model_cfg = ModelConfig(
        model_name_or_path=args.model_name_or_path, dtype=args.dtype, cache_dir=args.cache_dir
    )
    for path in package_pool(model_cfg, skills, args.seed, progress=not args.no_progress):
        size = (path / WEIGHTS).stat().st_size / 1e6
        print(f"{path} ({size:.1f} MB, sha256 {file_sha256(path / WEIGHTS)[:16]}...)")
    return 0
