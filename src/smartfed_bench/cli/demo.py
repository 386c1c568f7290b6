"""``smartfed demo``: the quickstart ``make demo`` runs (:mod:`smartfed_bench.demo`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from smartfed.cli.config_flags import add_field_flags


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    demo = subparsers.add_parser(
        "demo",
        help="the quickstart: SmartFed, FedIT and merging on a small task, a table at the end",
        description="Route over two small skill LoRAs of the embedded SmolLM2 (shipped with the "
        "package), run SmartFed, FedIT and a merge federatedly (Flower simulation, 3 short "
        "rounds each) on the Chinese-code skill-gap task, print a table. Finished runs in "
        "--output_dir are reused; delete it to rerun.",
    )
    add_field_flags(demo, ("model_name_or_path", "dtype", "cache_dir"))
    demo.add_argument(
        "--output_dir",
        default="runs/demo",
        metavar="DIR",
        help="where the three run directories, demo.md and demo.json go (default: runs/demo)",
    )
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """The quick end-to-end job ``make demo`` runs."""
    from smartfed.config import ModelConfig
    from smartfed_bench import demo

    t0 = time.perf_counter()
    print(
        f"smartfed demo: SmartFed, FedIT and merge on {demo.TASK} through Flower's simulation "
        f"(results in {args.output_dir}/)",
        flush=True,
    )
    model_cfg = ModelConfig(
        model_name_or_path=args.model_name_or_path, dtype=args.dtype, cache_dir=args.cache_dir
    )
    runs = demo.run_demo(args.output_dir, model_cfg, say=lambda line: print(line, flush=True))
    print()
    print(demo.render_table(runs))
    print()
    print(f"done in {time.perf_counter() - t0:.0f} s; table: {args.output_dir}/demo.md")
    print(f"one run in detail: smartfed report {runs[0].run_dir}")
    return 0
