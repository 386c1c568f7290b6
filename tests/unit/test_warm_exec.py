"""warm_exec: a ClientApp task runs in a fork of the SuperExec (with the task's token, watching its
parent, the parent's exit handlers dropped), other task types go to Flower's subprocess executor,
and finished children are reaped."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus
from flwr.supernode.runtime import run_clientapp

from smartfed.fed import warm_exec

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")


def _spec(task_type: TaskType = TaskType.CLIENT_APP) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type, runtime_api_address="127.0.0.1:1", token="tok-123", insecure=True,
        root_certificates_path=None, runtime_dependency_install=False, parent_pid=None,
        suppress_output=False, task_id=7,
    )  # fmt: skip


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_client_app_task_runs_in_a_fork_with_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "child.json"

    def fake_run_clientapp(**kw: Any) -> None:  # what flwr-clientapp would run
        handlers = len(exit_handler.registered_exit_handlers)
        out.write_text(json.dumps({**kw, "certificates": None, "handlers": handlers}))
        sys.exit(0)  # flwr_exit ends every task this way

    monkeypatch.setattr(run_clientapp, "run_clientapp", fake_run_clientapp)
    exit_handler.add_exit_handler(lambda: None)  # the parent's (SuperExec's) own handler
    try:
        ex = warm_exec.ForkExecutor()
        result = ex.launch(_spec())
        assert result.status == LaunchResultStatus.ACCEPTED and len(ex.children) == 1
        assert _wait(next(iter(ex.children))) == 0
    finally:
        exit_handler.registered_exit_handlers.pop()
    got = json.loads(out.read_text())
    assert got["token"] == "tok-123" and got["runtime_api_address"] == "127.0.0.1:1"
    assert got["parent_pid"] == os.getpid() and got["insecure"] is True
    assert got["handlers"] == 0  # the child does not run the SuperExec's exit handlers


def test_failing_task_exits_nonzero_and_reconcile_reaps(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(**_kw: Any) -> None:
        raise RuntimeError("task failed")

    monkeypatch.setattr(run_clientapp, "run_clientapp", boom)
    ex = warm_exec.ForkExecutor()
    ex.launch(_spec())
    (pid,) = ex.children
    deadline = time.monotonic() + 30
    while ex.children and time.monotonic() < deadline:
        ex.reconcile()
        time.sleep(0.05)
    assert not ex.children  # reaped: no zombie left behind
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_other_task_types_use_flowers_subprocess_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = warm_exec.ForkExecutor()
    seen: list[Any] = []
    monkeypatch.setattr(ex.fallback, "launch", lambda spec: seen.append(spec) or "launched")
    assert ex.launch(_spec(TaskType.AGENT_APP)) == "launched"
    assert seen and not ex.children
