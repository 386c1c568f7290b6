"""The reaper ends what a killed process started (Ray's daemons after ``kill -9`` of train)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from smartfed.fed.reaper import _start_time

PARENT = """
import subprocess, sys
from smartfed.fed.reaper import start_reaper
start_reaper()
# a daemon in its own session, as Ray starts its GCS and raylet
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
print(child.pid, flush=True)
import time
time.sleep(300)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_kill_9_of_the_parent_ends_its_detached_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    start = _start_time(child)
    time.sleep(2.5)  # the reaper has scanned the descendants at least once
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while _start_time(child) == start and time.monotonic() < deadline:
        time.sleep(0.2)
    gone = _start_time(child) != start
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the detached child outlived its killed parent"
