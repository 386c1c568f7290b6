"""Experiment tracking as in HF Trainer / TRL: ``--report_to none|tensorboard|wandb``.

The run directory's ``metrics.jsonl`` stays the record of a run; a tracker mirrors its numbers to a
dashboard. Every numeric field of a round's metrics row becomes a scalar ``round/<field>`` at step
= round (nested mappings such as ``phases`` as ``round/phases/<name>``), and the per-step local
training losses of each client, when a row carries them (``client_step_losses``: partition id ->
losses), become ``step/client<id>/loss`` at the global local step ``(round - 1) * steps + k``.

TensorBoard event files are written under ``<run>/tensorboard`` with ``torch.utils.tensorboard``
(needs the ``tensorboard`` package: ``pip install "smartfed[tensorboard]"``). Weights & Biases is
used only when ``wandb`` is installed; it honours ``WANDB_MODE`` (``offline`` writes under the run
directory and sends nothing).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from smartfed.errors import ConfigError

REPORTERS = ("none", "tensorboard", "wandb")
"""Accepted values of ``train.report_to``."""
TENSORBOARD_DIR = "tensorboard"
"""Sub-directory of the run directory that receives TensorBoard event files."""


class Tracker(Protocol):
    """Where per-round and per-step scalars go besides ``metrics.jsonl``."""

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Record one round's metrics row (the object appended to ``metrics.jsonl``)."""

    def close(self) -> None:
        """Flush and release the backend."""


def round_scalars(row: Mapping[str, Any], prefix: str = "round/") -> Iterator[tuple[str, float]]:
    """Yield ``(tag, value)`` for every finite number in a metrics row (nested mappings flattened).

    Booleans, lists, strings and ``None`` are skipped; ``round`` itself is the step, not a scalar.
    """
    for key, value in row.items():
        if key in ("round", "client_step_losses"):
            continue
        if isinstance(value, Mapping):
            yield from round_scalars(value, f"{prefix}{key}/")
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            yield f"{prefix}{key}", float(value)


def step_scalars(row: Mapping[str, Any]) -> Iterator[tuple[str, float, int]]:
    """Yield ``(tag, loss, global step)`` for the per-step client losses of a row, if any."""
    per_client = row.get("client_step_losses") or {}
    rnd = int(row.get("round", 0))
    for pid, losses in per_client.items():
        steps = len(losses)
        for k, loss in enumerate(losses, start=1):
            if isinstance(loss, int | float) and math.isfinite(loss):
                yield f"step/client{pid}/loss", float(loss), (rnd - 1) * steps + k


class NullTracker:
    """``--report_to none``: nothing besides ``metrics.jsonl``."""

    def log_round(self, row: Mapping[str, Any]) -> None:  # noqa: D102
        return None

    def close(self) -> None:  # noqa: D102
        return None


class TensorBoardTracker:
    """Scalars into TensorBoard event files under ``<run>/tensorboard``."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_round(self, row: Mapping[str, Any]) -> None:  # noqa: D102
        rnd = int(row.get("round", 0))
        for tag, value in round_scalars(row):
            self.writer.add_scalar(tag, value, rnd)
        for tag, value, step in step_scalars(row):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:  # noqa: D102
        self.writer.close()


class WandbTracker:
    """Scalars to Weights & Biases (``WANDB_MODE=offline`` keeps them on disk)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project="smartfed", name=run_dir.name, dir=str(run_dir), config=dict(config)
        )

    def log_round(self, row: Mapping[str, Any]) -> None:  # noqa: D102
        scalars = dict(round_scalars(row))
        scalars["round"] = float(row.get("round", 0))
        self.run.log(scalars)

    def close(self) -> None:  # noqa: D102
        self.run.finish()


def _require(module: str, report_to: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"--report_to {report_to} needs the {module} package, which is not installed: "
            f'pip install "smartfed[{extra}]" (or --report_to none)'
        )


def check_report_to(report_to: str) -> None:
    """Fail early (before round 1) when the chosen backend cannot be used.

    Raises:
        ConfigError: unknown value, or the backend's package is missing.
    """
    if report_to not in REPORTERS:
        raise ConfigError(f"report_to={report_to!r}: choose one of {', '.join(REPORTERS)}")
    if report_to == "tensorboard":
        _require("tensorboard", report_to, "tensorboard")
    elif report_to == "wandb":
        _require("wandb", report_to, "wandb")


def open_tracker(report_to: str, run_dir: Path, config: Mapping[str, Any]) -> Tracker:
    """Return the tracker for ``report_to`` writing next to ``run_dir``.

    Raises:
        ConfigError: see :func:`check_report_to`.
    """
    check_report_to(report_to)
    if report_to == "tensorboard":
        return TensorBoardTracker(Path(run_dir) / TENSORBOARD_DIR)
    if report_to == "wandb":
        return WandbTracker(Path(run_dir), config)
    return NullTracker()
