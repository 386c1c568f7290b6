"""``cpu-mini``: the CPU-scale skill-composition suite (generated tasks; docs/cpu-mini.md)."""

from __future__ import annotations

from smartfed_bench.cpu_mini.tasks import (
    CONTROL_SKILLS,
    DATA_FRACTION_VARIANT,
    SKILLS,
    SUITE,
    TASKS,
    Composition,
    CpuMiniTask,
    get_cpu_mini_task,
)

__all__ = [
    "CONTROL_SKILLS",
    "DATA_FRACTION_VARIANT",
    "SKILLS",
    "SUITE",
    "TASKS",
    "Composition",
    "CpuMiniTask",
    "get_cpu_mini_task",
]
