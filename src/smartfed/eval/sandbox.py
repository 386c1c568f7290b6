"""Run model-written Python in a locked-down child process. Nothing else in SmartFed executes it.

A pass means the tests ran to their end: the child harness (:mod:`smartfed.eval.sandbox_child`)
writes a random per-run token only after the last stage returns, and this module scores a run as
``ok`` only when that token comes back, whatever the exit status. Layers (docs/security.md,
section "Sandbox", says what each stops and what remains):

1. A fresh interpreter ``python -I -S -B`` with a minimal environment, in its own session; the
   program and tests arrive on an anonymous file as standard input (nothing is copied to disk but
   what the program writes itself), the token is never in the environment or on the command line.
2. A new PID namespace (``unshare --pid --fork --kill-child``) when the machine allows it: when the
   sample ends, the kernel kills everything it started, detached or not. Otherwise: its own session,
   RLIMIT_NPROC and a sweep of ``/proc`` for processes carrying the run's marker.
3. A new, empty network namespace with the PID namespace (as root directly, otherwise inside an
   unprivileged user namespace).
4. In the child, before the program: resource limits, ``nobody`` instead of root, Landlock
   (read-only standard library, a private scratch directory, no ``execve``, no TCP, no signals
   outside the sample), seccomp (no new signal handlers or threads) and an audit hook (a second
   line only).
5. A fresh private scratch directory per sample (also ``HOME`` and ``TMPDIR``), removed afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from smartfed.errors import SmartFedError
from smartfed.eval.sandbox_procs import MARKER_ENV, count_processes, sweep
from smartfed.log import get_logger

log = get_logger(__name__)

__all__ = ["MARKER_ENV", "Isolation", "SandboxResult", "detect_isolation", "run_python", "sweep"]

NOBODY = 65534
"""uid/gid the child runs as when SmartFed itself runs as root."""

SYSTEM_READ_ROOTS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache")
"""[D] Shared-library folders the child may read (extension modules link against them); the
interpreter's own standard-library folders are added by the child."""

_RESULT_BYTES = 256


class SandboxUnavailableError(SmartFedError):
    """No way to start a sandboxed Python child works on this machine."""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        status: ``ok`` (every stage ran to its end: the harness's token came back, exit 0),
            ``incomplete`` (exit 0 but no token: the program left before the end),
            ``error`` (non-zero exit: an exception, a failed assert, a refused action),
            ``timeout`` (wall clock exceeded; everything killed) or ``signal`` (killed by a limit).
        returncode: the child's exit status (negative = signal number).
        stdout: captured standard output (at most ``max_output_bytes``).
        stderr: captured standard error (at most ``max_output_bytes``).
        seconds: wall-clock duration.
        isolation: the OS layers that were active, e.g. ``pidns+netns+nobody+landlock7``.
        completed: the harness's token came back (the last stage returned).
        value: the float ``value_expr`` evaluated to (only when ``completed``), else None.
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    isolation: str
    completed: bool = False
    value: float | None = None

    @property
    def ok(self) -> bool:
        """True when every stage ran to its end in time."""
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """How children are started on this machine (detected once by :func:`detect_isolation`).

    Attributes:
        prefix: command put before the interpreter (``unshare ...``), may be empty.
        python: interpreter that runs the child (ours when the child's user can read it).
        pidns: the child is the first process of a new PID namespace.
        netns: the child has a new, empty network namespace.
        drop_root: the child drops from root to ``nobody`` before the program runs.
        landlock_abi: Landlock ABI version the child applies (0 = not available).
        seccomp: the child refuses new signal handlers and threads in the kernel (seccomp).
    """

    prefix: tuple[str, ...]
    python: str
    pidns: bool = False
    netns: bool = False
    drop_root: bool = False
    landlock_abi: int = 0
    seccomp: bool = False

    @property
    def label(self) -> str:
        """``+``-joined names of the active layers (``none`` when there are none)."""
        parts = [
            name
            for name, on in (
                ("pidns", self.pidns),
                ("netns", self.netns),
                ("nobody", self.drop_root),
                (f"landlock{self.landlock_abi}", self.landlock_abi > 0),
                ("seccomp", self.seccomp),
            )
            if on
        ]
        return "+".join(parts) or "none"


@functools.lru_cache(maxsize=1)
def child_source() -> str:
    """Source text of the harness the child runs (``sandbox_child.py``)."""
    return Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _finish_line() -> int:
    """Line of the harness's final ``audit("smartfed.sandbox.finish")`` (1-based)."""
    lines = child_source().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if 'audit("smartfed.sandbox.finish")' in ln)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = int(libc.syscall(444, None, 0, 1))  # landlock_create_ruleset(.., VERSION)
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def _interpreters() -> list[str]:
    """Our interpreter first, then the system python3 (readable by ``nobody`` when ours is not)."""
    base = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    found = [base]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and os.path.realpath(system) != base:
        found.append(os.path.realpath(system))
    return found


