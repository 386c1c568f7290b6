"""``smartfed deploy-local``: the same apps on Flower's Deployment Runtime, all on loopback.

Starts one SuperLink and N SuperNodes (``partition-id`` 0..N-1; each one Flower's SuperNode with
shorter polls, :mod:`smartfed.fed.supernode`, in ``--isolation process`` next to a SuperExec that
forks warm ClientApps, :mod:`smartfed.fed.warm_exec`), submits the job with ``flwr run`` and
stops every process it started, children included, by PID, even on failure, Ctrl-C or SIGTERM.
On Linux every Flower process started here also gets ``PR_SET_PDEATHSIG`` (SIGTERM when this
process dies, even by SIGKILL); Flower's own processes watch their parent (``--parent-pid``), so
the SuperExecs, ServerApp and ClientApps follow the SuperLink/SuperNodes.
A watchdog process (:mod:`smartfed.recipes.deploy_watchdog`) ends whatever is left if this process
dies without stopping them.
Everything Flower writes (``FLWR_HOME``, the app bundle dir, state db, logs) stays under
``<output_dir>/.flower``. The app bundle is a generated ``pyproject.toml`` whose
``[tool.flwr.app.config]`` is this run's resolved config (components import the installed package).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from smartfed.config import RunConfig, Scalar
from smartfed.errors import SmartFedError
from smartfed.files import atomic_write_text
from smartfed.log import get_logger
from smartfed.recipes.deploy_workers import LocalWorkers

log = get_logger(__name__)
SUPERNODE_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
"""[D] The SuperNode's SuperExec checks for a message to run every 0.1 s (Flower's default: 1 s)."""
FLOWER_DIR = ".flower"
HEALTH_TIMEOUT_S = 300.0
"""[D] How long a starting SuperLink may take to answer its health check (a SuperLink that exits
is reported at once). 60 s was seen to be too short on a saturated 2-core machine, where a
low-priority ``deploy-local`` waits for the CPU to import Flower."""
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


class DeploymentError(SmartFedError):
    """A SuperLink/SuperNode that does not start or a ``flwr run`` that fails."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Scalar) -> str:
    """One TOML scalar."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def app_pyproject(cfg: RunConfig) -> str:
    """The ``pyproject.toml`` of the job's app bundle (config keys = ``RunConfig.to_flat()``)."""
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "smartfed-job"',
        'version = "0.1.0"',
        "dependencies = []",
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["."]',
        "",
        "[tool.flwr.app]",
        'publisher = "smartfed"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "smartfed.fed.server_app:app"',
        'clientapp = "smartfed.fed.client_app:app"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in cfg.to_flat().items()]
    return "\n".join(lines) + "\n"


