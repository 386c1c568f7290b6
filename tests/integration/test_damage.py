"""Run directories survive damage: fallback to the previous checkpoint, one-line errors, a lock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smartfed.config import RunConfig
from smartfed.errors import CheckpointError
from smartfed.io.rundir import CKPT_DIR, LATEST_FILE, ROUTERS_FILE, STATE_FILE, Checkpoint, RunDir

KEY = "m.layers.0.q_proj.router.weight"


def _run(tmp_path: Path, rounds: int = 3) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for r in range(1, rounds + 1):
        run.append_metrics({"round": r, "train_loss": 1.0 / r})
        routers = {KEY: np.full((4, 8), float(r), np.float32)}
        run.save_checkpoint(Checkpoint(r, routers, None, {"m.layers.0.q_proj": 2}, {"x": 1.0}))
    return run


def test_previous_checkpoint_is_kept(tmp_path: Path) -> None:
    run = _run(tmp_path)
    names = sorted(p.name for p in (run.path / CKPT_DIR).iterdir() if p.is_dir())
    assert names == ["r0002", "r0003"]


def _truncate(run: RunDir) -> None:
    p = run.path / CKPT_DIR / "r0003" / ROUTERS_FILE
    p.write_bytes(p.read_bytes()[:40])


def _nan(run: RunDir) -> None:
    from safetensors.numpy import save_file

    p = run.path / CKPT_DIR / "r0003" / ROUTERS_FILE
    save_file({KEY: np.full((4, 8), np.nan, np.float32)}, str(p))


def _bad_state(run: RunDir) -> None:
    p = run.path / CKPT_DIR / "r0003" / STATE_FILE
    state = json.loads(p.read_text())
    state["quotas"] = {"m.layers.0.q_proj": "two"}
    p.write_text(json.dumps(state))


def _outside(run: RunDir) -> None:
    other = _run(run.path.parent / "other", rounds=1)
    (run.path / CKPT_DIR / LATEST_FILE).write_text(
        json.dumps({"round": 1, "dir": f"../../{other.path.parent.name}/run/{CKPT_DIR}/r0001"})
    )


def _torn_pointer(run: RunDir) -> None:
    (run.path / CKPT_DIR / LATEST_FILE).write_text('{"round": 3, "di')


@pytest.mark.parametrize("damage", [_truncate, _nan, _bad_state])
def test_damaged_latest_falls_back_to_previous(tmp_path: Path, damage) -> None:
    run = _run(tmp_path)
    damage(run)
    ckpt = run.load_checkpoint()
    assert ckpt is not None and ckpt.round == 2
    assert float(ckpt.routers[KEY][0, 0]) == 2.0


@pytest.mark.parametrize("damage", [_outside, _torn_pointer])
def test_bad_pointer_falls_back_to_own_newest(tmp_path: Path, damage) -> None:
    (tmp_path / "other").mkdir()
    run = _run(tmp_path)
    damage(run)
    ckpt = run.load_checkpoint()
    assert ckpt is not None and ckpt.round == 3  # its own newest, not the other run's round 1


def test_every_checkpoint_damaged_is_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path)
    for name in ("r0002", "r0003"):
        (run.path / CKPT_DIR / name / ROUTERS_FILE).write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as err:
        run.load_checkpoint()
    assert "\n" not in str(err.value)


def test_torn_last_metrics_line_is_dropped_and_middle_damage_is_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path)
    with open(run.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"round": 4, "train_lo')
    assert [r["round"] for r in run.metrics()] == [1, 2, 3]
    run._drop_metrics_after(3)
    run.append_metrics({"round": 4})
    assert [r["round"] for r in run.metrics()] == [1, 2, 3, 4]
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    (run.path / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl:2"):
        run.metrics()


def _cfg(tmp_path: Path, resume: bool) -> RunConfig:
    return RunConfig.from_flat({"output_dir": str(tmp_path / "run"), "resume": resume})


def test_resume_cleans_stray_tmp_files(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run.path / "config.json").write_text(_cfg(tmp_path, False).to_json())
    stray = run.path / CKPT_DIR / ".routers.safetensors.abc123.tmp"
    stray.write_bytes(b"half")
    _, ckpt = RunDir.open(_cfg(tmp_path, True), {})
    assert ckpt is not None and ckpt.round == 3 and not stray.exists()


HOLD = """
import sys, time
from smartfed.config import RunConfig
from smartfed.io.rundir import RunDir
RunDir.open(RunConfig.from_flat({"output_dir": sys.argv[1], "resume": True}), {})
print("locked", flush=True)
time.sleep(60)
"""


def test_second_process_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match="in use by another smartfed process"):
            RunDir.open(_cfg(tmp_path, True), {})
    finally:
        holder.kill()
        holder.wait()
    RunDir.open(_cfg(tmp_path, True), {})  # the kernel dropped the dead holder's lock
    RunDir(out).unlock()
