"""`smartfed deploy-local` with 2 SuperNodes: the job completes through Flower's Deployment Runtime
and every process it started is gone afterwards."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from fedkit import tiny_config, write_dataset

from smartfed.io.rundir import RunDir
from smartfed.recipes.train import run_train

FLOWER_PROCESSES = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-clientapp",
    "flwr-serverapp",
)


def _flower_pids() -> set[int]:
    """PIDs of Flower runtime processes currently alive on this machine."""
    found = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if (
            any(name in cmd for name in FLOWER_PROCESSES)
            and p.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.add(p.pid)
    return found


@pytest.mark.slow
def test_deploy_local_two_supernodes(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    before = _flower_pids()
    data = write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir,
        tiny_pool,
        data,
        tmp_path / "run",
        num_rounds=2,
        num_clients=2,
        sample_clients=2,
        engine="deployment",
        track_energy=False,
    )
    summary = run_train(cfg)
    rows = RunDir(cfg.output_dir).metrics()
    assert summary["rounds"] == 2 and [r["round"] for r in rows] == [1, 2]
    assert all(r["clients"] == [0, 1] and r["failures"] == 0 for r in rows)
    assert all(r["client_load_s"][0] > 0 for r in rows)  # a fresh ClientApp process per message
    assert (tmp_path / "run" / "checkpoint" / "routers.safetensors").is_file()
    assert not _flower_pids() - before  # every process deploy-local started is gone
