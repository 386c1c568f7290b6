"""``smartfed demo``: the quickstart ``make demo`` runs (the ``demo`` preset of the bench)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    demo = subparsers.add_parser(
        "demo",
        help="the quickstart: build the cpu-mini pool, federate, evaluate, report",
        description="Build the cpu-mini skill LoRAs on the embedded SmolLM2, run SmartFed, FedIT "
        "and merging federatedly (Flower simulation) on the Chinese-code skill-gap composite, "
        "write a report.",
    )
    demo.add_argument("--model_name_or_path", default="default")
    demo.add_argument("--output_dir", default="runs/demo")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """The quick end-to-end job ``make demo`` runs."""
    from pathlib import Path

    from smartfed.cli.bench import progress
    from smartfed.config import ModelConfig
    from smartfed.recipes.bench import run_bench

    out = Path(args.output_dir)
    print(
        "smartfed demo: building the cpu-mini skill LoRAs (cached after the first run), then "
        "SmartFed, FedIT and merging on cpu_mini.zh_code_gap through Flower's simulation",
        flush=True,
    )
    result = run_bench(
        "demo",
        out,
        out / "cpu-mini-demo.json",
        ModelConfig(model_name_or_path=args.model_name_or_path),
        on_run=progress,
    )
    print(result.results_path.with_suffix(".md").read_text(encoding="utf-8"))
    print(f"run directories: {out}/  results: {result.results_path} ({result.seconds:.0f} s)")
    print(f"see one run: smartfed report {out}/cpu_mini.zh_code_gap/main/smartfed/seed0")
    return 1 if result.failed else 0