def flower_env(home: Path) -> dict[str, str]:
    """Environment of every Flower process: offline, no telemetry, no runtime installs."""
    from smartfed.fed.env import FLOWER_ENV

    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        **FLOWER_ENV,
        "FLWR_HOME": str(home),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook: the child gets SIGTERM when the process starting it dies (Linux only).

    The kernel sends the signal when the *thread* that forked the child ends, so the processes
    must be started (as here) by the thread that waits for them. A parent that died between the
    fork and the ``prctl`` is caught by comparing the parent PID afterwards.

    Returns:
        The hook for ``subprocess.Popen(preexec_fn=...)``, or ``None`` off Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent is already gone
            os._exit(1)

    return hook


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` so the cleanup runs (main thread).

    A second SIGTERM during the cleanup is ignored; the previous handler comes back afterwards.
    Outside the main thread (where handlers cannot be set) this does nothing.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.warning("SIGTERM: stopping every process of the deployment")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Watchdog:
    """The run's watchdog process: told every PID started here, and ``done`` at a normal stop."""

    def __init__(self, log_dir: Path) -> None:
        with open(log_dir / "watchdog.log", "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smartfed.recipes.deploy_watchdog"],
                stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def track(self, pid: int) -> None:
        """Announce a process started by this run."""
        self._say(f"{pid}\n")

    def done(self) -> None:
        """Everything was stopped in order: end the watchdog without it touching anything."""
        self._say("done\n")
        with suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _say(self, line: str) -> None:
        with suppress(OSError, ValueError):  # a watchdog that died must not stop the run
            self.proc.stdin.write(line.encode())  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]


class Processes:
    """Processes started here; :meth:`stop_all` ends them and their children by PID."""

    def __init__(
        self, log_dir: Path, env: dict[str, str], watchdog: Watchdog | None = None
    ) -> None:
        self.log_dir, self.env, self.watchdog = log_dir, env, watchdog
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with output to ``<log_dir>/<name>.log`` (``extra_env`` over the env)."""
        fh = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**self.env, **(extra_env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl + getppid in the child
        )
        fh.close()
        self.procs.append((name, proc))
        if self.watchdog is not None:
            self.watchdog.track(proc.pid)
        return proc

    def stop_all(self) -> None:
        """Terminate every started process and its descendants (children first), then kill."""
        import psutil

        victims: list[psutil.Process] = []
        for _, proc in reversed(self.procs):
            try:
                parent = psutil.Process(proc.pid)
                victims += parent.children(recursive=True) + [parent]
            except psutil.NoSuchProcess:
                continue
        for p in victims:
            with suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(victims, timeout=STOP_GRACE_S)
        for p in alive:
            with suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=STOP_GRACE_S)
        for _, proc in self.procs:
            proc.poll()


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"flower-superlink exited with {proc.returncode}; see {log_file}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise DeploymentError(f"SuperLink not healthy after {HEALTH_TIMEOUT_S:.0f} s; see {log_file}")


def run_deployment(cfg: RunConfig, timeout_s: float | None = None) -> dict[str, Any]:
    """Run the job on a loopback SuperLink + ``num_clients`` SuperNodes; stop them afterwards.

    Returns:
        Timings: ``superlink_start_s``, ``flwr_run_s``.

    Raises:
        DeploymentError: a process that does not start, or ``flwr run`` failing.
    """
    if not cfg.fed.superlink:  # local SuperNodes: fail before starting anything
        from smartfed.fed.simulation import preflight

        preflight(cfg)
    home = Path(cfg.output_dir).resolve() / FLOWER_DIR
    app_dir, log_dir = home / "app", home / "logs"
    for d in (app_dir, log_dir):
        d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(app_dir / "pyproject.toml", app_pyproject(cfg))
    port = free_port()
    _write_connection(home, cfg.fed.superlink or f"127.0.0.1:{port}", cfg.fed.root_certificates)
    timings: dict[str, Any] = {}
    with sigterm_stops(), ExitStack() as stack:
        watchdog = Watchdog(log_dir)
        stack.callback(watchdog.done)  # runs last: after every stop below
        procs = Processes(log_dir, flower_env(home), watchdog)
        stack.callback(procs.stop_all)
        if cfg.fed.superlink:  # a running (remote) SuperLink: submit only
            return _flwr_run(procs, app_dir, log_dir, timeout_s, timings)
        n = cfg.fed.num_clients
        node_env = [{**SUPERNODE_ENV, **supernode_gpu_env(cfg.model.device, i)} for i in range(n)]
        workers = LocalWorkers(cfg, log_dir)
        stack.callback(workers.stop)
        for pid in range(n):  # each node's worker loads the model while Flower starts
            watchdog.track(workers.prestart(pid, {**procs.env, **node_env[pid]}))
        t0 = time.perf_counter()
        link = procs.start(
            "superlink",
            [
                _tool("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
        )
        _wait_healthy(port, link, log_dir / "superlink.log")
        timings["superlink_start_s"] = round(time.perf_counter() - t0, 2)
        for pid in range(n):
            runtime_port = free_port()
            node = procs.start(
                f"supernode-{pid}",
                [
                    sys.executable,
                    "-m",
                    "smartfed.fed.supernode",  # flower-supernode with shorter polls
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(runtime_port),
                    "--isolation",
                    "process",
                    "--node-config",
                    f"partition-id={pid} num-partitions={n} {workers.node_config(pid)}",
                ],
                node_env[pid],
            )
            procs.start(f"superexec-{pid}", warm_exec_argv(runtime_port, node.pid), node_env[pid])
        return _flwr_run(procs, app_dir, log_dir, timeout_s, timings)


def warm_exec_argv(runtime_port: int, supernode_pid: int) -> list[str]:
    """The SuperExec of a local SuperNode (``--isolation process``): forks warm ClientApps.

    :mod:`smartfed.fed.warm_exec` runs Flower's SuperExec loop against the node's Runtime API
    (loopback, plain HTTP like the SuperExec a SuperNode starts itself) and stops with the node.
    """
    return [
        sys.executable,
        "-m",
        "smartfed.fed.warm_exec",
        "--runtime-api-address",
        f"127.0.0.1:{runtime_port}",
        "--insecure",
        "--parent-pid",
        str(supernode_pid),
    ]


def supernode_gpu_env(
    device: str, pid: int, gpus: int | None = None, visible: str | None = None
) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` of local SuperNode ``pid``: round-robin over the GPUs.

    With ``--device cuda`` (or ``auto`` on a GPU machine) and several GPUs, SuperNode ``i`` (and
    the ClientApp processes it starts) sees only GPU ``i mod gpus`` (as ``cuda:0``); ``cuda:N``,
    CPU/MPS runs and one-GPU machines change nothing.

    Args:
        device: ``model.device``.
        pid: the SuperNode's partition id.
        gpus: GPUs visible here (``None`` = ask torch).
        visible: this process's ``CUDA_VISIBLE_DEVICES`` (``None`` = read the environment).

    Returns:
        Environment entries to add for that SuperNode (possibly none).
    """
    from smartfed.model.device import cuda_count

    n = cuda_count() if gpus is None else gpus
    if n <= 1 or device not in ("cuda", "auto"):
        return {}
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "") if visible is None else visible
    ids = [x.strip() for x in env.split(",") if x.strip()][:n] or [str(i) for i in range(n)]
    return {"CUDA_VISIBLE_DEVICES": ids[pid % len(ids)]}


def _write_connection(home: Path, address: str, root_certificates: str) -> None:
    """``$FLWR_HOME/config.toml`` with one connection named ``deploy``."""
    tls = (
        f'root-certificates = "{Path(root_certificates).resolve()}"\n'
        if root_certificates
        else "insecure = true\n"
    )
    atomic_write_text(
        home / "config.toml",
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "{address}"\n{tls}',
    )


def _flwr_run(
    procs: Processes, app_dir: Path, log_dir: Path, timeout_s: float | None, timings: dict[str, Any]
) -> dict[str, Any]:
    from smartfed.io.rundir import RunDir

    # The ServerApp runs in its own process and takes the run folder's lock itself.
    RunDir(app_dir.parent.parent).unlock()
    t1 = time.perf_counter()
    run = procs.start("flwr-run", [_tool("flwr"), "run", str(app_dir), "deploy", "--stream"])
    try:
        rc = run.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise DeploymentError(f"flwr run still running after {timeout_s} s; see {log_dir}") from err
    timings["flwr_run_s"] = round(time.perf_counter() - t1, 2)
    if rc != 0:
        raise DeploymentError(f"flwr run exited with {rc}; see {log_dir / 'flwr-run.log'}")
    return timings
