"""``smartfed export RUN_DIR --merged --output_dir DIR``: a plain PEFT LoRA from a SmartFed run."""

from __future__ import annotations

import argparse

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
        metavar="N",
        help="training rows used to average the routing (default 64)",
    )
    parser.add_argument(
        "--compare_accuracy",
        type=int,
        default=0,
        metavar="N",
        help="also compare task accuracy of run and adapter on the first N eval examples "
        "(default 0 = off; the held-out loss is always compared)",
    )
    parser.add_argument(
        "--eval_batch_size",
        type=int,
        default=8,
        metavar="N",
        help="rows per forward pass when averaging the routing and comparing (default 8)",
    )
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
        eval_limit=args.compare_accuracy,
        batch_size=args.eval_batch_size,
    )
    print(
        f"exported {report['method']} run {report['run_dir']} -> {report['output_dir']}: "
        f"one PEFT LoRA of total rank {report['total_rank']} over {len(report['ranks'])} matrices"
    )
    print(
        f"held-out loss ({report['loss_on']} rows, n={report['eval_rows']}): "
        f"{report['loss_routed']:.4f} run model vs {report['loss_exported']:.4f} exported"
    )
    for key, value in sorted(report.items()):
        if key.endswith("_exported") and not key.startswith("loss") and value is not None:
            name = key.removesuffix("_exported")
            routed = report.get(name + "_routed", float("nan"))
            print(
                f"{name} on {report.get('eval_task')} (n={report.get('eval_n')}): "
                f"{routed:.4f} run model vs {value:.4f} exported"
            )
    print(
        f"load it: AutoPeftModelForCausalLM.from_pretrained({str(report['output_dir'])!r}); "
        "model card README.md, every number in export_report.json"
    )
    return 0
