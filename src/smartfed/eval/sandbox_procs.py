"""Find and kill what a sandboxed sample started, when there is no PID namespace to do it.

Used by :mod:`smartfed.eval.sandbox` on machines where ``unshare --pid`` is not permitted
(docs/security.md, Sandbox). Linux ``/proc`` only; elsewhere both functions see no processes.
"""

from __future__ import annotations

import contextlib
import os
import signal

MARKER_ENV = "SMARTFED_SANDBOX_RUN"
"""Environment variable carrying a per-run marker (not a secret): the fallback sweep kills every
process whose environment holds it."""


def count_processes(uid: int) -> int:
    """Number of processes (threads not counted) currently owned by ``uid``."""
    count = 0
    with contextlib.suppress(OSError):  # no procfs: the limit is then set from 0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    count += os.stat(entry.path).st_uid == uid
    return count


def sweep(marker: str, session: int) -> int:
    """Kill every process whose environment holds ``marker`` or whose session is ``session``.

    The fallback when there is no PID namespace: a program may start processes in a new session
    (out of reach of the process-group kill), but they inherit the marker and keep it. Repeated
    until a pass finds nothing new (a process may fork while we look). Returns how many distinct
    processes were killed.
    """
    needle = f"{MARKER_ENV}={marker}".encode()
    killed: set[int] = set()
    for _ in range(20):
        found = [pid for pid in _proc_pids() if _belongs(pid, needle, session)]
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if not set(found) - killed:  # nothing new (a killed process may linger until it exits)
            break
        killed.update(found)
    return len(killed)


def _proc_pids() -> list[int]:
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): only the process-group kill applies
        return []
    return [int(n) for n in names if n.isdigit() and int(n) != me]


def _belongs(pid: int, needle: bytes, session: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            return False
        if int(fields[3]) == session:
            return True
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in fh.read()
    except (OSError, IndexError, ValueError):
        return False
