"""fast_poll: Flower's HttpGrid pulls replies every POLL_S (not 3 s); other grids are untouched."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from smartfed.fed import grid_poll


class HttpGrid:  # the name fast_poll recognises; replies appear on the third pull
    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages: Any) -> list[str]:
        return [f"id{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        if self.pulls < 3:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        raise AssertionError("the 3 s loop of Flower's grid must not run")


class OtherGrid(HttpGrid):
    pass


OtherGrid.__name__ = "InMemoryGrid"


def test_http_grid_polls_fast_and_returns_every_reply() -> None:
    grid = grid_poll.fast_poll(HttpGrid())  # type: ignore[arg-type]
    t0 = time.perf_counter()
    replies = grid.send_and_receive(["a", "b"], timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["id0", "id1"]
    assert grid.pulls == 3 and time.perf_counter() - t0 < 3 * grid_poll.POLL_S + 1.0


def test_timeout_bounds_the_wait_and_other_grids_are_unchanged() -> None:
    grid = HttpGrid()
    grid.pull_messages = lambda ids: []  # type: ignore[method-assign]
    fast = grid_poll.fast_poll(grid)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    assert list(fast.send_and_receive(["a"], timeout=0.6)) == []
    assert time.perf_counter() - t0 < 2.0
    other = OtherGrid()
    assert grid_poll.fast_poll(other) is other  # type: ignore[arg-type]
    assert other.send_and_receive.__func__ is OtherGrid.send_and_receive  # type: ignore[attr-defined]
