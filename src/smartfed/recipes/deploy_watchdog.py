"""Watchdog of one ``smartfed deploy-local`` run: ends what the run started if the run dies.

``deploy-local`` starts this process first (``python -m smartfed.recipes.deploy_watchdog``, in its
own session so that nothing aimed at ``deploy-local`` reaches it) with a pipe as standard input,
and writes to it the PID of every process it starts (one per line). The watchdog records the
descendants of those processes (PID with start time, and session) every :data:`POLL_S` seconds
after a PID arrives or a look found a new process, backing off to every :data:`POLL_MAX_S` while
the tree stays the same (one scan of the process table per look: each costs ~5 ms of CPU, which
on a small machine is taken from the clients' training). A line
``done`` (``deploy-local`` stopped everything itself) ends the watchdog. End of input without
``done`` means ``deploy-local`` died (``kill -9``, crash): the watchdog sends SIGTERM to every
recorded process still running with the same start time and to every process of a recorded session
(Flower's per-message ``flwr-clientapp`` processes share the session of their SuperExec, so the
ones started after the last look are found too), waits :data:`GRACE_S`, sends SIGKILL to what is
left and exits. Only processes of this user are touched, never this session or the owner's.

This is the fallback behind the in-order stop of ``deploy-local`` and the ``PR_SET_PDEATHSIG`` of
the processes it starts: it also covers processes whose own shutdown hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys

import psutil

POLL_S = 0.25
"""[D] Seconds between two looks at the owner's process tree while it changes."""
POLL_MAX_S = 2.0
"""[D] Longest wait between two looks, reached by doubling while the tree stays the same. New
sessions are only made by the processes ``deploy-local`` starts itself (announced, looked at at
once); Flower's per-message processes join their SuperExec's session, found at the end."""
GRACE_S = 3.0
"""[D] Seconds between SIGTERM and SIGKILL for the processes left behind."""


class Tracker:
    """The processes started from the announced roots, and their sessions."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.uid = os.getuid()
        self.roots: dict[int, float] = {}  # pid -> create_time
        self.procs: dict[int, float] = {}
        self.sessions: set[int] = set()
        self.spared = {os.getsid(0), os.getsid(os.getppid())}

    def add_root(self, pid: int) -> None:
        """Track ``pid`` and, from now on, its descendants."""
        with contextlib.suppress(psutil.Error, OSError):
            self.roots[pid] = psutil.Process(pid).create_time()
        self.look()

    def look(self) -> bool:
        """Record the live roots' descendants and sessions; return whether a new one was found."""
        children: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):  # one scan of the process table
            children.setdefault(p.info["ppid"] or 0, []).append(p.pid)
        before = len(self.procs)
        for pid, born in list(self.roots.items()):
            try:
                if psutil.Process(pid).create_time() != born:
                    continue
            except psutil.Error:
                continue
            stack = [pid]
            while stack:
                current = stack.pop()
                if current not in self.procs:
                    with contextlib.suppress(psutil.Error, OSError):
                        self.procs[current] = psutil.Process(current).create_time()
                        self.sessions.add(os.getsid(current))
                stack += children.get(current, [])
        self.sessions -= self.spared
        return len(self.procs) > before

    def left(self) -> list[psutil.Process]:
        """Recorded processes still running, plus every live process of a recorded session."""
        out: list[psutil.Process] = []
        for p in psutil.process_iter(["uids", "create_time"]):
            if p.pid == self.me or p.info["uids"] is None or p.info["uids"].real != self.uid:
                continue
            try:
                in_session = os.getsid(p.pid) in self.sessions
            except OSError:
                continue
            if in_session or self.procs.get(p.pid) == p.info["create_time"]:
                out.append(p)
        return out


def end(procs: list[psutil.Process], grace_s: float = GRACE_S) -> None:
    """SIGTERM ``procs``, wait up to ``grace_s``, SIGKILL the rest."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def watch(fd: int, poll_s: float = POLL_S, poll_max_s: float = POLL_MAX_S) -> int:
    """Track the PIDs read from ``fd`` until ``done`` or its end; return how many were ended."""
    tracker, buf, wait = Tracker(), b"", poll_s
    while True:
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            wait = poll_s if tracker.look() else min(2 * wait, poll_max_s)
            continue
        wait = poll_s
        chunk = os.read(fd, 4096)
        if not chunk:  # the owner is gone without saying done
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip() == b"done":
                return 0
            if line.strip().isdigit():
                tracker.add_root(int(line))
    tracker.look()
    victims = tracker.left()
    end(victims)
    return len(victims)


def main() -> None:
    """Entry point: ``python -m smartfed.recipes.deploy_watchdog`` (PIDs on standard input)."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only its input ends the watchdog
    watch(sys.stdin.fileno())


if __name__ == "__main__":
    main()
