"""Shared helpers for the federated integration tests: a tiny dataset, a tiny run config, and a
run over the in-process :class:`directgrid.DirectGrid` that records every train message."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message

from smartfed.config import RunConfig
from smartfed.fed import wire

SKIP_VOLATILE = {
    "wall_s",
    "phases",
    "client_train_s",
    "client_load_s",
    "energy_kwh_clients",
    "energy_kwh_server",
    "bytes_up",
    "bytes_down",
}
"""Metrics that depend on time, the machine or random node ids (message metadata varints)."""


def write_dataset(path: Path, rows: int = 60) -> Path:
    """Alpaca-style JSONL of small sums with a 3-valued ``cat`` label."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            a, b = i % 7, i % 5
            fh.write(
                json.dumps(
                    {
                        "instruction": f"What is {a} plus {b}?",
                        "input": "",
                        "output": f"{a} + {b} = {a + b}. The answer is {a + b}.",
                        "cat": str(i % 3),
                    }
                )
                + "\n"
            )
    return path


def tiny_config(model_dir: Path, pool: list[Path], data: Path, out: Path, **kw: Any) -> RunConfig:
    """A seconds-per-round run over the tiny model and pool."""
    flat: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "dtype": "float32",
        "max_seq_len": 48,
        "lora_pool": ",".join(str(p) for p in pool),
        "dataset": str(data),
        "topk_experts": 4,
        "num_clients": 3,
        "sample_clients": 2,
        "num_rounds": 3,
        "local_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "heldout_examples": 6,
        "output_dir": str(out),
    }
    flat.update(kw)
    return RunConfig.from_flat(flat)


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows without the volatile fields."""
    return [{k: v for k, v in r.items() if k not in SKIP_VOLATILE} for r in rows]


class Recorder:
    """Call a ClientApp and keep each train ``(partition, round, instruction, reply)``; the
    ``(partition, round)`` pairs in ``fail`` reply with an error instead (a crashed client)."""

    def __init__(self, app: Any, fail: Collection[tuple[int, int]] = ()) -> None:
        self.app, self.fail, self.calls = app, set(fail), []

    def __call__(self, msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if wire.CONFIG not in msg.content:  # the start-of-run hello
            return self.app(msg, context)
        rnd = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
        if (pid, rnd) in self.fail:
            reply = Message(Error(code=1, reason="simulated crash"), reply_to=msg)
        else:
            reply = self.app(msg, context)
        self.calls.append((pid, rnd, msg, reply))
        return reply


def run_direct(cfg: RunConfig, fail: Collection[tuple[int, int]] = ()) -> dict[str, Any]:
    """Run ``cfg`` over a :class:`DirectGrid` (real driver, strategy and ClientApp).

    Returns:
        ``rows`` (metrics.jsonl), ``ckpt`` (the checkpoint's routers), ``rec`` (the
        :class:`Recorder`) and ``grid``.
    """
    from directgrid import DirectGrid

    from smartfed.fed.client_app import make_client_app
    from smartfed.fed.driver import run_server
    from smartfed.io.rundir import RunDir
    from smartfed.meta import run_meta

    RunDir.open(cfg, run_meta(engine="direct"))
    rec = Recorder(make_client_app(cfg), fail)
    grid = DirectGrid(rec, cfg.fed.num_clients)
    run_server(grid, cfg)
    run = RunDir(cfg.output_dir)
    ckpt = run.load_checkpoint()
    assert ckpt is not None
    return {"rows": run.metrics(), "ckpt": ckpt.routers, "rec": rec, "grid": grid}
