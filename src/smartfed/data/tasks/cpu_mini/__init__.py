"""``cpu-mini``: the CPU-scale skill-composition suite (generated tasks; docs/cpu-mini.md)."""

from __future__ import annotations

from smartfed.data.tasks.cpu_mini.tasks import (
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


def register_cpu_mini_tasks() -> None:
    """Put every cpu-mini task in the shared task registry (idempotent)."""
    from smartfed.data.tasks import register_task

    for task in TASKS.values():
        register_task(task, replace=True)


register_cpu_mini_tasks()
