"""`smartfed deploy-local` with 2 SuperNodes: the job completes through Flower's Deployment Runtime,
each node's worker keeps the model across rounds, and every process the run started (Flower's and
the workers, however detached) is gone afterwards. The test process becomes a child subreaper for
the run, so exactly the processes started by this test are checked."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fedkit import tiny_config, write_dataset

from smartfed.io.rundir import RunDir
from smartfed.recipes.train import run_train

PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def own_descendants() -> Iterator[set[int]]:
    """Adopt every orphan of this test; yield the PIDs started meanwhile that are still running."""
    libc = ctypes.CDLL(None, use_errno=True)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    left: set[int] = set()
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield left
    finally:
        for p in me.children(recursive=True):
            if p.pid in before:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if p.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(p.pid, os.WNOHANG)  # adopted orphans that exited: reap them
                else:
                    left.add(p.pid)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper is Linux-only")
def test_deploy_local_two_supernodes(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir,
        tiny_pool,
        data,
        tmp_path / "run",
        num_rounds=2,
        num_clients=2,
        sample_clients=2,
        engine="deployment",
        track_energy=False,
        device="cpu",
        round_timeout_s=300.0,
    )
    with own_descendants() as left:
        summary = run_train(cfg)
    rows = RunDir(cfg.output_dir).metrics()
    assert summary["rounds"] == 2 and [r["round"] for r in rows] == [1, 2]
    assert all(r["clients"] == [0, 1] and r["failures"] == 0 for r in rows), rows
    assert all(s < 1.0 for r in rows[1:] for s in r["client_load_s"])  # the model stayed loaded
    logs = tmp_path / "run" / ".flower" / "logs"
    for node in ("n0", "n1"):  # one worker per node served every round
        text = (logs / f"worker-{node}.log").read_text()
        assert len(re.findall(r"worker \d+ serving", text)) == 1, text
        assert "stopped after 2 requests" in text, text
    assert (tmp_path / "run" / "checkpoint" / "routers.safetensors").is_file()
    assert not left, f"processes left running: {left}"
