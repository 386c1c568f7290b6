"""Hostile predictions cannot rig the score: early exits, detached processes, forged tokens,
reading answers, leftovers. Every problem here is built in the test (no dataset needed)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import smartfed.eval.sandbox as sandbox
from smartfed.data.example import Example
from smartfed.data.tasks import get_task
from smartfed.data.tasks.pal import run_solution
from smartfed.eval.sandbox import detect_isolation, run_python

HE_META = {
    "index": 0,
    "task_id": "t/0",
    "prompt_code": 'import math\n\n\ndef add(a, b):\n    """Add."""\n',
    "entry_point": "add",
    "test": "def check(f):\n    assert f(1, 2) == 3\n    assert abs(f(-1, 1)) == 0\n",
}
MBPP_META = {"index": 0, "task_id": 11, "tests": ["assert add(1, 2) == 3"], "setup": ""}

EXITS = {
    "raise_systemexit": "raise SystemExit(0)",
    "os_exit": "import os\nos._exit(0)",
    "sys_exit": "import sys\nsys.exit()",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)",
    "exit_in_call": "import sys\ndef _f():\n    sys.exit(0)\n_f()",
}
WRONG = "def add(a, b):\n    return 0\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def fence(code: str) -> str:
    return f"```python\n{code}\n```"


def score(task_name: str, code: str) -> bool:
    meta = HE_META if task_name == "humaneval" else MBPP_META
    return get_task(task_name).score(fence(code), Example(prompt="p", meta=meta))


@pytest.mark.parametrize("task_name", ["humaneval", "mbpp"])
def test_right_answer_passes_wrong_answer_fails(task_name: str) -> None:
    assert score(task_name, RIGHT) is True
    assert score(task_name, WRONG) is False


@pytest.mark.parametrize("task_name", ["humaneval", "mbpp"])
@pytest.mark.parametrize("trick", sorted(EXITS))
def test_every_exit_trick_scores_zero(task_name: str, trick: str) -> None:
    # a wrong answer that exits 0 before (or, for atexit, after) the tests ...
    assert score(task_name, WRONG + EXITS[trick]) is False
    if trick != "atexit":  # ... and a right one that never lets the tests run
        assert score(task_name, RIGHT + EXITS[trick]) is False


def test_atexit_after_a_failing_assert_is_not_a_pass() -> None:
    assert score("mbpp", "import atexit, os\natexit.register(os._exit, 0)\n" + WRONG) is False


@pytest.mark.parametrize("tail", ['x = """', "if False:", "x = (", "#"])
def test_the_model_cannot_swallow_the_tests(tail: str) -> None:
    assert score("humaneval", WRONG + tail) is False
    assert score("mbpp", WRONG + tail) is False


def test_patched_builtins_do_not_reach_the_tests() -> None:
    code = "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 3\n"
    assert score("humaneval", code) is False  # check's abs(f(-1, 1)) == 0 needs the real abs


FORGERS = {
    "frames": (
        "import sys, os, re\n"
        "def add(a, b):\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for v in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
        "            for s in (v if isinstance(v, (list, tuple)) else [v]):\n"
        "                s = s.decode() if isinstance(s, bytes) else s\n"
        "                if isinstance(s, str) and re.fullmatch('[0-9a-f]{32}', s):\n"
        "                    for fd in range(3, 30):\n"
        "                        try:\n"
        "                            os.write(fd, s.encode() + b' null')\n"
        "                        except OSError:\n"
        "                            pass\n"
        "        f = f.f_back\n"
        "    os._exit(0)\n"
    ),
    "heap": "import gc\nobjs = gc.get_objects()\nimport os\nos._exit(0)\n" + WRONG,
    "audit_event": "import sys, os\nsys.audit('smartfed.sandbox.finish')\nos._exit(0)\n" + WRONG,
    "start_again": (
        "import sys, os\nsys.audit('smartfed.sandbox.start', sys._getframe())\n"
        "sys.audit('smartfed.sandbox.finish')\nos._exit(0)\n" + WRONG
    ),
    "trace_jump": (
        "import sys\n"
        "def _t(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check' and event == 'line':\n"
        "        frame.f_lineno = frame.f_code.co_firstlineno + 3\n"
        "    return _t\n"
        "sys.settrace(_t)\n" + WRONG
    ),
    "signal_handler": (
        "import signal, os\nsignal.signal(signal.SIGALRM, lambda s, f: os._exit(0))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.01)\n" + WRONG
    ),
    "proc_fds": "import os\nprint(os.listdir('/proc/self/fd'))\nos._exit(0)\n" + WRONG,
}


