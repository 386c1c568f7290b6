"""The harness that runs INSIDE the sandbox child (stdlib only; started as ``python -I -S -B -c``).

:mod:`smartfed.eval.sandbox` passes this file's text to a fresh interpreter. The harness reads a
payload (``marshal`` format 2, plain values only) from standard input (then closes it), locks
itself down and only then runs the model's code. Order (each step binds all code that follows):

1. Resource limits (CPU seconds, address space, largest file, processes, no core dumps).
2. As real root only: drop to ``nobody`` (groups, gid, uid).
3. Landlock (when the kernel has it, ABI given by the parent; failure to apply is fatal):
   read-only access to the interpreter's standard library and the system library folders, full
   access to the sample's own work directory, nothing else; no ``execve`` anywhere; no TCP
   bind/connect (ABI >= 4); no signals to or abstract sockets of processes outside the sample
   (ABI >= 6).
4. seccomp (when the parent asks for it; failure is fatal): the kernel refuses new signal
   handlers and new threads, so none of the program's code runs between test stages or inside
   the audit hook.
5. An audit hook (second line, in-process): refuses sockets, process creation, ``ctypes``, heap
   walking, other threads' frames, trace/profile/audit hooks, signal handlers and threads; without
   Landlock also reads outside the allowed folders and writes outside the work directory.

Then every stage (the model's code, the tests, the call that runs them) is compiled and executed
SEPARATELY in one namespace, so the model's code cannot swallow the tests syntactically. The run's
random token lives only in the audit hook's closure (unreachable from Python code). After the last
stage returns, the harness raises the ``smartfed.sandbox.finish`` audit event; the hook writes
``<token> <value>`` to the result descriptor only when the harness's own frame (recorded before the
program started) stands at that line, then leaves through ``os._exit(0)`` (atexit hooks never run).
An early exit of any kind (``sys.exit``, ``os._exit``, an exception, a signal) writes no token, and
the parent scores that as a failure, whatever the exit status.
"""

import builtins
import marshal
import os
import stat
import sys

NOBODY = 65534

# Landlock (include/uapi/linux/landlock.h): syscall numbers are the same on every architecture.
_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_WRITE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE | _FS_READ_FILE | (1 << 14) | (1 << 15)
_SCOPE_ALL = 1 | 2  # abstract unix sockets, signals
_NET_TCP = 1 | 2  # bind, connect

_DENY = frozenset(
    {
        "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.sendto",
        "socket.sendmsg", "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
        "os.spawn", "os.kill", "os.killpg", "os.setuid", "os.chroot", "subprocess.Popen",
        "pty.spawn", "webbrowser.open", "os.startfile", "sys._current_frames",
        "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys.monitoring.register_callback", "_thread.interrupt_main",
        "sys.addaudithook",
    }
)  # fmt: skip
_DENY_IMPORT = frozenset(
    {"ctypes", "_ctypes", "_posixsubprocess", "_signal", "_thread", "_xxsubinterpreters",
     "_testcapi", "_testinternalcapi", "_testbuffer", "_xxtestfuzz"}
)  # fmt: skip
_MUTATE = frozenset(
    {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
        "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
        "shutil.copyfile", "os.mkfifo", "os.mknod",
    }
)  # fmt: skip


def _limits(cfg):
    import resource

    cpu = cfg["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["nproc"] > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"],) * 2)


