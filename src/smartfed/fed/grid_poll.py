"""The deployment ServerApp's grid: sealed messages, replies pulled every 0.25 s instead of 3 s.

Flower 1.41's ``HttpGrid.send_and_receive`` (the ServerApp's grid in the Deployment Runtime)
sleeps 3 s between two pulls of replies, so a round ends on average 1.5 s after its last reply,
and it sends each message as a tree of one object per array (one HTTP request each, on every hop).
:func:`deployment_grid` gives one grid instance the same push-then-pull loop, built from the
public ``Grid.push_messages`` / ``Grid.pull_messages``, with :data:`POLL_S` between pulls, and
sends every instruction as an envelope (:mod:`smartfed.fed.envelope`: the records as one byte
array) and opens the envelopes of the replies, so the strategy sees the same messages as before.
Other grids (the simulation's in-memory grid already polls every 0.1 s and moves no bytes) are
returned unchanged.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from smartfed.fed.envelope import open_message, seal_message
from smartfed.fed.flower_waits import quick_backoff

POLL_S = 0.25
"""[D] Seconds between two pulls of replies (one small HTTP request to the SuperLink each)."""


def _send_and_receive(
    self: Grid, messages: Iterable[Message], *, timeout: float | None = None
) -> Iterable[Message]:
    """Push ``messages`` sealed, then pull replies until all arrived or ``timeout`` s passed."""
    pending = set(self.push_messages([seal_message(m) for m in messages]))
    end = time.time() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    while timeout is None or time.time() < end:
        got = list(self.pull_messages(pending))
        replies += [open_message(m) for m in got]
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending:
            break
        time.sleep(POLL_S)
    return replies


def deployment_grid(grid: Grid) -> Grid:
    """``grid`` with sealed messages and replies pulled every :data:`POLL_S` (only ``HttpGrid``).

    Also retries a reply object pulled before its node finished pushing it after 0.1 s instead
    of 1 s (:func:`smartfed.fed.flower_waits.quick_backoff`, in this ServerApp process).
    """
    if type(grid).__name__ == "HttpGrid":
        grid.send_and_receive = types.MethodType(_send_and_receive, grid)  # type: ignore[method-assign]
        module = sys.modules.get(type(grid).__module__)
        if module is not None:
            quick_backoff(module, "pull_objects")
    return grid
