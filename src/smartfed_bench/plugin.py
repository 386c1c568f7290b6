"""The entry points ``smartfed_bench`` registers with SmartFed (:mod:`smartfed.plugins`).

Each is imported only when SmartFed looks its group up, so ``smartfed --help`` and a run that
names no cpu-mini task or LoRA load none of the experiment's code beyond this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from smartfed.config import ModelConfig
from smartfed.data.tasks.base import Task


def tasks() -> Iterable[Task]:
    """``smartfed.tasks``: every ``cpu_mini.*`` task (skills, composites, controls)."""
    from smartfed_bench.cpu_mini import TASKS

    return list(TASKS.values())


def adapter(name: str) -> Path | None:
    """``smartfed.adapters``: a cpu-mini skill LoRA shipped with the package, e.g.
    ``cpu_mini.skill.zh`` (sha256-checked), else None."""
    from smartfed_bench.packaged import packaged_by_name

    return packaged_by_name(name)


def pool_source(source: str, model: ModelConfig) -> str | None:
    """``smartfed.pool_sources``: ``cpu-mini:<skill>[@<pool seed>]`` -> the cached LoRA's dir
    (trained first when missing); None for other entries.

    Raises:
        ConfigError: a malformed ``cpu-mini:`` entry.
    """
    from smartfed_bench.pools import expand_cpu_mini_sources, parse_cpu_mini_source

    if parse_cpu_mini_source(source) is None:
        return None
    return expand_cpu_mini_sources([source], model)[0]
