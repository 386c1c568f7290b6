"""The sandbox contains hostile programs: each scores 0, leaves no trace, and evaluation goes on."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from smartfed.data.example import Example
from smartfed.data.tasks import get_task
from smartfed.eval.sandbox import detect_isolation, run_python


def test_ordinary_program_runs_and_prints() -> None:
    result = run_python("import math, json\nprint(json.dumps(math.factorial(5)))", timeout_s=10)
    assert result.ok and result.stdout.strip() == "120"


def test_exception_is_an_error() -> None:
    result = run_python("raise ValueError('boom')", timeout_s=10)
    assert result.status == "error" and "ValueError: boom" in result.stderr


def test_infinite_loop_is_killed_on_time() -> None:
    result = run_python("while True:\n    pass\n", timeout_s=1.5)
    assert result.status in ("timeout", "signal") and not result.ok
    assert result.seconds < 10


def test_sleeping_child_process_group_is_killed() -> None:
    result = run_python("import time\ntime.sleep(60)", timeout_s=1)
    assert result.status == "timeout" and result.seconds < 10


def test_huge_allocation_fails() -> None:
    result = run_python(
        "x = bytearray(8 * 1024 ** 3)\nprint('allocated')", timeout_s=10, memory_mb=512
    )
    assert not result.ok and "allocated" not in result.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess\nsubprocess.run(['echo', 'escaped'])",
        "import os\nos.system('echo escaped')",
        "import os\nos.execv('/bin/echo', ['echo', 'escaped'])",
        "import multiprocessing as mp\n"
        "p = mp.Process(target=print, args=('escaped',))\np.start()\np.join()",
    ],
)
def test_process_creation_is_refused(code: str) -> None:
    result = run_python(code, timeout_s=10)
    assert not result.ok and "escaped" not in result.stdout


def test_writing_outside_the_work_dir_is_refused(tmp_path: Path) -> None:
    target = Path("/tmp") / f"smartfed-sandbox-escape-{uuid.uuid4().hex}"
    code = f"open({str(target)!r}, 'w').write('x')\nopen('inside.txt', 'w').write('ok')"
    result = run_python(code, timeout_s=10)
    assert not result.ok and not target.exists()
    inside = run_python("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())")
    assert inside.ok and inside.stdout.strip() == "ok"


def test_deleting_outside_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    os.chmod(tmp_path, 0o777)
    result = run_python(f"import os\nos.remove({str(victim)!r})", timeout_s=10)
    assert not result.ok and victim.read_text() == "keep"


def test_big_files_are_capped() -> None:
    result = run_python("open('big', 'wb').write(b'x' * (64 << 20))", timeout_s=10, max_file_mb=4)
    assert not result.ok


@pytest.mark.parametrize(
    "code",
    [
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))",
        "import socket\nsocket.create_connection(('example.com', 80), timeout=2)",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)",
    ],
)
def test_sockets_are_refused(code: str) -> None:
    result = run_python(code, timeout_s=10)
    assert not result.ok


def test_ctypes_is_refused() -> None:
    result = run_python("import ctypes\nctypes.CDLL(None)", timeout_s=10)
    assert not result.ok and "ctypes" in result.stderr


def test_network_namespace_when_available() -> None:
    iso = detect_isolation()
    if "netns" not in iso.label:
        pytest.skip("unshare -n is not available on this machine")
    code = "print([ln.split(':')[0].strip() for ln in open('/proc/self/net/dev').readlines()[2:]])"
    result = run_python(code, timeout_s=10)
    if iso.landlock_abi:  # /proc is outside what Landlock lets the child read
        assert result.status == "error" and "PermissionError" in result.stderr
    else:
        assert result.ok and result.stdout.strip() == "['lo']"  # an empty network namespace


def test_hostile_predictions_score_zero_and_evaluation_goes_on() -> None:
    task = get_task("humaneval")
    meta = {
        "index": 0,
        "task_id": "t/0",
        "prompt_code": 'def add(a, b):\n    """Add."""\n',
        "entry_point": "add",
        "test": "def check(f):\n    assert f(1, 2) == 3\n",
    }
    ex = Example(prompt="p", meta=meta)
    hostile = [
        "```python\ndef add(a, b):\n    while True:\n        pass\n```",
        "```python\nimport os\nos.fork()\ndef add(a, b):\n    return a + b\n```",
        "```python\nimport socket\nsocket.socket()\ndef add(a, b):\n    return a + b\n```",
        "```python\nx = bytearray(16 * 1024 ** 3)\ndef add(a, b):\n    return a + b\n```",
    ]
    import smartfed.data.tasks.code as code_mod

    old = code_mod.CODE_TIMEOUT_S
    code_mod.CODE_TIMEOUT_S = 2.0
    try:
        scores = [task.score(h, ex) for h in hostile]
        good = task.score("```python\ndef add(a, b):\n    return a + b\n```", ex)
    finally:
        code_mod.CODE_TIMEOUT_S = old
    assert scores == [False] * 4 and good is True
