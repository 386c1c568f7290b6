"""Elastic Expert Quota Allocation (EEQA, docs/method.md §5).

``allocate`` (stdlib only) runs on the server; ``importance`` (torch) runs on clients and is not
imported here so that the server-side, stdlib-only part stays importable without torch.
"""

from __future__ import annotations

from smartfed.quota.allocate import (
    aggregate_importance,
    allocate_quotas,
    default_budget,
    uniform_quotas,
)
from smartfed.quota.schedule import EEQAState

__all__ = [
    "EEQAState",
    "aggregate_importance",
    "allocate_quotas",
    "default_budget",
    "uniform_quotas",
]
