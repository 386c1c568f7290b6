"""The server's teacher-forced metrics through the real driver: eval rows every round, val rows
after the last one, values equal to a recomputation on the final global model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from directgrid import DirectGrid
from fedkit import tiny_config, write_dataset

from smartfed.data.formatting import encode_for_training
from smartfed.data.tasks import get_task
from smartfed.eval.teacher_forced import EVAL_MAX_LEN, teacher_forced_eval
from smartfed.fed.cache import BundleSpec, get_bundle
from smartfed.fed.client_app import make_client_app
from smartfed.fed.driver import run_server
from smartfed.io.rundir import RunDir
from smartfed.meta import run_meta

TASK = "cpu_mini.zh_code_gap"


pytestmark = pytest.mark.usefixtures("task_identity")


def test_server_logs_teacher_forced_metrics(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    write_dataset(data)
    cfg = tiny_config(
        tiny_model_dir,
        tiny_pool,
        data,
        tmp_path / "run",
        method="smartfed",
        num_rounds=2,
        track_energy=False,
        eval_every=0,
        eval_task=TASK,
        eval_limit=4,
        max_new_tokens=4,
        eval_batch_size=3,
        tf_eval_every=1,
        val_examples=3,
    )
    RunDir.open(cfg, run_meta(engine="direct"))
    run_server(DirectGrid(make_client_app(cfg), cfg.fed.num_clients), cfg)
    rows = RunDir(cfg.output_dir).metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["eval_tf_n"] == 4 and "val_tf_em" not in rows[0]  # val: last round only
    assert "eval_execution_accuracy" not in rows[0] and "eval_execution_accuracy" in rows[1]
    last = rows[1]
    assert last["eval_tf_n"] == 4 and last["val_tf_n"] == 3
    for key in ("eval_tf_em", "val_tf_em"):
        assert 0.0 <= last[key] <= 1.0
    assert math.isfinite(last["eval_tf_loss"]) and last["eval_tf_loss"] > 0
    assert last["eval_tf_loss"] != rows[0]["eval_tf_loss"]  # the model changed between rounds
    # the logged values are those of the final global model on the first eval_limit eval rows
    bundle = get_bundle(BundleSpec.from_config(cfg))
    tok = bundle.tokenizer
    task = get_task(TASK)
    for split, examples in (
        ("eval", task.eval_examples()[:4]),
        ("val", task.validation_examples()[:3]),
    ):
        enc = [encode_for_training(tok, ex, EVAL_MAX_LEN) for ex in examples]
        ref = teacher_forced_eval(bundle.model, enc, 3, tok.pad_token_id)
        assert last[f"{split}_tf_em"] == ref.em
        assert last[f"{split}_tf_loss"] == pytest.approx(ref.loss, rel=1e-6)
