"""lorahub and mole over several rounds of the real driver (DirectGrid delivery): the search history
and the gates go through Flower records and checkpoints, and a lorahub run resumes from its
checkpoint (the history replays from the saved float32 arrays)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from directgrid import DirectGrid
from fedkit import tiny_config, write_dataset

from smartfed.fed.client_app import make_client_app
from smartfed.fed.driver import run_server
from smartfed.io.rundir import RunDir
from smartfed.meta import run_meta

pytestmark = pytest.mark.usefixtures("task_identity")


def _run(cfg) -> RunDir:  # type: ignore[no-untyped-def]
    RunDir.open(cfg, run_meta(engine="direct"))
    run_server(DirectGrid(make_client_app(cfg), cfg.fed.num_clients), cfg)
    return RunDir(cfg.output_dir)


def test_lorahub_spends_its_budget_and_resumes(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir, tiny_pool, tmp_path / "data.jsonl", tmp_path / "run",
        method="lorahub", num_rounds=2, lorahub_budget=5, track_energy=False, eval_every=0,
        local_steps=1,
    )  # fmt: skip
    run = _run(cfg)
    rows = run.metrics()
    assert [r["round"] for r in rows] == [1, 2] and not any(r["rejected"] for r in rows)
    # round 1: (1 + 3) x 3 weights down per client, round 2: (1 + 2) x 3
    assert rows[0]["payload_down"] > rows[1]["payload_down"] > 2 * 3 * 3 * 4
    state = run.load_checkpoint().routers
    assert state["history_x"].shape == (5, 3) and np.isfinite(state["history_y"]).all()
    resumed = dataclasses.replace(cfg, resume=True, fed=dataclasses.replace(cfg.fed, num_rounds=3))
    rows = _run(resumed).metrics()
    assert [r["round"] for r in rows] == [1, 2, 3]  # the history replayed from the checkpoint
    after = RunDir(cfg.output_dir).load_checkpoint().routers
    np.testing.assert_array_equal(after["history_x"], state["history_x"])  # budget spent: no asks
    np.testing.assert_array_equal(after["weights"], state["weights"])


def test_mole_trains_its_gates_over_rounds(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir, tiny_pool, tmp_path / "data.jsonl", tmp_path / "run",
        method="mole", num_rounds=2, track_energy=False, eval_every=0, learning_rate=5e-2,
    )  # fmt: skip
    run = _run(cfg)
    rows = run.metrics()
    assert [r["round"] for r in rows] == [1, 2] and not any(r["rejected"] for r in rows)
    gates = run.load_checkpoint().routers
    v = "model.layers.0.self_attn.v_proj.router."
    assert gates[v + "weight"].shape == (3, 96) and np.abs(gates[v + "weight"]).max() > 0
    assert gates[v + "log_temperature"].shape == (1,)
    assert gates[v + "log_temperature"][0] != 0.0  # the temperature is learned
