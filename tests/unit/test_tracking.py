"""--report_to: scalars from metrics rows, TensorBoard event files read back, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartfed.errors import ConfigError
from smartfed.io import tracking
from smartfed.io.tracking import NullTracker, open_tracker, round_scalars, step_scalars

ROW = {
    "round": 3,
    "train_loss": 0.5,
    "eval_loss": None,
    "bytes_up": 1200,
    "failures": 0,
    "resumed": True,
    "clients": [0, 2],
    "quotas": {"m.q": 4},
    "phases": {"fit_s": 1.5, "eval_s": float("nan")},
    "client_step_losses": {"0": [1.0, 0.75], "2": [0.5, 0.25]},
}


def test_round_scalars_keep_finite_numbers_and_flatten_mappings() -> None:
    got = dict(round_scalars(ROW))
    assert got == {
        "round/train_loss": 0.5,
        "round/bytes_up": 1200.0,
        "round/failures": 0.0,
        "round/quotas/m.q": 4.0,
        "round/phases/fit_s": 1.5,
    }


def test_step_scalars_use_the_global_local_step() -> None:
    got = sorted(step_scalars(ROW))
    assert got == [
        ("step/client0/loss", 0.75, 6),
        ("step/client0/loss", 1.0, 5),
        ("step/client2/loss", 0.25, 6),
        ("step/client2/loss", 0.5, 5),
    ]


def test_tensorboard_event_file_holds_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = open_tracker("tensorboard", tmp_path, {"seed": 0})
    tracker.log_round(ROW)
    tracker.log_round({**ROW, "round": 4, "train_loss": 0.25, "client_step_losses": {}})
    tracker.close()
    events = list((tmp_path / tracking.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("round/train_loss")]
    assert loss == [(3, 0.5), (4, 0.25)]
    assert [e.step for e in acc.Scalars("step/client2/loss")] == [5, 6]


def test_none_writes_nothing(tmp_path: Path) -> None:
    tracker = open_tracker("none", tmp_path, {})
    assert isinstance(tracker, NullTracker)
    tracker.log_round(ROW)
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_missing_backend_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"smartfed\[wandb\]"):
        tracking.check_report_to("wandb")
    with pytest.raises(ConfigError, match="choose one of"):
        tracking.check_report_to("mlflow")
