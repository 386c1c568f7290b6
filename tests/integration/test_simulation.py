"""Flower's run_simulation end to end: exact resume, byte accounting, run-dir safety.

Three simulation runs share one module fixture (Ray start costs ~12 s each): an uninterrupted
3-round run, and a 2-round run that is "killed" after writing round 3's metrics line but before its
checkpoint, then resumed with --num_rounds raised to 3.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from fedkit import stable, tiny_config, write_dataset

from smartfed.errors import CheckpointError
from smartfed.io.rundir import RunDir
from smartfed.recipes.train import run_train


@pytest.fixture(scope="module")
def runs(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sim")
    data = write_dataset(root / "data.jsonl")
    full = tiny_config(tiny_model_dir, tiny_pool, data, root / "full")
    summary_full = run_train(full)
    part = tiny_config(tiny_model_dir, tiny_pool, data, root / "part", num_rounds=2)
    run_train(part)
    rows = RunDir(part.output_dir).metrics()
    crashed = {**rows[-1], "round": 3, "train_loss": -1.0}  # written, then killed before checkpoint
    (Path(part.output_dir) / "metrics.jsonl").open("a").write(json.dumps(crashed) + "\n")
    resumed = dataclasses.replace(
        part, resume=True, fed=dataclasses.replace(part.fed, num_rounds=3)
    )
    summary_resumed = run_train(resumed)
    return {
        "full": full,
        "resumed": resumed,
        "summary_full": summary_full,
        "summary_resumed": summary_resumed,
    }


def test_resumed_run_reproduces_the_uninterrupted_one(runs: dict[str, Any]) -> None:
    full = RunDir(runs["full"].output_dir).metrics()
    resumed = RunDir(runs["resumed"].output_dir).metrics()
    assert [r["round"] for r in resumed] == [1, 2, 3]  # every round once
    assert stable(resumed) == stable(full)
    assert runs["summary_resumed"]["rounds"] == 3
    assert runs["summary_full"]["final_train_loss"] == runs["summary_resumed"]["final_train_loss"]


def test_round_bytes_are_the_router_payload(runs: dict[str, Any]) -> None:
    from safetensors.numpy import load_file

    out = Path(runs["full"].output_dir)
    routers = load_file(str(out / "checkpoint" / "routers.safetensors"))
    router_bytes = sum(v.nbytes for v in routers.values())
    overhead = 300 * len(routers) + 2048  # keys, .npy headers, config/metrics records (per message)
    for row in RunDir(out).metrics():
        n_down, n_up = len(row["sampled"]), len(row["clients"])
        assert n_down * router_bytes < row["payload_down"] <= n_down * (router_bytes + overhead)
        assert n_up * router_bytes < row["payload_up"] <= n_up * (router_bytes + overhead)
        assert row["payload_down"] < row["bytes_down"] < row["payload_down"] + 400 * n_down
    summary = runs["summary_full"]
    rows = RunDir(out).metrics()
    assert summary["bytes_total"] == sum(r["bytes_up"] + r["bytes_down"] for r in rows)
    assert summary["energy_kwh"] > 0 and summary["wall_s"] > 0


def test_rounds_log_what_the_spec_asks(runs: dict[str, Any]) -> None:
    rows = RunDir(runs["full"].output_dir).metrics()
    for row in rows:
        assert {
            "round",
            "clients",
            "train_loss",
            "bytes_up",
            "bytes_down",
            "wall_s",
            "quotas",
            "eval_loss",
            "phases",
        } <= set(row)
        assert len(row["clients"]) == 2 and row["failures"] == 0
    assert rows[0]["quotas"] != rows[-1]["quotas"]  # EEQA moved the budget from round 2
    cfg = runs["full"]
    # round 1 = topk_experts per matrix, capped at M_m (the default budget [P], [D] for M_m < K)
    assert all(k <= cfg.router.topk_experts for k in rows[0]["quotas"].values())
    budget = sum(rows[0]["quotas"].values())
    for row in rows:  # budget-exact every round, within the per-matrix bounds
        assert sum(row["quotas"].values()) == budget, row["round"]
        assert all(cfg.quota.k_min <= k for k in row["quotas"].values())
    n_adapters = len(cfg.pool.sources)
    for row in rows:  # expert usage per matrix and source LoRA, summed over the round's clients
        assert set(row["usage"]) == set(row["quotas"])
        assert all(len(c) == n_adapters and sum(c) > 0 for c in row["usage"].values())


def test_non_empty_output_dir_needs_resume(runs: dict[str, Any]) -> None:
    cfg = dataclasses.replace(runs["full"], resume=False)
    before = (Path(cfg.output_dir) / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        run_train(cfg)
    assert (Path(cfg.output_dir) / "metrics.jsonl").read_bytes() == before


def test_resume_refuses_another_config(runs: dict[str, Any]) -> None:
    cfg = dataclasses.replace(
        runs["full"], resume=True, train=dataclasses.replace(runs["full"].train, seed=5)
    )
    with pytest.raises(CheckpointError, match="seed"):
        run_train(cfg)
