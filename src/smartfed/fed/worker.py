"""A node's long-lived worker: loads model + pool + data split once, serves train messages.

``python -m smartfed.fed.worker DIR KEY`` is started by :func:`smartfed.fed.worker_link.spawn`
(by the ClientApp on the first message of a bundle, or by ``smartfed deploy-local`` next to each
SuperNode). It binds ``DIR/w-<key[:16]>.sock`` (0600, in the 0700 ``DIR``) before importing torch,
loads the bundle named in ``DIR/w-<key[:16]>.json`` (refused unless that config derives ``KEY``),
then answers one connection at a time: nonce -> HMAC proof -> request -> reply. Requests from
another uid, with a wrong proof or whose config derives another key are refused and logged; the
worker keeps serving. It exits on SIGTERM/SIGINT, after ``--idle_s`` without a request, when the
``--owner`` process is gone, or (Linux) with its parent when that parent is the owner
(``PR_SET_PDEATHSIG``), removing its socket, secret, pid and job files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartfed.config import RunConfig
from smartfed.errors import SmartFedError
from smartfed.fed import worker_link as wl
from smartfed.fed.worker_key import bundle_digest, bundle_key, spec_of
from smartfed.log import configure_logging, get_logger

log = get_logger("smartfed.fed.worker")
ERROR_LINGER_S = 5.0
"""[D] After a failed load, answer waiting requests with the error for this long, then exit."""
CONN_TIMEOUT_S = 600.0
"""[D] A client that leaves one socket read/write pending this long is dropped (the worker is
single-threaded: a stalled client must not block the node's other messages forever)."""
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    """Linux: get SIGTERM when the parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_owner(owner: int) -> None:
    """SIGTERM this process within a second of ``owner`` disappearing (also while loading)."""

    def watch() -> None:
        while _alive(owner):
            time.sleep(1.0)
        log.info("owner %d is gone; exiting", owner)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def _peer_uid(conn: socket.socket) -> int:
    """The connecting process's uid (Linux ``SO_PEERCRED``; our own uid where unsupported)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return os.getuid()
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def bind(paths: wl.WorkerPaths) -> socket.socket:
    """Listen on ``paths.sock`` (bound under a temporary name, chmod 0600, then renamed)."""
    tmp = paths.dir / f".w-{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp))
    os.chmod(tmp, 0o600)
    srv.listen(64)
    os.replace(tmp, paths.sock)
    return srv


class Worker:
    """Serves one bundle key from one private directory."""

    def __init__(self, paths: wl.WorkerPaths, secret: bytes) -> None:
        self.paths, self.secret = paths, secret
        self.load_error = ""
        self.digest = ""
        self.served = 0

    def load(self, job: dict[str, Any], threads: int) -> None:
        """Load the job's bundle (kept as :attr:`load_error` when it fails)."""
        try:
            cfg = RunConfig.from_flat(job["run_config"])
            spec = spec_of(cfg, str(job.get("dataset", "")))
            if bundle_key(spec) != self.paths.key:
                raise wl.WorkerError("the job file does not derive this worker's key (stale)")
            self.digest = bundle_digest(spec)
            import torch

            from smartfed.fed.cache import get_bundle

            if threads > 0:
                torch.set_num_threads(threads)
            t0 = time.perf_counter()
            get_bundle(spec)
            log.info("bundle %s loaded in %.1f s", self.paths.key[:16], time.perf_counter() - t0)
        except Exception as err:  # reported to every waiting request, then the worker exits
            self.load_error = f"worker could not load the bundle: {type(err).__name__}: {err}"
            log.error("%s", self.load_error)

    def handle(self, conn: socket.socket) -> None:
        """Authenticate one connection and answer its request."""
        if _peer_uid(conn) != os.getuid():
            log.warning("refused a connection from uid %d", _peer_uid(conn))
            wl.send_frame(conn, {"ok": False, "error": "refused: another user"})
            return
        nonce = secrets.token_bytes(32)
        wl.send_frame(conn, {"nonce": nonce.hex(), "pid": os.getpid()})
        try:
            header, body = wl.recv_frame(conn)
        except wl.WorkerError:  # a liveness probe, or a client that went away
            return
        claimed = str(header.get("key", ""))
        if not secrets.compare_digest(
            str(header.get("mac", "")), wl.mac(self.secret, nonce, claimed)
        ):
            log.warning("refused a request with a wrong secret")
            wl.send_frame(conn, {"ok": False, "error": "refused: wrong worker secret"})
            return
        if claimed != self.paths.key:
            log.warning("refused a request for bundle %s", claimed[:16])
            wl.send_frame(conn, {"ok": False, "error": "refused: this worker holds another bundle"})
            return
        t0 = time.perf_counter()
        try:
            out = self._run(header, body)
        except Exception as err:  # noqa: BLE001 - every failure becomes the client's error reply
            if not isinstance(err, SmartFedError):
                log.exception("request failed")
            else:
                log.warning("request failed: %s", err)
            wl.send_frame(conn, {"ok": False, "error": f"{type(err).__name__}: {err}"})
            return
        self.served += 1
        log.info(
            "request %d: partition %s, waited %.2f s, served in %.2f s",
            self.served,
            header.get("partition_id"),
            float(header.get("waited_s", 0.0)),
            time.perf_counter() - t0,
        )
        wl.send_frame(conn, {"ok": True, "served": self.served, "pid": os.getpid()}, out)

    def _run(self, header: dict[str, Any], body: bytes) -> bytes:
        if self.load_error:
            raise wl.WorkerError(self.load_error)
        if header.get("op") != "train":
            raise wl.WorkerError(f"unknown worker op {header.get('op')!r}")
        cfg = RunConfig.from_flat(header["run_config"])
        own = str(header.get("dataset", ""))
        if bundle_digest(spec_of(cfg, own)) != self.digest:
            raise wl.WorkerError("refused: the request's config derives another bundle key")
        from smartfed.fed.client_work import train_content
        from smartfed.fed.envelope import from_bytes, to_bytes

        out = train_content(
            cfg, from_bytes(body), int(header["partition_id"]), own, float(header["waited_s"])
        )
        return to_bytes(out)

    def serve(self, srv: socket.socket, idle_s: float) -> None:
        """Accept connections one at a time until idle or (after a failed load) done."""
        srv.settimeout(1.0)
        last = time.monotonic()
        if self.load_error:
            idle_s = min(idle_s or ERROR_LINGER_S, ERROR_LINGER_S)
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                if idle_s and time.monotonic() - last > idle_s:
                    log.info("idle for %.0f s; exiting", idle_s)
                    return
                continue
            with conn:
                conn.settimeout(CONN_TIMEOUT_S)
                with contextlib.suppress(OSError):
                    self.handle(conn)
            last = time.monotonic()


def _cleanup(paths: wl.WorkerPaths) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(paths.pid.read_text().strip()) != os.getpid():
            return  # a newer worker owns these files now
    for f in (paths.sock, paths.secret, paths.pid, paths.job):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m smartfed.fed.worker", description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("key")
    p.add_argument("--owner", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--idle_s", type=float, default=wl.DEFAULT_IDLE_S)
    args = p.parse_args(argv)
    configure_logging(logging.INFO)
    if args.owner and args.owner == os.getppid():
        _set_parent_death_signal()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.owner:
        _watch_owner(args.owner)
    paths = wl.WorkerPaths(wl.private_dir(args.dir, create=False), args.key)
    worker = Worker(paths, paths.secret.read_bytes())
    job = json.loads(paths.job.read_text(encoding="utf-8"))
    wl.write_private(paths.pid, str(os.getpid()).encode())
    srv = bind(paths)
    log.info("worker %d serving %s in %s", os.getpid(), args.key[:16], args.dir)
    try:
        worker.load(job, args.threads)
        worker.serve(srv, args.idle_s)
    finally:
        srv.close()
        _cleanup(paths)
        log.info("worker %d stopped after %d requests", os.getpid(), worker.served)
    return 0


if __name__ == "__main__":
    sys.exit(main())