SWAPPERS = {
    "audit_hook": (
        "import sys\ng = globals()\n"
        "def _h(event, args):\n"
        "    if event == 'exec' and 'check' in g:\n"
        "        g['check'] = lambda f: None\n"
        "sys.addaudithook(_h)\n" + WRONG
    ),
    "finalizer": (
        "g = globals()\n"
        "class _E:\n"
        "    def __del__(self):\n"
        "        g['check'] = lambda f: None\n"
        "check = _E()\n" + WRONG
    ),
    "thread": (
        "import threading, time\ng = globals()\n"
        "def _swap():\n"
        "    while 'check' not in g:\n"
        "        time.sleep(0.0001)\n"
        "    g['check'] = lambda f: None\n"
        "threading.Thread(target=_swap, daemon=True).start()\n" + WRONG
    ),
}


@pytest.mark.parametrize("name", sorted(SWAPPERS))
def test_the_model_cannot_replace_the_tests_between_stages(name: str) -> None:
    assert score("humaneval", SWAPPERS[name]) is False


IMP = (
    "import _imp, importlib.machinery as m\n"
    "def _fresh(name):\n"
    "    return _imp.create_builtin(m.ModuleSpec(name, m.BuiltinImporter, origin='built-in'))\n"
)
KERNEL_REFUSED = {
    # a fresh _thread / _signal module gets around the in-process refusals; seccomp does not
    "thread": IMP + "_fresh('_thread').start_new_thread(print, ('started',))\n",
    "signal": IMP + "_fresh('_signal').signal(14, lambda s, f: None)\n",
}


@pytest.mark.parametrize("name", sorted(KERNEL_REFUSED))
def test_fresh_thread_and_signal_modules_are_refused_by_the_kernel(name: str) -> None:
    if not detect_isolation().seccomp:
        pytest.skip("seccomp is not available here (docs/security.md lists what that leaves)")
    result = run_python(KERNEL_REFUSED[name] + "print('installed')\n")
    assert result.status == "error" and "installed" not in result.stdout
    assert ("can't start new thread" if name == "thread" else "Errno 1") in result.stderr


@pytest.mark.parametrize("name", sorted(FORGERS))
def test_the_token_cannot_be_forged(name: str) -> None:
    assert score("humaneval", FORGERS[name]) is False
    assert score("mbpp", FORGERS[name]) is False


