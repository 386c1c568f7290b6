"""The ClientApp's side of a node worker: private directory, frames, authentication, spawn, stop.

Torch-free on purpose: a ``flwr-clientapp`` process (one per message in Flower 1.41's Deployment
Runtime) imports this, computes the worker key (:mod:`smartfed.fed.worker_key`), connects to
``<worker dir>/w-<key[:16]>.sock`` and forwards the message records; only the worker
(:mod:`smartfed.fed.worker`) imports torch and holds the model.

Privacy [D]: the worker directory is created with mode 0700 and refused unless it is a real
directory owned by this user with no group/other bits, the socket is 0600 inside it, so the kernel
refuses a connect from any other (non-root) user. On top of that every request answers a fresh
nonce with ``HMAC-SHA256(secret, nonce || key)``, the secret being a 0600 file next to the socket,
and the worker checks the peer's uid (``SO_PEERCRED``) and that the request's config derives its
own key. Frames: 4-byte header length + 8-byte body length (big endian), a JSON header, raw body
(the Flower ``RecordDict`` protobuf).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartfed.errors import SmartFedError
from smartfed.log import get_logger

log = get_logger(__name__)

NODE_WORKER = "worker"
"""Node-config key: ``0`` = train in the ClientApp process; otherwise (default) use a worker."""
NODE_WORKER_DIR = "worker-dir"
NODE_WORKER_IDLE_S = "worker-idle-s"
NODE_WORKER_OWNER = "worker-owner"
NODE_WORKER_THREADS = "worker-threads"
DEFAULT_IDLE_S = 900.0
"""[D] A worker with no request for this long exits (frees the model's memory)."""
BIND_TIMEOUT_S = 60.0
"""[D] How long a spawned worker may take to bind its socket (before it imports torch)."""
_HEAD = struct.Struct("!IQ")
_MAX_HEADER = 16 << 20


class WorkerError(SmartFedError):
    """A worker request that was refused or failed (the message becomes an error reply)."""


class WorkerLostError(WorkerError):
    """The worker closed the connection mid-request (killed or crashed)."""


@dataclass(frozen=True)
class WorkerPaths:
    """The files of the worker that serves ``key`` in ``dir``."""

    dir: Path
    key: str

    def _f(self, suffix: str) -> Path:
        return self.dir / f"w-{self.key[:16]}{suffix}"

    @property
    def sock(self) -> Path:  # noqa: D102
        return self._f(".sock")

    @property
    def secret(self) -> Path:  # noqa: D102
        return self._f(".secret")

    @property
    def pid(self) -> Path:  # noqa: D102
        return self._f(".pid")

    @property
    def job(self) -> Path:  # noqa: D102
        return self._f(".json")

    @property
    def lock(self) -> Path:  # noqa: D102
        return self._f(".lock")

    @property
    def log(self) -> Path:  # noqa: D102
        return self._f(".log")


def default_dir() -> Path:
    """``$XDG_RUNTIME_DIR/smartfed`` or ``<tmp>/smartfed-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "smartfed"
    return Path(tempfile.gettempdir()) / f"smartfed-{os.getuid()}"


def private_dir(path: Path, create: bool = True) -> Path:
    """Create (mode 0700) or check a worker directory.

    Raises:
        WorkerError: a symlink, not a directory, another owner, or group/other permission bits.
    """
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerError(
            f"worker dir {path} must be a directory owned by uid {os.getuid()} with mode 0700 "
            f"(found uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}); remove it or set "
            f"--node-config {NODE_WORKER_DIR}=<a private dir>"
        )
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def send_frame(sock: socket.socket, header: Mapping[str, Any], body: bytes = b"") -> None:
    """Send one frame (JSON header + raw body)."""
    head = json.dumps(header).encode()
    sock.sendall(_HEAD.pack(len(head), len(body)) + head)
    if body:
        sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise WorkerLostError("the worker connection closed mid-message (worker killed?)")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """Receive one frame.

    Raises:
        WorkerLostError: the peer closed the connection.
        WorkerError: an oversized or malformed header.
    """
    hlen, blen = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
    if hlen > _MAX_HEADER:
        raise WorkerError(f"worker frame header of {hlen} bytes refused")
    try:
        header = json.loads(_recv_exact(sock, hlen))
    except ValueError as err:
        raise WorkerError(f"malformed worker frame header: {err}") from err
    return header, _recv_exact(sock, blen) if blen else b""


def mac(secret: bytes, nonce: bytes, key: str) -> str:
    """The proof a request carries: ``HMAC-SHA256(secret, nonce || key)`` (hex)."""
    return hmac.new(secret, nonce + key.encode(), hashlib.sha256).hexdigest()


def connect(paths: WorkerPaths, timeout_s: float) -> socket.socket:
    """Connect to the worker's socket.

    Raises:
        FileNotFoundError / ConnectionRefusedError: no worker listening (spawn one).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(paths.sock))
    except OSError:
        sock.close()
        raise
    return sock


