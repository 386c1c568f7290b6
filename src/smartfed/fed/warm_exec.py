"""A SuperExec for SmartFed's SuperNodes whose ``flwr-clientapp`` processes start already warm.

Flower 1.41 runs every message in a fresh ``flwr-clientapp`` process, started by the SuperNode's
SuperExec (``flower-superexec``, executor ``subprocess``): interpreter start plus the imports of
``flwr.supernode.cli`` and the app, 1.1 s on an idle core of the 2-core test machine and up to
7.7 s when it is saturated, on the critical path of every round. This module is a drop-in for
that SuperExec (``flower-supernode --isolation process`` + ``python -m smartfed.fed.warm_exec
--runtime-api-address <the node's Runtime API>``): it runs Flower's own SuperExec loop
(``flwr.supercore.superexec.run_superexec``: same Runtime API, same task tokens, same poll
interval ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``) with an executor that starts each ClientApp task
as a ``fork`` of this process, which has imported Flower's ClientApp runtime and SmartFed's
torch-free ClientApp once. The child is a ``flwr-clientapp`` in every other respect: it runs
``flwr.supernode.runtime.run_clientapp`` with the task's token, pulls the message, runs the app,
pushes the reply, exits; it watches its parent like Flower's (``parent_pid``). Other task types
(and any platform without ``fork``) are started as Flower's subprocess executor would.

[D] The child is forked from a process that holds no torch, no model and no open task; its
exit handlers and signal handlers are reset before it runs. Its first retry of a message object
its SuperNode is still receiving comes after 0.1 s instead of Flower's 1 s
(:mod:`smartfed.fed.flower_waits`): a warm child asks within milliseconds, so it always races.
If this Flower release lacks the hooks used here (``get_executor`` in ``run_superexec``), the
process logs a warning and runs Flower's SuperExec unchanged (one ``flwr-clientapp`` process per
message, as before).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from smartfed.log import configure_logging, get_logger

log = get_logger("smartfed.fed.warm_exec")
PRELOAD = ("flwr.supernode.runtime.run_clientapp", "smartfed.fed.client_app")
"""[D] Modules imported once in the parent, so a forked ClientApp starts with them loaded."""


def _run_child(spec: Any) -> int:
    """Body of a forked ClientApp task (the ``flwr-clientapp`` command without its start-up)."""
    from flwr.supercore.exit import exit_handler
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    with contextlib.suppress(AttributeError):
        exit_handler.registered_exit_handlers.clear()  # the parent's handlers are not ours
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    sys.argv = ["flwr-clientapp", "--runtime-api-address", spec.runtime_api_address]
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=os.getppid(),
            runtime_dependency_install=spec.runtime_dependency_install,
        )
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on stderr like an uncaught exception
        traceback.print_exc()
        return 1
    return 0


class ForkExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks are forked, the rest use ``subprocess``."""

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self.fallback = SubprocessExecutor()
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set[Any], **kw: Any) -> Any:
        """Every task type can start now (no capacity gate), as with ``subprocess``."""
        return self.fallback.get_eligible_capacity(supported_task_types, **kw)

    def wait_for_capacity(self, task_type: Any = None, **kw: Any) -> None:
        """No capacity gate."""

    def launch(self, spec: Any) -> Any:
        """Fork a ClientApp task (other task types: Flower's subprocess launch)."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP or not hasattr(os, "fork"):
            return self.fallback.launch(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the task process
            code = 1
            try:
                code = _run_child(spec)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.children.add(pid)
        log.debug("forked ClientApp task %d as pid %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the task processes that ended (called between two task polls)."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)

    def close(self) -> None:
        """Nothing to release: running tasks watch this process and stop with it."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smartfed.fed.warm_exec", description=__doc__.splitlines()[0]
    )
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API")
    p.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    p.add_argument("--root-certificates", default=None, help="CA of the Runtime API's TLS")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this PID is gone")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the SuperExec loop with :class:`ForkExecutor` (see the module docstring)."""
    args = _parser().parse_args(argv)
    configure_logging(logging.INFO)
    try:
        from flwr.supercore.superexec import run_superexec as loop

        if not hasattr(loop, "get_executor"):
            raise ImportError("flwr.supercore.superexec.run_superexec.get_executor")
        for module in PRELOAD:
            __import__(module)
        from flwr.supernode.runtime import run_clientapp

        from smartfed.fed.flower_waits import quick_backoff

        quick_backoff(run_clientapp, "pull_and_inflate_object_from_tree")  # for every child
    except ImportError as err:  # another Flower release: its own SuperExec, one process a task
        log.warning("no warm ClientApp start (%s); running flower-superexec", err)
        from flwr.supercore.cli.flower_superexec import flower_superexec

        sys.argv = ["flower-superexec", *(argv if argv is not None else sys.argv[1:])]
        flower_superexec()
        return 0
    executor = ForkExecutor()
    loop.get_executor = lambda *_a, **_kw: executor  # type: ignore[attr-defined]
    log.info("warm ClientApp starts (fork) for the SuperNode at %s", args.runtime_api_address)
    loop.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
