"""Shorter fixed waits of Flower 1.41, applied inside SmartFed's own Deployment Runtime processes.

Flower 1.41 has three fixed waits on the path of every deployment round, none with a flag or an
environment variable (read in its source; measured in docs/deployment.md, section 5):

- the SuperNode sleeps 3 s after every empty pull of the SuperLink (a round's instructions wait
  1.5 s on average before a node sees them) and 0.5 s between two looks for the ClientApp's reply
  (``flwr.supernode.start_client_internal``);
- a process that pulls a message's objects before the sender has pushed them all backs off 1 s,
  then 2 s, 4 s ... (``pull_objects`` / ``pull_and_inflate_object_from_tree``, argument
  ``initial_backoff``). On loopback this race is lost in almost every round twice: the ClientApp
  asks its SuperNode while that node is still receiving, and the ServerApp asks the SuperLink as
  soon as a reply's header is there.

[D] :func:`cap_sleeps` and :func:`quick_backoff` shorten them in the one process they are called
in, by rebinding a module attribute of that Flower module (the ``time`` module it sleeps through,
or the pull function it calls); nothing else changes, and an attribute this Flower release does
not have is left alone (the function returns ``False`` and the old wait applies). Called by the
deployment ServerApp's grid (:mod:`smartfed.fed.grid_poll`), the warm ClientApp starter
(:mod:`smartfed.fed.warm_exec`) and the SuperNode launcher (:mod:`smartfed.fed.supernode`).
Cost: an idle SuperNode asks its SuperLink for work every :data:`POLL_S` instead of every 3 s.
"""

from __future__ import annotations

import functools
import inspect
import time
from types import ModuleType
from typing import Any

POLL_S = 0.25
"""[D] Longest sleep of a SuperNode's poll loops (Flower: 3 s idle, 0.5 s for a reply)."""
PULL_BACKOFF_S = 0.1
"""[D] First back-off of an object pull that found the object not yet pushed (Flower: 1 s; it
still doubles up to Flower's cap)."""
_MARK = "__smartfed_wait__"


class _CappedTime:
    """The ``time`` module, except that ``sleep`` never sleeps longer than ``cap_s``."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s
        setattr(self, _MARK, True)

    def sleep(self, seconds: float) -> None:
        """``time.sleep(min(seconds, cap_s))``."""
        time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_sleeps(module: ModuleType, cap_s: float = POLL_S) -> bool:
    """Make every ``time.sleep`` of ``module`` last at most ``cap_s`` (once per module).

    Returns:
        ``False`` when ``module`` does not sleep through a module-level ``time``.
    """
    current = getattr(module, "time", None)
    if current is not time and not getattr(current, _MARK, False):
        return False
    if current is time:
        module.time = _CappedTime(cap_s)  # type: ignore[attr-defined]
    return True


def quick_backoff(module: ModuleType, name: str, initial_s: float = PULL_BACKOFF_S) -> bool:
    """Call ``module.<name>`` (a Flower pull function) with ``initial_backoff=initial_s``.

    Returns:
        ``False`` when ``module`` has no such function or it takes no ``initial_backoff``.
    """
    fn = getattr(module, name, None)
    if fn is None:
        return False
    if getattr(fn, _MARK, False):
        return True
    try:
        if "initial_backoff" not in inspect.signature(fn).parameters:
            return False
    except (TypeError, ValueError):
        return False
    quick = functools.partial(fn, initial_backoff=initial_s)
    setattr(quick, _MARK, True)
    setattr(module, name, quick)
    return True
