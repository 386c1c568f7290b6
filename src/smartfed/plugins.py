"""Extension points: installed packages add tasks, adapters, pool entries and commands [D].

SmartFed never imports an extension; it finds it through ``importlib.metadata`` entry points that
the extension's ``pyproject.toml`` declares, so a user's own package plugs in exactly as the
bundled experiment package (``smartfed_bench``: the cpu-mini suite, its LoRAs, ``smartfed bench``
and ``smartfed demo``) does. Groups and what each entry point must be:

- ``smartfed.tasks``: ``() -> Iterable[Task]``, tasks added to the registry (``get_task``).
- ``smartfed.adapters``: ``(name: str) -> Path | None``, a named PEFT adapter dir the extension
  ships (pool entries are looked up here after the user's registry).
- ``smartfed.pool_sources``: ``(source: str, model: ModelConfig) -> str | None``, a pool entry the
  extension builds on demand (e.g. ``cpu-mini:skill.zh@1``) -> its adapter dir.
- ``smartfed.commands``: ``(subparsers) -> None``, adds ``smartfed <command>`` parsers.
- ``smartfed.pool_commands``: ``(actions) -> None``, adds ``smartfed pool <action>`` parsers.

Example (``pyproject.toml`` of an extension)::

    [project.entry-points."smartfed.tasks"]
    my_suite = "my_package.tasks:all_tasks"
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartfed.errors import SmartFedError

if TYPE_CHECKING:
    from smartfed.config import ModelConfig

TASKS = "smartfed.tasks"
ADAPTERS = "smartfed.adapters"
POOL_SOURCES = "smartfed.pool_sources"
COMMANDS = "smartfed.commands"
POOL_COMMANDS = "smartfed.pool_commands"
GROUPS = (TASKS, ADAPTERS, POOL_SOURCES, COMMANDS, POOL_COMMANDS)


class PluginError(SmartFedError):
    """An installed extension's entry point cannot be loaded."""


@functools.cache
def load(group: str) -> tuple[tuple[str, Callable[..., Any]], ...]:
    """``(name, object)`` of every entry point of ``group``, sorted by name, loaded once.

    Raises:
        PluginError: an entry point whose module or object cannot be imported (one line naming
            the entry point and the fix).
    """
    out = []
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            out.append((ep.name, ep.load()))
        except Exception as err:  # any import failure of third-party code means "unusable"
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PluginError(
                f"extension {ep.name!r} of {group} ({ep.value}) cannot be loaded: {first}; "
                "reinstall the package that provides it (`make install`) or uninstall it"
            ) from err
    return tuple(out)


def find_adapter(name: str) -> Path | None:
    """The adapter dir an extension ships under ``name`` (``smartfed.adapters``), else None."""
    for _, lookup in load(ADAPTERS):
        found = lookup(name)
        if found is not None:
            return Path(found)
    return None


def expand_pool_sources(sources: Sequence[str], model: ModelConfig) -> list[str]:
    """Replace each pool entry an extension builds (``smartfed.pool_sources``) by its adapter dir.

    Entries no extension claims are kept as they are (the pool resolves them later).
    """
    out = []
    for source in sources:
        for _, expand in load(POOL_SOURCES):
            built = expand(source, model)
            if built is not None:
                source = str(built)
                break
        out.append(source)
    return out
