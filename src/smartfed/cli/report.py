"""``smartfed report RUN_DIR``: write report.md and PNG plots for a run directory."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="plots and a Markdown summary of a run",
        description="Write report.md, metrics.png, quotas.png and expert_usage.png for a run.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's --output_dir")
    parser.add_argument("--out", default=None, help="write here instead of RUN_DIR")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print the paths written."""
    from smartfed.report import write_report

    result = write_report(args.run_dir, args.out)
    print(result.markdown)
    for image in result.images:
        print(image)
    return 0
