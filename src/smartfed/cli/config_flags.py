"""Command-line flags generated from :class:`smartfed.config.RunConfig` (flags come only from it).

Every leaf field becomes ``--<leaf>`` (the upstream README's spelling, e.g. ``--topk_experts``);
booleans get ``--x/--no-x``. Only flags the user typed override ``--config FILE.toml``. The help
text of each flag is the field's docstring in :mod:`smartfed.config` (one source for ``--help``,
the TOML keys and docs), with its choices and default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import re
from typing import Any, get_args, get_type_hints

from smartfed.config import _SECTIONS, RunConfig, field_type

METAVARS: dict[str, str] = {
    "model_name_or_path": "MODEL",
    "device": "DEVICE",
    "cache_dir": "DIR",
    "lora_pool": "LORAS",
    "registry": "FILE.json",
    "partition_by": "COLUMN",
    "country_iso_code": "ISO3",
    "superlink": "HOST:PORT",
    "root_certificates": "FILE.pem",
    "method": "METHOD",
    "task": "TASK",
    "dataset": "DATA",
    "data_dir": "DIR",
    "eval_task": "TASK",
    "output_dir": "DIR",
}
"""Readable metavars of string flags (ints show ``N``, floats ``X``, literals their choices)."""

_DROP = re.compile(r"\s*\((?:see )?SPEC\.md[^)]*\)|\s*SPEC\.md §[\d.]+,?")


@functools.cache
def field_docs(cls: type[Any]) -> dict[str, str]:
    """Return ``{field name: docstring}`` for a config dataclass (the string after each field).

    Whitespace is collapsed to one line; internal references are dropped.
    """
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            text = " ".join(node.value.value.split()).replace("``", "`")
            docs[prev.target.id] = _DROP.sub("", text)
    return docs


def choices_of(owner: type[Any], leaf: str) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` field, else None."""
    args = get_args(get_type_hints(owner)[leaf])
    if args and all(isinstance(a, str) for a in args):
        return tuple(args)
    return None


def add_config_flags(
    parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None
) -> None:
    """Add ``--config`` and one flag per RunConfig leaf (optionally only some sections)."""
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML config (sections [model], [pool], ... with the keys below); flags override it",
    )
    for name, cls in _SECTIONS.items():
        if sections is not None and name not in sections:
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        group = parser.add_argument_group(f"{name} options", _DROP.sub("", doc))
        for f in dataclasses.fields(cls):
            _add_flag(group, name, cls, f)
    if sections is None:
        top = parser.add_argument_group("run options")
        for f in dataclasses.fields(RunConfig):
            if f.name not in _SECTIONS:
                _add_flag(top, None, RunConfig, f)


def _add_flag(group: Any, section: str | None, owner: type[Any], f: dataclasses.Field[Any]) -> None:
    typ = field_type(section, f.name)
    help_text = _help(owner, f)
    dest = f"cfg__{section}__{f.name}" if section else f"cfg____{f.name}"
    if typ is bool:
        group.add_argument(
            f"--{f.name}",
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_text,
        )
        return
    choices = choices_of(owner, f.name) or _dynamic_choices(f.name)
    metavar = None if choices else _metavar(f.name, typ)
    group.add_argument(
        f"--{f.name}",
        dest=dest,
        type=typ,
        default=None,
        choices=choices,
        metavar=metavar,
        help=help_text,
    )


def add_field_flags(parser: argparse.ArgumentParser, leaves: tuple[str, ...]) -> None:
    """Add ``--<leaf>`` for some RunConfig leaves as plain flags (``args.<leaf>``, the config's
    default and docstring), for commands that are not a whole run (demo, eval, pool train)."""
    from smartfed.config import leaf_index

    index = leaf_index()
    for leaf in leaves:
        owner = _SECTIONS[index[leaf]]
        f = next(x for x in dataclasses.fields(owner) if x.name == leaf)
        typ = field_type(index[leaf], leaf)
        choices = choices_of(owner, leaf) or _dynamic_choices(leaf)
        parser.add_argument(
            f"--{leaf}",
            type=typ,
            default=f.default,
            choices=choices,
            metavar=None
            if choices
            else METAVARS.get(leaf, {int: "N", float: "X"}.get(typ, "TEXT")),
            help=_help(owner, f),
        )


def _metavar(leaf: str, typ: type[Any]) -> str:
    return METAVARS.get(leaf, {int: "N", float: "X"}.get(typ, "TEXT"))


def _help(owner: type[Any], f: dataclasses.Field[Any]) -> str:
    default = f.default if f.default is not dataclasses.MISSING else None
    doc = field_docs(owner).get(f.name, "")
    shown = "''" if default == "" else repr(default) if isinstance(default, str) else default
    return f"{doc} (default: {shown})".replace("%", "%%").strip()


def _dynamic_choices(leaf: str) -> tuple[str, ...] | None:
    if leaf == "method":
        from smartfed.methods.base import METHODS

        return tuple(METHODS)
    return None


TAGS_EPILOG = "[P] = the paper's value, [D] = our default (docs/method.md)."
"""Explains the tags the field docstrings carry; add it to a parser's epilog."""


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
