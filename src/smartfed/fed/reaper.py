"""A watchdog that ends what a ``smartfed train`` process started when that process dies.

Ray's local cluster (GCS, raylet, workers) is started by the simulation from inside ``train``;
after a ``kill -9`` of ``train`` those processes are reparented and keep running. The reaper is a
small separate process started first: it holds the read end of a pipe whose write end only the
watched process holds, remembers the watched process's descendants (every ``POLL_S``), and when the
pipe reports end-of-file (the watched process is gone, however it died) it sends SIGKILL to every
remembered descendant that is still the same process (same start time), then exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 1.0
"""[D] Seconds between two scans of the watched process's descendants."""


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), ``None`` when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in ``/proc``."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        start = _start_time(pid)
        if start is not None and pid not in found:
            found[pid] = start
            todo.extend(children.get(pid, []))
    return found


def watch(fd: int, root: int) -> None:
    """Remember ``root``'s descendants until ``fd`` reaches EOF, then SIGKILL them."""
    me = os.getpid()
    known: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 1):
            break
        known.update(descendants(root))
        known = {p: s for p, s in known.items() if _start_time(p) == s}
    for pid, start in list(known.items()):
        if pid != me and _start_time(pid) == start:
            known.update(descendants(pid))
    for pid, start in known.items():
        if pid != me and _start_time(pid) == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def start_reaper() -> subprocess.Popen[bytes] | None:
    """Start the reaper for this process (Linux only; ``None`` where ``/proc`` is missing).

    The pipe's write end stays open in this process only (not inherited by its other children),
    so its end-of-file means this process has exited.
    """
    if not Path("/proc/self/stat").exists():
        return None
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartfed.fed.reaper", str(read_end), str(os.getpid())],
        pass_fds=(read_end,),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a kill of this process group does not take the reaper along
    )
    os.close(read_end)
    _HELD.append(write_end)
    return proc


_HELD: list[int] = []
"""Write ends held for the life of this process."""


if __name__ == "__main__":  # pragma: no cover - run as the reaper process
    watch(int(sys.argv[1]), int(sys.argv[2]))
