"""`smartfed deploy-local` killed mid-round (SIGKILL or SIGTERM) leaves nothing running.

The CLI runs in a subprocess on the tiny model with 2 SuperNodes; the test process is a child
subreaper, so every process the run starts (SuperLink, SuperNodes, SuperExecs, `flwr run`, the
ServerApp, ClientApps, workers), however detached, stays a descendant of this test and nothing
else is looked at. Once a ClientApp process exists (round 1 is running) the CLI is killed and
every process seen meanwhile must be gone within a bounded time."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fedkit import write_dataset

PR_SET_CHILD_SUBREAPER = 36
START_TIMEOUT_S = 300.0
"""Bound on the wait for round 1's first ClientApp process (startup + model load, loaded CPU)."""
GONE_TIMEOUT_S = 30.0
"""Bound on the wait for every process of the killed run to end."""


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make this process adopt the orphans of its descendants while the block runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _running(p: psutil.Process) -> bool:
    """``p`` still runs (a zombie adopted by this test is reaped and counts as gone)."""
    try:
        if not p.is_running():
            return False
        if p.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
            return False
        return True
    except psutil.Error:
        return False


def _cmd(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(p.cmdline())
    return "?"


def _is_task(p: psutil.Process) -> bool:
    """A ClientApp task: a fork of a node's warm SuperExec (or a ``flwr-clientapp`` process)."""
    warm = "smartfed.fed.warm_exec"
    with contextlib.suppress(psutil.Error):
        cmd = _cmd(p)
        return "flwr-clientapp" in cmd or (warm in cmd and warm in _cmd(p.parent()))
    return False


def _cli_argv(model: Path, pool: list[Path], data: Path, out: Path) -> list[str]:
    """`smartfed deploy-local` on the tiny model: 2 SuperNodes, many rounds (killed long before)."""
    flags = {
        "model_name_or_path": model, "dtype": "float32", "max_seq_len": 48,
        "lora_pool": ",".join(map(str, pool)), "dataset": data, "topk_experts": 4,
        "num_rounds": 20, "local_steps": 2, "batch_size": 4, "heldout_examples": 6,
        "device": "cpu", "round_timeout_s": 120, "output_dir": out,
    }  # fmt: skip
    argv = [str(Path(sys.executable).parent / "smartfed"), "deploy-local", "--num_supernodes", "2"]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return [*argv, "--no-track_energy"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper is Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_deploy_local_leaves_nothing(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path, sig: int
) -> None:
    data = write_dataset(tmp_path / "data.jsonl")
    argv = _cli_argv(tiny_model_dir, tiny_pool, data, tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    seen: dict[int, psutil.Process] = {}
    cmds: dict[int, str] = {}  # command lines as first seen (a process may end before the check)
    with subreaper(), open(tmp_path / "cli.log", "wb") as log:
        cli = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and cli.poll() is None:
                for p in me.children(recursive=True):
                    if p.pid not in before and p.pid not in seen:
                        seen[p.pid], cmds[p.pid] = p, _cmd(p)
                for pid, p in seen.items():  # a process seen between fork and exec has no
                    if _running(p):  # command line yet, or its parent's: keep the latest one
                        cmds[pid] = _cmd(p) if _cmd(p) not in ("", "?") else cmds[pid]
                if any(_is_task(p) for p in seen.values() if _running(p)):
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"no ClientApp started (rc={cli.poll()}): {log.name}")
            names = " | ".join(cmds.values())
            tools = ("flower-superlink", "smartfed.fed.supernode", "smartfed.fed.warm_exec")
            for tool in (*tools, "flwr run", "flwr-serverapp"):
                assert tool in names, f"{tool} not seen among {names}"
            assert "smartfed.fed.worker" in names, names
            assert "smartfed.recipes.deploy_watchdog" in names, names
            cli.send_signal(sig)
            rc = cli.wait(timeout=GONE_TIMEOUT_S)
            end = time.monotonic() + GONE_TIMEOUT_S
            left = [p for p in seen.values() if p.pid != cli.pid]
            while time.monotonic() < end:
                for p in me.children(recursive=True):  # started after the last snapshot
                    if p.pid not in before and p.pid not in seen:
                        seen[p.pid], cmds[p.pid] = p, _cmd(p)
                left = [p for p in seen.values() if p.pid != cli.pid and _running(p)]
                if not left:
                    break
                time.sleep(0.2)
        finally:
            for p in [q for q in seen.values() if _running(q)]:
                with contextlib.suppress(psutil.Error):
                    p.kill()  # never leak processes from a failing test
            cli.kill()
            cli.wait(timeout=GONE_TIMEOUT_S)
    assert not left, "still running: " + "; ".join(f"{p.pid} {cmds[p.pid][:120]}" for p in left)
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM, rc  # stopped in order, not killed by the signal
