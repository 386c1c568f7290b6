"""``smartfed`` console entry point: one table of subcommands, one error boundary.

Each subcommand lives in its own module under ``smartfed.cli`` exposing
``register(subparsers) -> None``; the parser it adds sets ``handler(args) -> int``. Installed
extensions add subcommands the same way through ``smartfed.commands`` entry points
(:mod:`smartfed.plugins`; ``smartfed bench`` and ``smartfed demo`` come from ``smartfed_bench``).
Heavy imports (torch, transformers, flwr) happen inside handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from smartfed.errors import SmartFedError
from smartfed.log import configure_logging

# subcommand -> module; the module's register() adds the parser.
COMMANDS: dict[str, str] = {
    "eval": "smartfed.cli.eval",
    "pool": "smartfed.cli.pool",
    "report": "smartfed.cli.report",
    "train": "smartfed.cli.train",
    "deploy-local": "smartfed.cli.deploy_local",
    "export": "smartfed.cli.export",
}

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``smartfed: error: ...`` line, exit 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        fail(f"{message} (see `{self.prog} --help`)")


def fail(message: str) -> NoReturn:
    """Print one error line to stderr and exit with status 2."""
    print(f"smartfed: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def os_error_line(err: OSError) -> str:
    """One line for a file-system error: the path, what the OS said and what to do."""
    path = err.filename if err.filename is not None else "a path"
    extra = f" -> {err.filename2}" if getattr(err, "filename2", None) else ""
    what = err.strerror or type(err).__name__
    return (
        f"{path}{extra}: {what}; check that the folders on this path exist, are folders (not "
        "files) and are writable, or choose another path"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand (built-in and extensions').

    Raises:
        PluginError: an installed extension's command cannot be loaded.
    """
    from smartfed.plugins import COMMANDS as EXTENSION_COMMANDS
    from smartfed.plugins import load

    parser = OneLineParser(
        prog="smartfed",
        description="SmartFed: federated fine-tuning of LLMs by routing over rank-wise experts of "
        "existing LoRAs (arXiv 2512.00902).",
        epilog="`smartfed COMMAND --help` shows every option of a command. Installed by `make "
        "install` into .venv: call .venv/bin/smartfed or `source .venv/bin/activate` first.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the versions of smartfed and its stack"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineParser
    )
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    for _, register_extension in load(EXTENSION_COMMANDS):
        register_extension(subparsers)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: one unwrapped line, computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=str(kwargs.get("help", "")))

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(version_line())
        parser.exit(0)


def version_line() -> str:
    """``smartfed X.Y.Z (python A.B.C, torch ..., transformers ..., peft ..., flwr ...)``."""
    import platform

    from smartfed import __version__
    from smartfed.meta import package_versions

    deps = package_versions(("torch", "transformers", "peft", "flwr"))
    parts = [f"python {platform.python_version()}", *(f"{k} {v}" for k, v in deps.items())]
    return f"smartfed {__version__} ({', '.join(parts)})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status."""
    try:
        parser = build_parser()
    except SmartFedError as err:  # an extension that cannot be loaded
        fail(str(err).splitlines()[0])
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USER_ERROR
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    configure_logging(level)
    try:
        return int(args.handler(args) or 0)
    except SmartFedError as err:
        fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except OSError as err:  # a path that is a file, under a file, read-only, full disk, ...
        fail(os_error_line(err))
    except UnicodeDecodeError as err:
        fail(f"a file is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8")
    except KeyboardInterrupt:
        print("smartfed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