def exchange(
    sock: socket.socket,
    paths: WorkerPaths,
    header: Mapping[str, Any],
    body: bytes,
    waited_s: float = 0.0,
) -> tuple[dict[str, Any], bytes]:
    """Authenticate and run one request on a connected socket.

    Args:
        sock: from :func:`connect` (its timeout bounds every wait).
        paths: the worker's files (the secret is read from there).
        header: the request (``op`` and its fields); ``key``, ``mac``, ``waited_s`` are added.
        body: the request body.
        waited_s: time already spent starting the worker (reported as load time).

    Raises:
        WorkerError: refused, failed, or no reply in time; WorkerLostError: worker gone.
    """
    t0 = time.perf_counter()
    try:
        hello, _ = recv_frame(sock)
        waited_s += time.perf_counter() - t0  # the worker answers once its bundle is loaded
        if "nonce" not in hello:
            raise WorkerError(str(hello.get("error", "worker refused the connection")))
        proof = mac(paths.secret.read_bytes(), bytes.fromhex(str(hello["nonce"])), paths.key)
        send_frame(sock, {**header, "key": paths.key, "mac": proof, "waited_s": waited_s}, body)
        reply, out = recv_frame(sock)
    except TimeoutError as err:
        raise WorkerError(f"worker {paths.sock} did not answer in {sock.gettimeout()} s") from err
    except (ConnectionError, BrokenPipeError) as err:
        raise WorkerLostError(f"worker {paths.sock} dropped the connection ({err})") from err
    if not reply.get("ok"):
        raise WorkerError(str(reply.get("error", "worker refused the request")))
    return reply, out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def spawn(
    paths: WorkerPaths,
    job: Mapping[str, Any],
    owner: int = 0,
    threads: int = 0,
    idle_s: float = 0,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a detached worker for ``paths.key`` and wait until its socket is bound.

    Args:
        paths: where the worker lives (a private directory).
        job: ``{"run_config": flat config, "dataset": node's own file or ""}`` to load.
        owner: the worker exits when this PID is gone (0 = no owner).
        threads: torch threads (0 = torch's default).
        idle_s: exit after this long without a request (0 = never).
        env: the worker's environment (default: this process's).

    Raises:
        WorkerError: the worker exited or did not bind within :data:`BIND_TIMEOUT_S`.
    """
    write_private(paths.secret, secrets.token_bytes(32))
    write_private(paths.job, json.dumps(job).encode())
    with contextlib.suppress(FileNotFoundError):
        paths.sock.unlink()
    argv = [sys.executable, "-m", "smartfed.fed.worker", str(paths.dir), paths.key]
    argv += ["--owner", str(owner), "--threads", str(threads), "--idle_s", str(idle_s)]
    with open(paths.log, "ab") as fh:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True, env=None if env is None else dict(env),
        )  # fmt: skip
    deadline = time.monotonic() + BIND_TIMEOUT_S
    while not paths.sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = paths.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no log"]
            raise WorkerError(f"worker for {paths.key[:16]} did not start: {tail[0]}")
        time.sleep(0.05)
    log.info("started worker %d for %s in %s", proc.pid, paths.key[:16], paths.dir)
    return proc


def open_worker(
    paths: WorkerPaths, job: Mapping[str, Any], timeout_s: float, **spawn_kw: Any
) -> tuple[socket.socket, float]:
    """Connect to the worker of ``paths.key``, spawning it first when none listens.

    Returns:
        ``(connected socket, seconds spent spawning)``.
    """
    t0 = time.perf_counter()
    try:
        return connect(paths, timeout_s), 0.0
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    with _locked(paths.lock):  # one spawner per key, the others wait and reuse it
        try:
            return connect(paths, timeout_s), time.perf_counter() - t0
        except (FileNotFoundError, ConnectionRefusedError):
            spawn(paths, job, **spawn_kw)
        return connect(paths, timeout_s), time.perf_counter() - t0


def stop_workers(base: Path, grace_s: float = 5.0) -> list[int]:
    """Stop every worker whose pid file is under ``base`` (SIGTERM, then SIGKILL).

    Only processes whose command line is a SmartFed worker of that directory are signalled
    (a recycled PID is left alone). Returns the PIDs that were running.
    """
    import psutil

    victims = []
    for pid_file in sorted(Path(base).rglob("w-*.pid")):
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            proc = psutil.Process(int(pid_file.read_text().strip()))
            cmd = proc.cmdline()
            if "smartfed.fed.worker" in cmd and str(pid_file.parent) in cmd:
                victims.append(proc)
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(victims, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in victims]
