"""A tiny federated run with ``--report_to tensorboard`` writes per-round and per-step scalars."""

from __future__ import annotations

from pathlib import Path

from fedkit import tiny_config, write_dataset

from smartfed.io.rundir import RunDir
from smartfed.recipes.train import run_train


def test_tensorboard_run_writes_round_and_step_scalars(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir, tiny_pool, data, tmp_path / "run", num_rounds=2, report_to="tensorboard"
    )
    run_train(cfg)
    events = sorted((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    rows = RunDir(cfg.output_dir).metrics()
    logged = [(e.step, round(e.value, 5)) for e in acc.Scalars("round/train_loss")]
    assert logged == [(r["round"], round(r["train_loss"], 5)) for r in rows]
    step_tags = [t for t in acc.Tags()["scalars"] if t.startswith("step/client")]
    assert len(step_tags) >= 2  # two sampled clients
    steps = [e.step for e in acc.Scalars(step_tags[0])]
    assert steps == sorted(steps) and len(steps) >= cfg.train.local_steps
