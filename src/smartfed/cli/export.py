"""``smartfed export RUN_DIR --merged --output_dir DIR``: a plain PEFT LoRA from a SmartFed run."""

from __future__ import annotations

import argparse
import json

from smartfed.errors import ConfigError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="fold a SmartFed run's routed experts into one PEFT LoRA adapter",
        description="Average each expert's routing weight over a calibration set (the run's "
        "training rows), fold the experts into an exact LoRA and write it in PEFT's format, with "
        "export_report.json (held-out loss of the routed model vs the exported LoRA).",
    )
    parser.add_argument(
        "run_dir", help="a `smartfed train` --output_dir (smartfed / smartfed_no_eeqa)"
    )
    parser.add_argument(
        "--merged",
        action="store_true",
        help="fold with the average routing weights (the only export mode)",
    )
    parser.add_argument("--output_dir", required=True, help="new or empty folder for the adapter")
    parser.add_argument(
        "--calibration_limit",
        type=int,
        default=64,
        help="training rows used to average the routing (default 64)",
    )
    parser.add_argument(
        "--eval_limit",
        type=int,
        default=0,
        help="also compare task accuracy on the first N eval examples (0 = off)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="rows per forward pass")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Export and print the report."""
    from smartfed.io.export import export_merged

    if not args.merged:
        raise ConfigError("pass --merged (folding with average routing is the only export mode)")
    report = export_merged(
        args.run_dir,
        args.output_dir,
        calibration_limit=args.calibration_limit,
        eval_limit=args.eval_limit,
        batch_size=args.batch_size,
    )
    print(json.dumps(report, indent=2))
    return 0