def _drop_root():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _landlock(abi, work, read_roots):
    """Confine this process (and anything it could start) with Landlock; raise on any failure."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fs = (1 << 13) - 1  # v1 rights
    fs |= (1 << 13) if abi >= 2 else 0  # refer
    fs |= (1 << 14) if abi >= 3 else 0  # truncate
    fs |= (1 << 15) if abi >= 5 else 0  # ioctl on devices
    net = _NET_TCP if abi >= 4 else 0
    scoped = _SCOPE_ALL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)

    def check(ret, what):
        if ret < 0:
            raise OSError(ctypes.get_errno(), "landlock " + what)
        return ret

    ruleset = check(libc.syscall(_SYS_CREATE, ctypes.byref(attr), size, 0), "create_ruleset")

    class _Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = (("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))

    rules = [(work, fs & ~_FS_EXECUTE)] + [(p, _FS_READ_FILE | _FS_READ_DIR) for p in read_roots]
    rules.append(("/dev/null", _FS_READ_FILE | _FS_WRITE))
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FS_FILE_RIGHTS
        rule = _Beneath(rights & fs, fd)
        check(libc.syscall(_SYS_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), "add_rule")
        os.close(fd)
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.syscall(_SYS_RESTRICT, ruleset, 0), "restrict_self")
    os.close(ruleset)


# seccomp (include/uapi/linux/seccomp.h, filter.h, audit.h): arch -> (audit arch, rt_sigaction,
# clone); clone3 is 435 everywhere.
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 13, 56), "aarch64": (0xC00000B7, 134, 220)}
_CLONE_THREAD, _EPERM, _ENOSYS = 0x10000, 1, 38


def _seccomp():
    """Refuse, in the kernel, new signal handlers (``rt_sigaction``: EPERM) and new threads
    (``clone`` with CLONE_THREAD: EPERM; ``clone3``: ENOSYS, so libc falls back to ``clone``).
    A handler or a thread could otherwise run the program's code between the test stages or
    inside the audit hook. Other architectures or ABIs (x32) are killed. Raises on failure."""
    import ctypes

    arch = _SECCOMP_ARCH[os.uname().machine]
    kill, allow, errno_ret = 0x80000000, 0x7FFF0000, 0x00050000
    ld_w_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [
        (ld_w_abs, 0, 0, 4),  # arch
        (jeq, 1, 0, arch[0]),
        (ret, 0, 0, kill),
        (ld_w_abs, 0, 0, 0),  # syscall number
        (jge, 0, 1, 0x40000000),  # x32 ABI
        (ret, 0, 0, kill),
        (jeq, 0, 1, arch[1]),
        (ret, 0, 0, errno_ret | _EPERM),
        (jeq, 0, 1, 435),
        (ret, 0, 0, errno_ret | _ENOSYS),
        (jeq, 0, 3, arch[2]),
        (ld_w_abs, 0, 0, 16),  # clone flags (low 32 bits of args[0])
        (jset, 0, 1, _CLONE_THREAD),
        (ret, 0, 0, errno_ret | _EPERM),
        (ret, 0, 0, allow),
    ]

    class _Insn(ctypes.Structure):
        _fields_ = (
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        )

    class _Prog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn)))

    insns = (_Insn * len(prog))(*[_Insn(*p) for p in prog])
    fprog = _Prog(len(prog), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) < 0:  # PR_SET_SECCOMP, MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp")


def _normalize(path, work, _str=str, _bytes=bytes, _int=int, _type=type):
    """Absolute, ``..``-free form of ``path`` using only C-level str/list methods (no user code
    can run inside the audit hook). Returns None for anything that is not a str/bytes path."""
    if _type(path) is _bytes:
        path = _bytes.decode(path, "utf-8", "replace")
    if _type(path) is not _str:
        return None
    if not _str.startswith(path, "/"):
        path = _str.__add__(work + "/", path)
    out = []
    for part in _str.split(path, "/"):
        if part == "..":
            if out:
                out.pop()
        elif part and part != ".":
            out.append(part)
    return "/" + "/".join(out)


def _make_hook(token, result_fd, work, read_roots, finish_line, check_paths):
    """The audit hook. The run's token lives only in this closure: the hook object is unreachable
    from Python (heap walking, trace/profile hooks and signal handlers are refused), it never calls
    code the program could have replaced, and it writes the token only when the harness's own frame
    (recorded before the program starts) stands at its final line."""
    _type, _str, _float, _int, _denied = type, str, float, int, PermissionError
    write, exit_now, seek, truncate = os.write, os._exit, os.lseek, os.ftruncate
    deny, deny_import, mutate, normalize = _DENY, _DENY_IMPORT, _MUTATE, _normalize
    import gc

    gc_enabled, gc_disable, gc_enable = gc.isenabled, gc.disable, gc.enable
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    readable = (work, *read_roots, "/dev/null", "/dev/urandom")
    writable = (work, "/dev/null")
    genuine = []

    def under(path, roots):
        if _type(path) is _int:
            return True  # an already open descriptor
        full = normalize(path, work)
        if full is None:
            return False
        for root in roots:  # noqa: SIM110 - any() is a builtin the program may have replaced
            if full == root or _str.startswith(full, root + "/"):
                return True
        return False

    def refuse(what):
        raise _denied("sandbox: " + what + " is not allowed")

    def finish():
        frame = genuine[0] if genuine else None
        if frame is None or frame.f_lineno != finish_line:
            return
        value = frame.f_locals.get("value")
        if value is None:
            text = b"null"
        elif _type(value) is _float:
            text = _str.encode(_float.__repr__(value), "ascii")
        else:
            return
        seek(result_fd, 0, 0)
        truncate(result_fd, 0)
        write(result_fd, token + b" " + text)
        exit_now(0)

    def check(event, args):
        if event == "smartfed.sandbox.start":
            if not genuine and args and _type(args[0]).__name__ == "frame":
                genuine.append(args[0])
        elif event == "smartfed.sandbox.finish":
            finish()
        elif event in deny or _str.startswith(event, "ctypes."):
            refuse(event)
        elif event == "import":
            if _type(args[0]) is _str and args[0] in deny_import:
                refuse("import " + args[0])
        elif not check_paths:
            return
        elif event == "open":
            path, mode, flags = args
            writing = _type(mode) is _str and ("w" in mode or "a" in mode or "x" in mode)
            writing = writing or (_type(mode) is _str and "+" in mode)
            writing = writing or (_type(flags) is _int and flags & write_flags != 0)
            if not under(path, writable if writing else readable):
                refuse("opening a file outside the sandbox")
        elif event in ("os.listdir", "os.scandir"):
            if args and args[0] is not None and not under(args[0], readable):
                refuse("listing a folder outside the sandbox")
        elif event in mutate:
            for a in args:
                if a is not None and _type(a) is not _int and not under(a, writable):
                    refuse(event + " outside the working directory")

    def hook(event, args):
        if _type(event) is not _str:
            return  # events the runtime raises are exact str; anything else is the program's
        was = gc_enabled()
        if was:
            gc_disable()  # no finalizer may run while this frame is live
        try:
            check(event, args)
        finally:
            if was:
                gc_enable()

    return hook


def _refuse_hazards():
    """Replace ``signal.signal`` (a handler could run inside the hook) and thread creation (a
    thread could change the namespace between the test stages); re-imports are refused."""

    def refused(*args, **kwargs):
        raise PermissionError("sandbox: signal handlers and threads are not allowed")

    for module, names in (("_signal", ("signal",)), ("_thread", ("start_new_thread",
                          "start_new", "start_joinable_thread"))):  # fmt: skip
        mod = sys.modules.get(module)
        for name in names:
            if mod is not None and hasattr(mod, name):
                setattr(mod, name, refused)


def _error_line(exc):
    """One line naming the exception and the stage line (no frame access needed)."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        line, tb = tb.tb_lineno, tb.tb_next
    where = "" if line is None else " (line " + str(line) + ")"
    text = str(exc)[:2000]
    return type(exc).__name__ + (": " + text if text else "") + where + "\n"


