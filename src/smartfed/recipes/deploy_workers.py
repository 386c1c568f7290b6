"""The per-SuperNode workers of one ``smartfed deploy-local`` run: directories, start, stop.

Each local SuperNode ``i`` gets its own private directory ``<tmp>/smartfed-w-XXXX/n<i>`` (0700)
through its node config, so each node has its own worker (parallel, like one Ray actor per client
in simulation). The workers are started here, next to the SuperNodes, so the model loads while
Flower starts; their owner is this process: they exit when it is gone (polled every second, and
``PR_SET_PDEATHSIG`` on Linux for the ones started here), and :meth:`LocalWorkers.stop` ends
every worker of the run, including those a ClientApp started after a crash, copies their logs to
``<output_dir>/.flower/logs/worker-n<i>.log`` and removes the directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from smartfed.config import RunConfig
from smartfed.fed import worker_link as wl
from smartfed.fed.worker_key import bundle_key, spec_of
from smartfed.log import get_logger

log = get_logger(__name__)


class LocalWorkers:
    """Worker directories and processes of the local SuperNodes of one run."""

    def __init__(self, cfg: RunConfig, log_dir: Path) -> None:
        self.cfg, self.log_dir = cfg, log_dir
        self.base = Path(tempfile.mkdtemp(prefix="smartfed-w-"))  # 0700, short socket paths
        self.owner = os.getpid()
        self.threads = cfg.fed.client_cpus
        self.started: list[subprocess.Popen[bytes]] = []

    def node_dir(self, pid: int) -> Path:
        """SuperNode ``pid``'s private worker directory (created)."""
        return wl.private_dir(self.base / f"n{pid}")

    def node_config(self, pid: int) -> str:
        """The worker entries of SuperNode ``pid``'s ``--node-config``."""
        return (
            f'{wl.NODE_WORKER_DIR}="{self.node_dir(pid)}" {wl.NODE_WORKER_OWNER}={self.owner} '
            f"{wl.NODE_WORKER_THREADS}={self.threads}"
        )

    def prestart(self, pid: int, env: Mapping[str, str]) -> int:
        """Start SuperNode ``pid``'s worker now (it loads while Flower starts); return its PID."""
        paths = wl.WorkerPaths(self.node_dir(pid), bundle_key(spec_of(self.cfg), env))
        job = {"run_config": self.cfg.to_flat(), "dataset": ""}
        self.started.append(
            wl.spawn(
                paths, job, owner=self.owner, threads=self.threads, idle_s=wl.DEFAULT_IDLE_S,
                env=dict(env),
            )
        )  # fmt: skip
        return self.started[-1].pid

    def stop(self) -> list[int]:
        """Stop every worker of the run, keep their logs, remove the directories."""
        pids = wl.stop_workers(self.base)
        for proc in self.started:  # reap the ones started here
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wl.BIND_TIMEOUT_S)
        for node in sorted(self.base.glob("n*")):
            logs = sorted(node.glob("w-*.log"))
            if logs:
                text = "".join(p.read_text(errors="replace") for p in logs)
                (self.log_dir / f"worker-{node.name}.log").write_text(text, encoding="utf-8")
        shutil.rmtree(self.base, ignore_errors=True)
        if pids:
            log.info("stopped %d worker(s): %s", len(pids), pids)
        return pids
