"""Command-line flags generated from :class:`smartfed.config.RunConfig` (flags come only from it).

Every leaf field becomes ``--<leaf>`` (the upstream README's spelling, e.g. ``--topk_experts``);
booleans get ``--x/--no-x``. Only flags the user typed override ``--config FILE.toml``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from smartfed.config import _SECTIONS, RunConfig, field_type


def add_config_flags(
    parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None
) -> None:
    """Add ``--config`` and one flag per RunConfig leaf (optionally only some sections)."""
    parser.add_argument("--config", metavar="FILE.toml", help="TOML config; flags override it")
    for name, cls in _SECTIONS.items():
        if sections is not None and name not in sections:
            continue
        group = parser.add_argument_group(f"{name} options")
        for f in dataclasses.fields(cls):
            _add_flag(group, name, f)
    top = parser.add_argument_group("run options")
    for f in dataclasses.fields(RunConfig):
        if f.name in _SECTIONS:
            continue
        _add_flag(top, None, f)


def _add_flag(group: Any, section: str | None, f: dataclasses.Field[Any]) -> None:
    typ = field_type(section, f.name)
    default = f.default if f.default is not dataclasses.MISSING else None
    help_text = f"(default: {default!r})"
    dest = f"cfg__{section}__{f.name}" if section else f"cfg____{f.name}"
    if typ is bool:
        group.add_argument(
            f"--{f.name}",
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_text,
        )
    else:
        group.add_argument(f"--{f.name}", dest=dest, type=typ, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Resolve ``--config`` then the typed flags into one validated RunConfig.

    Raises:
        ConfigError: bad TOML, unknown keys or invalid values.
    """
    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("cfg__") or value is None:
            continue
        _, section, leaf = dest.split("__", 2)
        overrides[f"{section}.{leaf}" if section else leaf] = value
    if getattr(args, "config", None):
        return RunConfig.from_toml(args.config, overrides)
    return RunConfig.from_flat(overrides, base=base)
