"""Faults under Flower's run_simulation: a client that raises and a client that sends NaN routers
do not stop a round; the run completes and logs both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fedkit import tiny_config, write_dataset
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from smartfed.io.rundir import RunDir
from smartfed.recipes.train import run_train

CRASH, POISON = 1, 2


def chaos_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower client mod: partition 1 crashes while training, partition 2 replies NaN routers."""
    pid = int(context.node_config["partition-id"])
    if msg.metadata.message_type == MessageType.TRAIN and pid == CRASH:
        raise RuntimeError("simulated client crash")
    reply = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN and pid == POISON:
        arrays = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord(
            {k: Array(np.full_like(arrays[k].numpy(), np.nan)) for k in arrays}
        )
    return reply


def test_crashing_and_poisoned_clients_do_not_stop_rounds(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir,
        tiny_pool,
        data,
        tmp_path / "run",
        num_rounds=2,
        num_clients=3,
        sample_clients=3,
        min_replies=1,
        track_energy=False,
    )
    summary = run_train(cfg, client_mods=[chaos_mod])
    rows = RunDir(cfg.output_dir).metrics()
    assert summary["rounds"] == 2 and [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["sampled"] == [0, 1, 2]
        assert row["clients"] == [0]  # the only accepted update
        assert row["failures"] == 1  # the crash came back as an error reply
        assert "non-finite" in row["rejected"][str(POISON)]
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["eval_loss"])