def _alive_with(needle: str) -> list[int]:
    """Processes whose command line holds ``needle`` (only ones this test started have it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def _tamper(target: Path, tag: str) -> str:
    """A sample that starts a detached writer (new session) through ``_posixsubprocess``."""
    child = (
        f"import os, time; os.setsid(); time.sleep(1.0); "
        f"open({str(target)!r}, 'w').write('tampered')  # {tag}"
    )
    return (
        "import sys, _imp, importlib.machinery as m\n"
        "spec = m.ModuleSpec('_posixsubprocess', m.BuiltinImporter, origin='built-in')\n"
        "sys.modules['_posixsubprocess'] = _imp.create_builtin(spec)\n"
        "import multiprocessing.util as u\n"
        f"u.spawnv_passfds(sys.executable, [sys.executable, '-c', {child!r}], [])\n" + WRONG
    )


@pytest.mark.parametrize("fallback", [False, True], ids=["strongest", "no_pidns_no_landlock"])
def test_detached_process_does_not_outlive_the_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool
) -> None:
    if fallback:
        weak = dataclasses.replace(
            detect_isolation(), prefix=(), pidns=False, netns=False, landlock_abi=0
        )
        monkeypatch.setattr(sandbox, "detect_isolation", lambda: weak)
    os.chmod(tmp_path, 0o777)
    target, tag = tmp_path / "victim.py", uuid.uuid4().hex
    assert score("humaneval", _tamper(target, tag)) is False
    assert score("mbpp", _tamper(target, tag)) is False
    assert _alive_with(tag) == []
    time.sleep(1.5)
    assert not target.exists() and _alive_with(tag) == []


def test_the_sweep_kills_a_setsid_process_that_carries_the_marker() -> None:
    import subprocess
    import sys

    marker, tag = uuid.uuid4().hex, uuid.uuid4().hex
    env = {**os.environ, sandbox.MARKER_ENV: marker}
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep(30)  # {tag}"],
        env=env,
        start_new_session=True,
    )
    try:
        assert sandbox.sweep(marker, session=-1) == 1
        assert proc.wait(timeout=10) < 0 and _alive_with(tag) == []
    finally:
        proc.kill()


def test_a_solution_cannot_read_the_answer_file(tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"target": 1234.5}\n')
    os.chmod(tmp_path, 0o755)
    os.chmod(answers, 0o644)  # readable by anyone: only the sandbox stands in the way
    program = (
        f"def solution():\n    import json\n"
        f"    return json.loads(open({str(answers)!r}).read())['target']\n"
    )
    assert run_solution(program) is None
    task = get_task("gsm_hard")
    ex = Example(prompt="p", answer=repr(1234.5), meta={"index": 0})
    extracted, correct = task.judge(fence(program), ex)
    assert extracted is None and correct is False
    assert run_solution("def solution():\n    return 1234.5\n") == 1234.5


def test_returned_values_are_bounded_numbers() -> None:
    program = "def solution():\n    return open('/etc/hostname').read()\n"
    assert run_solution(program) is None  # reading outside is refused; strings are not numbers
    assert run_solution("def solution():\n    return 'abc'\n") is None
    assert run_solution("def solution():\n    return float('nan')\n") is None


def test_no_leftovers_in_shared_temp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    outside = Path("/tmp") / f"smartfed-hostile-{uuid.uuid4().hex}"
    programs = [
        "import tempfile\nfor _ in range(3):\n    tempfile.mkstemp()\n",
        f"open({str(outside)!r}, 'w').write('x')\n",
        f"import os\nfd = os.open('/tmp', os.O_RDONLY)\nos.open({outside.name!r}, "
        "os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n",
        "open('left.txt', 'w').write('x')\nimport os\nos.makedirs('a/b/c')\n",
    ]
    for code in programs:
        run_python(code, timeout_s=10)
    assert list(shared.iterdir()) == [] and not outside.exists()


def test_samples_do_not_see_each_other() -> None:
    first = run_python("import os\nopen('secret', 'w').write('s')\nprint(os.getcwd())")
    assert first.ok
    box = first.stdout.strip()
    assert not Path(box).exists()
    second = run_python(f"import os\nprint(os.listdir({os.path.dirname(box)!r}))")
    assert not second.ok


def test_child_runs_as_nobody_when_we_are_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops to nobody")
    result = run_python("import os\nprint(os.getuid(), os.getgid())")
    assert result.ok and result.stdout.split() == ["65534", "65534"]


def test_works_for_a_user_who_is_not_root(tmp_path: Path) -> None:
    """Run the sandbox from a parent process that is ``nobody`` (user namespaces or fallbacks)."""
    import shutil
    import subprocess

    import smartfed

    system_python, setpriv = shutil.which("python3", path="/usr/bin:/bin"), shutil.which("setpriv")
    if os.geteuid() != 0 or not system_python or not setpriv:
        pytest.skip("needs root (to become nobody), setpriv and a system python3")
    src = str(Path(smartfed.__file__).resolve().parents[1])
    script = (
        f"import sys; sys.path.insert(0, {src!r})\n"
        "from smartfed.eval.sandbox import run_python, detect_isolation\n"
        "print(detect_isolation().label)\n"
        "print(run_python(['def add(a, b):\\n    return a + b', 'assert add(1, 2) == 3']).status)\n"
        "print(run_python(['import os\\nos._exit(0)', 'assert False']).status)\n"
        "print(run_python(['raise SystemExit(0)', 'assert False']).status)\n"
    )
    probe = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", system_python, "-I"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    os.chmod(tmp_path, 0o777)
    if subprocess.run(
        [*probe, "-c", script.splitlines()[0] + "\nimport smartfed.eval.sandbox"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=False,
    ).returncode:
        pytest.skip("the source tree is not readable by nobody here")
    out = subprocess.run(
        [*probe, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    assert out[1:] == ["ok", "incomplete", "error"], out
