"""The deploy-local watchdog ends the announced processes (and their sessions) when its input ends
without ``done``, and touches nothing after ``done``. Only processes started here are used."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX sessions")


def _watchdog() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "smartfed.recipes.deploy_watchdog"],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


def _tree() -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """A session leader (shell) with a grandchild ``sleep`` in its session."""
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not psutil.Process(shell.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return shell, psutil.Process(shell.pid).children()[0]


def _announce(dog: subprocess.Popen[bytes], text: str) -> None:
    assert dog.stdin is not None
    dog.stdin.write(text.encode())
    dog.stdin.flush()


def test_owner_gone_ends_announced_tree() -> None:
    dog = _watchdog()
    shell, grandchild = _tree()
    try:
        _announce(dog, f"{shell.pid}\n")
        time.sleep(1.0)  # a few looks at the tree
        assert dog.stdin is not None
        dog.stdin.close()  # the owner died without "done"
        assert dog.wait(timeout=20) == 0
        shell.wait(timeout=5)
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    finally:
        for p in (shell, dog):
            p.kill()
        with contextlib.suppress(psutil.Error):
            grandchild.kill()


def test_done_touches_nothing() -> None:
    dog = _watchdog()
    shell, grandchild = _tree()
    try:
        _announce(dog, f"{shell.pid}\ndone\n")
        assert dog.wait(timeout=20) == 0
        assert shell.poll() is None and grandchild.is_running()
    finally:
        shell.kill()
        grandchild.kill()
        shell.wait(timeout=5)
        dog.kill()


def test_looks_back_off_while_the_tree_stays_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Looks every POLL_S while new processes appear, then doubling up to POLL_MAX_S; a PID
    read from the owner resets the wait."""
    import os

    from smartfed.recipes import deploy_watchdog as wd

    found = iter([True, False, False, False, False, False, True, False])
    monkeypatch.setattr(wd.Tracker, "look", lambda self: next(found, False))
    monkeypatch.setattr(wd.Tracker, "add_root", lambda self, pid: None)
    read, write = os.pipe()
    waits: list[float] = []
    script = [False] * 8 + [True] + [False] * 2 + ["eof"]

    def fake_select(r, w, x, timeout):  # type: ignore[no-untyped-def]
        waits.append(timeout)
        step = script[len(waits) - 1]
        if step == "eof":
            os.close(write)
        elif step:
            os.write(write, b"123\n")
        return ([r[0]] if step else []), [], []

    monkeypatch.setattr(wd.select, "select", fake_select)
    wd.watch(read, poll_s=0.25, poll_max_s=2.0)
    assert waits == [0.25, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 0.25, 0.5, 0.25, 0.5, 1.0]