def _candidates() -> list[Isolation]:
    """Every isolation worth trying on this machine, strongest first."""
    unshare = shutil.which("unshare")
    root = os.geteuid() == 0
    abi = landlock_abi()
    user = () if root else ("--user", "--map-root-user")
    prefixes: list[tuple[tuple[str, ...], bool, bool]] = []
    if unshare:
        full = (unshare, *user, "--pid", "--fork", "--kill-child", "--net", "--")
        prefixes += [(full, True, True), ((unshare, *user, "--net", "--"), False, True)]
    prefixes.append(((), False, False))
    out = []
    for prefix, pidns, netns in prefixes:
        for python in _interpreters():
            for lock, filt in dict.fromkeys(((abi, True), (abi, False), (0, False))):
                out.append(Isolation(prefix, python, pidns, netns, root, lock, filt))
    return out


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Pick the strongest isolation this machine allows, by running a probe program in each.

    The probe imports a few standard modules through the full harness, so an interpreter the
    child's user cannot read, an ``unshare`` the kernel refuses or a Landlock that cannot be
    applied are each found here once, not at scoring time.
    """
    probe = ["import json, math, decimal, hashlib, collections, re, itertools"]
    result: SandboxResult | None = None
    for iso in _candidates():
        result = _run(iso, probe, None, timeout_s=15.0, limits=_Limits(1024, 4, 16, 4096))
        if result.ok:
            log.info("sandbox: isolation %s, interpreter %s", iso.label, iso.python)
            if not (iso.pidns and iso.landlock_abi):
                log.warning(
                    "sandbox: running with %s only; see docs/security.md (Sandbox) for what "
                    "that leaves open",
                    iso.label,
                )
            return iso
        log.debug("sandbox: %s unusable: %s", iso.label, result.stderr[-300:])
    raise SandboxUnavailableError(
        f"sandbox: no Python child could be started (tried {len(_candidates())} ways; last "
        f"error: {result.stderr.strip()[-200:] if result else 'none'}); code tasks need a working "
        "python3 and permission to start processes (docs/security.md, Sandbox)"
    )


@dataclass(frozen=True)
class _Limits:
    memory_mb: int
    max_processes: int
    max_file_mb: int
    max_output_bytes: int


def run_python(
    code: str | Sequence[str],
    timeout_s: float = 10.0,
    *,
    value_expr: str | None = None,
    memory_mb: int = 1024,
    max_processes: int = 4,
    max_file_mb: int = 16,
    max_output_bytes: int = 1 << 20,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandboxed child process and report what happened.

    Args:
        code: Python source written by a model (never executed in this process), or a sequence of
            stages (e.g. the model's code, the tests, the call that runs them) compiled and run one
            after the other in one namespace, so no stage can swallow the next one's text.
        timeout_s: wall-clock limit; everything the child started is killed when it is exceeded.
        value_expr: expression evaluated after the last stage (e.g. ``solution()``); its value,
            converted to ``float`` in the child, is :attr:`SandboxResult.value`.
        memory_mb: address-space limit (RLIMIT_AS).
        max_processes: processes the child's user may own beyond those it already has
            (RLIMIT_NPROC; not applied to a root child, which is never run).
        max_file_mb: largest file the child may write, stdout/stderr included (RLIMIT_FSIZE).
        max_output_bytes: stdout/stderr kept in the result.

    Returns:
        A :class:`SandboxResult`; hostile or broken programs give ``status != "ok"``, never an
        exception.
    """
    stages = [code] if isinstance(code, str) else list(code)
    limits = _Limits(memory_mb, max_processes, max_file_mb, max_output_bytes)
    return _run(detect_isolation(), stages, value_expr, timeout_s=timeout_s, limits=limits)


