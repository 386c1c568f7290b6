"""The per-node worker behind the deployment ClientApp: one real worker process (tiny model) is
reused across rounds, refuses foreign or mismatched requests, is replaced after a kill -9 in the
middle of a request, and removes its files on SIGTERM. Only processes started here are checked."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from fedkit import tiny_config, write_dataset
from flwr.app import RecordDict

from smartfed.config import RunConfig
from smartfed.fed import wire
from smartfed.fed import worker_link as wl
from smartfed.fed.cache import BundleSpec, get_bundle
from smartfed.fed.client_work import train_content
from smartfed.fed.forwarder import forward_train
from smartfed.fed.worker_key import bundle_key, spec_of

WAIT_S = 30.0


def _instruction(cfg: RunConfig, server_round: int, steps: int = 2) -> RecordDict:
    """A real round-``server_round`` train instruction for the tiny bundle (initial routers)."""
    bundle = get_bundle(BundleSpec.from_config(cfg))
    arrays = wire.arrays_from_numpy(bundle.initial_state)
    content, _ = wire.pack_state(arrays, cfg.fed.wire_dtype)
    k, m = cfg.router.topk_experts, bundle.experts_per_matrix
    routed = [wire.matrix_of(key) for key in bundle.initial_state if key.endswith(".router.weight")]
    quotas = {matrix: min(k, m[matrix]) for matrix in routed}
    rec = wire.pack_train_config(quotas, steps, cfg.train.batch_size, cfg.train.learning_rate)
    rec[wire.SERVER_ROUND] = server_round
    content[wire.CONFIG] = rec
    return content


@dataclasses.dataclass
class Node:
    cfg: RunConfig
    dir: Path
    node_config: dict[str, Any]

    @property
    def paths(self) -> wl.WorkerPaths:
        return wl.WorkerPaths(self.dir, bundle_key(spec_of(self.cfg)))

    def worker_pid(self) -> int:
        return int(self.paths.pid.read_text())

    def train(self, server_round: int, steps: int = 2) -> Any:
        out = forward_train(
            self.cfg, _instruction(self.cfg, server_round, steps), self.node_config, 0
        )
        assert out is not None, "the forwarder fell back to in-process training"
        return wire.unpack_train_res(out)


@pytest.fixture(scope="module")
def node(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    data = write_dataset(tmp_path_factory.mktemp("data") / "rows.jsonl")
    cfg = tiny_config(
        tiny_model_dir,
        tiny_pool,
        data,
        tmp_path_factory.mktemp("run"),
        track_energy=False,
        device="cpu",
    )
    wdir = Path(tempfile.mkdtemp(prefix="sfw-"))  # short: a socket path has ~100 bytes
    cfg_node = {"worker-dir": str(wdir), "worker-owner": os.getpid(), "worker-idle-s": 120}
    yield Node(cfg, wdir, cfg_node)
    wl.stop_workers(wdir)
    shutil.rmtree(wdir, ignore_errors=True)


def test_worker_reused_across_rounds_and_matches_in_process(node: Node) -> None:
    first = node.train(1)
    pid = node.worker_pid()
    second = node.train(2)
    assert node.worker_pid() == pid and psutil.pid_exists(pid)  # the same process served both
    assert first.load_s > 0.5 and second.load_s < 0.5  # the model was loaded once
    local = wire.unpack_train_res(train_content(node.cfg, _instruction(node.cfg, 2), 0))
    assert second.num_examples == local.num_examples and second.train_loss == pytest.approx(
        local.train_loss, rel=1e-5
    )
    for k, v in local.routers.items():
        np.testing.assert_allclose(second.routers[k], v, atol=1e-6)
    assert stat_mode(node.dir) == 0o700 and stat_mode(node.paths.sock) == 0o600
    assert stat_mode(node.paths.secret) == 0o600


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def _raw_request(paths: wl.WorkerPaths, secret: bytes, claimed_key: str, cfg: RunConfig) -> dict:
    with wl.connect(paths, WAIT_S) as sock:
        hello, _ = wl.recv_frame(sock)
        proof = wl.mac(secret, bytes.fromhex(hello["nonce"]), claimed_key)
        header = {"op": "train", "run_config": cfg.to_flat(), "dataset": "", "partition_id": 0}
        wl.send_frame(sock, {**header, "key": claimed_key, "mac": proof, "waited_s": 0.0})
        reply, _ = wl.recv_frame(sock)
    return reply


def test_worker_refuses_foreign_and_mismatched_requests(node: Node) -> None:
    node.train(1)
    paths, secret = node.paths, node.paths.secret.read_bytes()
    wrong_secret = _raw_request(paths, b"x" * 32, paths.key, node.cfg)
    assert not wrong_secret["ok"] and "wrong worker secret" in wrong_secret["error"]
    wrong_key = _raw_request(paths, secret, "0" * 64, node.cfg)
    assert not wrong_key["ok"] and "another bundle" in wrong_key["error"]
    other = RunConfig.from_flat({"topk_experts": 3}, base=node.cfg)  # another bundle's config
    mismatched = _raw_request(paths, secret, paths.key, other)
    assert not mismatched["ok"] and "derives another bundle key" in mismatched["error"]
    assert node.train(3).steps == 2  # still serving after the refusals
    if os.getuid() == 0:  # another user cannot even reach the socket (0700 directory)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            with contextlib.suppress(BaseException):
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as s:
                    try:
                        s.connect(str(paths.sock))
                    except PermissionError:
                        code = 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "another uid could connect"


def test_worker_killed_mid_request_then_replaced(node: Node) -> None:
    node.train(1)
    old = node.worker_pid()
    errors: list[BaseException] = []

    def long_round() -> None:
        try:
            node.train(4, steps=400)
        except BaseException as err:  # noqa: BLE001 - inspected below
            errors.append(err)

    t = threading.Thread(target=long_round)
    t.start()
    time.sleep(1.0)
    os.kill(old, signal.SIGKILL)
    t.join(WAIT_S)
    assert not t.is_alive() and errors and isinstance(errors[0], wl.WorkerLostError)
    psutil.Process(old).wait(WAIT_S) if psutil.pid_exists(old) else None  # reap our child
    recovered = node.train(5)  # the next message starts a fresh worker
    assert node.worker_pid() != old and recovered.steps == 2 and recovered.load_s > 0.5


def test_worker_sigterm_removes_its_files(node: Node) -> None:
    node.train(1)
    paths, pid = node.paths, node.worker_pid()
    os.kill(pid, signal.SIGTERM)
    psutil.Process(pid).wait(WAIT_S)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not paths.sock.exists() and not paths.pid.exists() and not paths.secret.exists()


def test_forwarder_falls_back_without_a_usable_worker_dir(node: Node, tmp_path: Path) -> None:
    ins = _instruction(node.cfg, 1)
    assert forward_train(node.cfg, ins, {"worker": 0}, 0) is None
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # group/other access: never trusted with a secret
    assert forward_train(node.cfg, ins, {"worker-dir": str(shared)}, 0) is None
    assert not list(shared.iterdir())


def test_worker_exits_when_its_owner_is_gone(node: Node) -> None:
    wdir = Path(tempfile.mkdtemp(prefix="sfo-"))
    try:
        owner = subprocess.Popen(["sleep", "3"])  # a stand-in for deploy-local
        paths = wl.WorkerPaths(wl.private_dir(wdir), node.paths.key)
        job = {"run_config": node.cfg.to_flat(), "dataset": ""}
        proc = wl.spawn(paths, job, owner=owner.pid, idle_s=120)
        owner.wait(WAIT_S)
        proc.wait(WAIT_S)  # exits within about a second, even while still loading
        assert not paths.sock.exists() and not paths.pid.exists()
    finally:
        wl.stop_workers(wdir)
        shutil.rmtree(wdir, ignore_errors=True)
