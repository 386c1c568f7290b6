"""`flwr run .` entry: per-run output dir, bad input fails before anything is written, and a
simulation whose SuperNode count differs from num_clients fails fast with a clear line."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from smartfed.errors import SmartFedError
from smartfed.fed.driver import FederationError, hello
from smartfed.fed.flwr_run import FLWR_RUN_DEFAULTS, flwr_run_config, prepare_flwr_run


class _Grid:
    """A grid whose federation has a fixed set of nodes (no node ever answers)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


def test_missing_supernodes_fail_fast_with_the_fix() -> None:
    t0 = time.monotonic()
    with pytest.raises(FederationError) as err:
        hello(_Grid(2), 20, timeout_s=3600.0, node_wait_s=0.2)  # type: ignore[arg-type]
    # the bug waited the round timeout (3600 s); a fast failure takes ~node_wait_s, and a loaded
    # shared machine may stretch that many times: the bound only has to separate the two
    assert time.monotonic() - t0 < 120
    line = str(err.value)
    assert "has 2 SuperNodes" in line and "fed.num_clients=20" in line
    assert '"fed.num_clients=2 fed.sample_clients=2"' in line and "num-supernodes=20" in line


def test_empty_output_dir_is_a_fresh_folder_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    flat = {**FLWR_RUN_DEFAULTS, "fed.num_clients": 3}
    cfg = flwr_run_config(SimpleNamespace(run_config=flat, run_id=4242))  # type: ignore[arg-type]
    assert cfg.output_dir == str((Path("output") / "flwr" / "run-4242").resolve())
    assert cfg.fed.num_clients == 3 and cfg.data.task == "cpu_mini.zh_code_gap"
    named = flwr_run_config(SimpleNamespace(run_config={"output_dir": "x"}, run_id=1))  # type: ignore[arg-type]
    assert named.output_dir == "x"


def test_server_resolves_dtype_auto_or_keeps_the_recorded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartfed.config import RunConfig
    from smartfed.model import dtype as dtype_mod

    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: False)
    flat = {**FLWR_RUN_DEFAULTS, "model.device": "cpu", "output_dir": str(tmp_path / "run")}
    assert flat.get("model.dtype", "auto") == "auto"
    cfg = flwr_run_config(SimpleNamespace(run_config=flat, run_id=7))  # type: ignore[arg-type]
    assert cfg.model.dtype == "float32"
    (tmp_path / "run").mkdir()  # a run that started in bf16 elsewhere, resumed here
    stored = RunConfig.from_flat({**flat, "model.dtype": "bfloat16"})
    (tmp_path / "run" / "config.json").write_text(stored.to_json())
    again = flwr_run_config(SimpleNamespace(run_config={**flat, "resume": True}, run_id=8))  # type: ignore[arg-type]
    assert again.model.dtype == "bfloat16"


def test_bad_pool_fails_before_the_run_dir_exists(tmp_path: Path) -> None:
    from smartfed.config import RunConfig

    out = tmp_path / "run"
    cfg = RunConfig.from_flat(
        {
            "lora_pool": str(tmp_path / "no_such_lora"),
            "task": "cpu_mini.zh_code_gap",
            "output_dir": str(out),
        }
    )
    with pytest.raises(SmartFedError):
        prepare_flwr_run(cfg)
    assert not out.exists()  # a retry is not refused by a leftover folder
