"""Run model-written Python in a locked-down child process. Nothing else in SmartFed executes it.

Layers (docs/sandbox.md says what they do and do not stop):

1. A fresh interpreter ``python -I -S -B`` (isolated: no site-packages, no PYTHON* env, no bytecode
   writes) with a minimal environment, started in its own session so the whole process group is
   killed.
2. OS limits set before ``exec``: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_NPROC (processes),
   RLIMIT_FSIZE (largest file), RLIMIT_CORE=0; a wall-clock timeout that kills the process group.
3. A throw-away temporary working directory (also ``HOME`` and ``TMPDIR``), deleted afterwards.
4. Network: a new, empty network namespace via ``unshare -n`` when the machine allows it (detected
   once); as root the child also drops to ``nobody`` so RLIMIT_NPROC and file permissions apply.
5. In-process guards installed before user code: an audit hook that refuses sockets, process
creation
   (fork/exec/spawn/system/subprocess), ctypes, and writes/deletes outside the
   working
   directory. These are a second line only: a determined attacker can get around in-process guards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smartfed.log import get_logger

log = get_logger(__name__)

NOBODY = 65534
"""uid/gid the child runs as when SmartFed itself runs as root."""

_GUARD = r"""
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_DENY = frozenset({
    "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.sendto",
    "socket.sendmsg", "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "os.setuid", "os.chroot", "webbrowser.open", "os.startfile",
})
_MUTATE = frozenset({
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
    "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_realpath, _sep = os.path.realpath, os.sep

def _inside(p):
    if isinstance(p, bytes):
        p = p.decode("utf-8", "replace")
    if not isinstance(p, str):
        return True
    full = _realpath(p)
    return full == _ROOT or full.startswith(_ROOT + _sep)

def _hook(event, args):
    if event in _DENY:
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        writing = writing or bool((flags or 0) & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError("sandbox: writing outside the working directory is not allowed")
    elif event in _MUTATE:
        for a in args:
            if isinstance(a, (str, bytes)) and not _inside(a):
                msg = "sandbox: " + event + " outside the working directory is not allowed"
                raise PermissionError(msg)

sys.addaudithook(_hook)
sys.argv = ["program.py"]
with open("program.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
del _f
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        status: ``ok`` (exit 0), ``error`` (non-zero exit, e.g. an exception or a refused action),
            ``timeout`` (wall clock exceeded; process group killed) or ``signal`` (killed by a
            limit).
        returncode: the child's exit status (negative = signal number).
        stdout: captured standard output (at most ``max_output_bytes``).
        stderr: captured standard error (at most ``max_output_bytes``).
        seconds: wall-clock duration.
        isolation: ``netns+nobody`` | ``netns`` | ``nobody`` | ``none`` (which OS layers were
        active).
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    isolation: str

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 in time."""
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """How children are started on this machine (detected once by :func:`detect_isolation`).

    Attributes:
        prefix: command put before the interpreter (``unshare ...``), may be empty.
        python: interpreter that runs the child (the same version as ours when it is usable).
        label: ``netns+nobody`` | ``netns`` | ``nobody`` | ``none``.
        drop_root: the child drops from root to ``nobody`` itself (when ``unshare`` is missing).
    """

    prefix: tuple[str, ...]
    python: str
    label: str
    drop_root: bool = False


def _interpreters() -> list[str]:
    """Our interpreter first, then the system python3 (usable by ``nobody`` when ours is under
    /root).
    """
    base = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    found = [base]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and os.path.realpath(system) != base:
        found.append(os.path.realpath(system))
    return found


def _works(cmd: list[str]) -> bool:
    try:
        probe = subprocess.run(cmd, capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Pick the strongest isolation this machine allows, by trying each candidate once.

    Order: empty network namespace + ``nobody`` (root), user+network namespace (non-root, needs
    unprivileged user namespaces), ``nobody`` without a namespace (root), nothing.
    """
    unshare = shutil.which("unshare")
    root = os.geteuid() == 0
    candidates: list[Isolation] = []
    for python in _interpreters():
        if unshare and root:
            nobody = (unshare, "-n", "-G", str(NOBODY), "-S", str(NOBODY), "--")
            candidates.append(Isolation(nobody, python, "netns+nobody"))
        if unshare and not root:
            candidates.append(Isolation((unshare, "-r", "-n", "--"), python, "netns"))
    if unshare and root:
        candidates.append(Isolation((unshare, "-n", "--"), _interpreters()[0], "netns"))
    for iso in candidates:
        if _works([*iso.prefix, iso.python, "-I", "-S", "-c", "pass"]):
            log.info("sandbox: isolation %s, interpreter %s", iso.label, iso.python)
            return iso
    log.warning(
        "sandbox: `unshare -n` is not available; network is blocked only by in-process guards"
    )
    if root:
        return Isolation((), _interpreters()[-1], "nobody", drop_root=True)
    return Isolation((), _interpreters()[0], "none")


def _count_processes(uid: int) -> int:
    """Number of processes (threads not counted) currently owned by ``uid``."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry.path).st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


def _preexec(
    cpu_s: int, memory_bytes: int, nproc: int, fsize_bytes: int, drop_root: bool
) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if drop_root:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return apply


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as fh:
        data = fh.read(limit)
    return data.decode("utf-8", "replace")


def run_python(
    code: str,
    timeout_s: float = 10.0,
    *,
    memory_mb: int = 1024,
    max_processes: int = 4,
    max_file_mb: int = 16,
    max_output_bytes: int = 1 << 20,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandboxed child process and report what happened.

    Args:
        code: Python source written by a model (never executed in this process).
        timeout_s: wall-clock limit; the child's process group is killed when it is exceeded.
        memory_mb: address-space limit (RLIMIT_AS).
        max_processes: processes the child's user may own beyond those it already has
        (RLIMIT_NPROC).
        max_file_mb: largest file the child may write, stdout/stderr included (RLIMIT_FSIZE).
        max_output_bytes: stdout/stderr kept in the result.

    Returns:
        A :class:`SandboxResult`; hostile or broken programs give ``status != "ok"``, never an
        exception.
    """
    iso = detect_isolation()
    as_nobody = "nobody" in iso.label
    target_uid = NOBODY if as_nobody else os.geteuid()
    nproc = _count_processes(target_uid) + max_processes + 1
    cpu_s = max(1, int(timeout_s) + 1)
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="smartfed-sbx-") as box,
        tempfile.TemporaryDirectory(prefix="smartfed-sbx-out-") as outdir,
    ):
        work = Path(box)
        (work / "program.py").write_text(code, encoding="utf-8")
        if as_nobody:
            os.chown(work, NOBODY, NOBODY)
            os.chown(work / "program.py", NOBODY, NOBODY)
        out_path, err_path = Path(outdir) / "stdout", Path(outdir) / "stderr"
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": box,
            "TMPDIR": box,
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
        }
        cmd = [*iso.prefix, iso.python, "-I", "-S", "-B", "-c", _GUARD]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(  # noqa: S603 - the whole point: a locked-down child
                cmd,
                cwd=box,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_preexec(
                    cpu_s, memory_mb << 20, nproc, max_file_mb << 20, iso.drop_root
                ),
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        rc = proc.returncode
        status = "timeout" if timed_out else "ok" if rc == 0 else "signal" if rc < 0 else "error"
        return SandboxResult(
            status,
            rc,
            _read_capped(out_path, max_output_bytes),
            _read_capped(err_path, max_output_bytes),
            seconds,
            iso.label,
        )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
