"""deployment_grid: Flower's HttpGrid pushes sealed instructions, pulls replies every POLL_S (not
3 s) and hands the strategy opened replies; other grids are untouched."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from smartfed.fed import envelope, grid_poll

pytestmark = pytest.mark.usefixtures("task_identity")


class HttpGrid:  # the name deployment_grid recognises; replies appear on the third pull
    def __init__(self) -> None:
        self.pulls = 0
        self.pushed: list[Message] = []

    def push_messages(self, messages: Any) -> list[str]:
        self.pushed = list(messages)
        return [m.object_id for m in self.pushed]

    def pull_messages(self, ids: Any) -> list[Message]:
        self.pulls += 1
        if self.pulls < 3:
            return []
        out = []
        for m in self.pushed:  # each node answers with its node id, sealed like the ClientApp
            body = RecordDict({"r": ConfigRecord({"node": m.metadata.dst_node_id})})
            reply = Message(envelope.seal(body), reply_to=m)
            reply.metadata.__dict__["_reply_to_message_id"] = m.object_id
            out.append(reply)
        return out

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        raise AssertionError("the 3 s loop of Flower's grid must not run")


class OtherGrid(HttpGrid):
    pass


OtherGrid.__name__ = "InMemoryGrid"


def _ins(node: int) -> Message:
    return Message(RecordDict({"c": ConfigRecord({"x": node})}), node, "train", group_id="1")


def test_http_grid_seals_polls_fast_and_opens_every_reply() -> None:
    grid = grid_poll.deployment_grid(HttpGrid())  # type: ignore[arg-type]
    sent = [_ins(1), _ins(2)]
    t0 = time.perf_counter()
    replies = list(grid.send_and_receive(sent, timeout=30))
    # Flower's own loop sleeps 3 s between pulls (>= 6 s for 3 pulls); ours 3 x POLL_S. The bound
    # separates the two with room for a loaded machine.
    assert grid.pulls == 3 and time.perf_counter() - t0 < 5.0
    assert all(envelope.is_sealed(m.content) for m in grid.pushed)  # type: ignore[attr-defined]
    assert [m.metadata.dst_node_id for m in grid.pushed] == [1, 2]  # type: ignore[attr-defined]
    assert all(not envelope.is_sealed(m.content) for m in sent)  # the strategy's copies
    assert sorted(r.content["r"]["node"] for r in replies) == [1, 2]


def test_timeout_bounds_the_wait_and_other_grids_are_unchanged() -> None:
    grid = HttpGrid()
    grid.pull_messages = lambda ids: []  # type: ignore[method-assign]
    fast = grid_poll.deployment_grid(grid)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    assert list(fast.send_and_receive([_ins(1)], timeout=0.6)) == []
    assert time.perf_counter() - t0 < 5.0  # the timeout (0.6 s) bounds it, not Flower's 3 s sleep
    other = OtherGrid()
    assert grid_poll.deployment_grid(other) is other  # type: ignore[arg-type]
    assert other.send_and_receive.__func__ is OtherGrid.send_and_receive  # type: ignore[attr-defined]