def _stdlib_roots():
    """Folders the interpreter imports from (read-only for the sample)."""
    roots = [p for p in sys.path if p]
    for base in {sys.base_prefix, sys.base_exec_prefix}:
        roots.append(os.path.join(base, "lib"))
    return roots


def _main():
    payload = marshal.loads(sys.stdin.buffer.read())  # from the parent: dict of plain values
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)  # becomes fd 0
    # Bound now: the model's code may replace builtins and module attributes later.
    exit_now, audit, frame_now, stderr = os._exit, sys.audit, sys._getframe, sys.stderr
    run, build, evaluate, to_float = exec, compile, eval, float
    pristine = dict(builtins.__dict__)
    work = os.path.realpath(os.getcwd())
    roots = payload["read_roots"] + _stdlib_roots()
    read_roots = [os.path.realpath(r) for r in roots if os.path.exists(r)]
    read_roots += [r for r in roots if os.path.exists(r)]
    try:
        _limits(payload["limits"])
        if payload["drop_root"]:
            _drop_root()
        if payload["landlock_abi"] > 0:
            _landlock(payload["landlock_abi"], work, read_roots)
        if payload["seccomp"]:
            _seccomp()
    except Exception as exc:  # never run unconfined code
        stderr.write("sandbox setup failed: " + _error_line(exc))
        stderr.flush()
        exit_now(125)
    for name in ("ctypes", "ctypes._endian", "_ctypes"):
        sys.modules.pop(name, None)
    import gc

    no_collection = gc.disable
    _refuse_hazards()
    hook = _make_hook(
        payload.pop("token").encode("ascii"),
        payload["result_fd"],
        work,
        tuple(read_roots),
        payload["finish_line"],
        payload["landlock_abi"] == 0,
    )
    sys.addaudithook(hook)
    del hook
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    stages, value_expr = payload.pop("stages"), payload.pop("value_expr")
    del payload
    audit("smartfed.sandbox.start", frame_now())
    # Everything the loop needs is computed now: no builtin the model may replace is called
    # between two stages.
    order = [
        (i, source, "program.py" if i == 0 else f"<stage {i}>") for i, source in enumerate(stages)
    ]
    value, held = None, []
    try:
        for i, source, name in order:
            if i == 1:
                # From here the model's code runs only when the tests call it: no collector
                # finalizers, and no value the tests overwrite loses its last reference (which
                # would run its __del__ between two test stages).
                no_collection()
                held.extend(namespace.values())
            if i > 0:  # the tests see the real builtins, whatever the model's code did to them
                namespace["__builtins__"] = pristine.copy()
            run(build(source, name, "exec"), namespace)
        if value_expr:
            value = to_float(evaluate(build(value_expr, "<value>", "eval"), namespace))  # noqa: F841 - read by the hook
    except BaseException as exc:  # SystemExit included: leaving early is a failure
        try:
            stderr.write(_error_line(exc))
            stderr.flush()
        finally:
            exit_now(1)
    try:
        sys.stdout.flush()
        stderr.flush()
    except BaseException:
        exit_now(1)
    audit("smartfed.sandbox.finish")  # the finish line: the hook writes the token, then exits
    exit_now(1)


if __name__ == "__main__":
    _main()
