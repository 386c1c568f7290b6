"""The one record type that flows from tasks to training, generation and scoring."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One instruction example.

    Attributes:
        prompt: the user turn (instruction and input), without any chat markup.
        response: the target assistant turn used for training ("" for eval-only rows).
        answer: the gold answer the scorer compares against (None when the metric needs none).
        meta: task-specific fields (ids, tests, labels for partitioning, ...).
    """

    prompt: str
    response: str = ""
    answer: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
