"""``smartfed report RUN_DIR``: write report.md and PNG plots for a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="plots and a Markdown summary of a run",
        description="Write report.md, metrics.png, quotas.png and expert_usage.png for a run.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's --output_dir")
    parser.add_argument(
        "--out",
        default=None,
        help="write here instead of RUN_DIR (refuses to replace report files already there)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace report.md and plots already in --out"
    )
    parser.set_defaults(handler=run)


def _refuse_existing(out: Path) -> None:
    """``--out`` must not hold report files already (the user's, or another run's report).

    Raises:
        ConfigError: report.md or a plot exists there.
    """
    from smartfed.errors import ConfigError
    from smartfed.report.markdown import PLOTS

    for name in ("report.md", *PLOTS):
        if (out / name).exists():
            raise ConfigError(
                f"--out {out} already holds {name}; pass --force to replace it or choose "
                "another --out"
            )


def run(args: argparse.Namespace) -> int:
    """Write the report and print the paths written."""
    from smartfed.report import write_report

    if args.out is not None and not args.force:
        _refuse_existing(Path(args.out))
    result = write_report(args.run_dir, args.out)
    print(result.markdown)
    for image in result.images:
        print(image)
    return 0