def _payload(iso: Isolation, stages: list[str], value_expr: str | None, **kw: object) -> bytes:
    """What the child harness reads from standard input (``marshal`` v2: any Python 3 reads it)."""
    return marshal.dumps(
        {
            "stages": stages,
            "value_expr": value_expr,
            "drop_root": iso.drop_root,
            "landlock_abi": iso.landlock_abi,
            "seccomp": iso.seccomp,
            "read_roots": list(SYSTEM_READ_ROOTS),
            "finish_line": _finish_line(),
            **kw,
        },
        2,
    )


def _run(
    iso: Isolation,
    stages: list[str],
    value_expr: str | None,
    *,
    timeout_s: float,
    limits: _Limits,
) -> SandboxResult:
    token, marker = secrets.token_hex(16), secrets.token_hex(8)
    uid = NOBODY if iso.drop_root else os.getuid()
    # RLIMIT_NPROC counts every process of the uid; with a PID namespace and no execve it adds
    # nothing, so the /proc scan it needs is skipped then.
    needs_nproc = uid != 0 and not (iso.pidns and iso.landlock_abi)
    nproc = count_processes(uid) + limits.max_processes + 1 if needs_nproc else 0
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="smartfed-sbx-") as box,
        tempfile.TemporaryFile() as inp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as res,
    ):
        if iso.drop_root:
            os.chown(box, NOBODY, NOBODY)
        os.chmod(box, 0o700)
        child_limits = {
            "cpu_s": max(1, int(timeout_s) + 1),
            "memory_bytes": limits.memory_mb << 20,
            "fsize_bytes": limits.max_file_mb << 20,
            "nproc": nproc,
        }
        inp.write(
            _payload(
                iso, stages, value_expr, token=token, result_fd=res.fileno(), limits=child_limits
            )
        )
        inp.seek(0)
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": box,
            "TMPDIR": box,
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
            MARKER_ENV: marker,
        }
        cmd = [*iso.prefix, iso.python, "-I", "-S", "-B", "-c", child_source()]
        proc = subprocess.Popen(  # noqa: S603 - the whole point: a locked-down child
            cmd,
            cwd=box,
            env=env,
            stdin=inp,
            stdout=out,
            stderr=err,
            pass_fds=(res.fileno(),),
            start_new_session=True,
        )
        timed_out = _wait(proc, timeout_s)
        if not iso.pidns:
            sweep(marker, proc.pid)
        completed, value = _read_result(res, token)
        rc = proc.returncode
        return SandboxResult(
            _status(timed_out, rc, completed),
            rc,
            _read_capped(out, limits.max_output_bytes),
            _read_capped(err, limits.max_output_bytes),
            time.monotonic() - start,
            iso.label,
            completed and not timed_out,
            value if completed and not timed_out else None,
        )


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for the child; kill its process group in any case; True when it timed out."""
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return timed_out


def _status(timed_out: bool, rc: int, completed: bool) -> str:
    if timed_out:
        return "timeout"
    if rc < 0:
        return "signal"
    if rc > 0:
        return "error"
    return "ok" if completed else "incomplete"


def _read_result(res: IO[bytes], token: str) -> tuple[bool, float | None]:
    """``(token came back, value)`` from the result file; anything malformed is a failure."""
    res.seek(0)
    head, _, rest = res.read(_RESULT_BYTES).partition(b" ")
    if not hmac.compare_digest(head, token.encode("ascii")):
        return False, None
    if rest == b"null":
        return True, None
    try:
        return True, float(rest.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False, None


def _read_capped(fh: IO[bytes], limit: int) -> str:
    fh.seek(0)
    return fh.read(limit).decode("utf-8", "replace")
