"""Every method runs one federated round through the real server driver, strategy, wire and
ClientApp.

Delivery is :class:`directgrid.DirectGrid` (in-process, no Ray: ~1-3 s per method on the tiny
model);
``run_simulation`` itself is exercised by test_simulation.py. Bytes are the ones the strategy
counted
from the messages actually built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from directgrid import DirectGrid
from fedkit import tiny_config, write_dataset

from smartfed.fed.cache import BundleSpec, get_bundle
from smartfed.fed.client_app import make_client_app
from smartfed.fed.driver import run_server
from smartfed.io.rundir import RunDir
from smartfed.meta import run_meta

METHODS = [
    "smartfed",
    "smartfed_no_eeqa",
    "fedit",
    "ffa_lora",
    "merge",
    "merge_fedit",
    "pool_fedit",
    "lorahub",
    "mole",
]


pytestmark = pytest.mark.usefixtures("task_identity")


def run_one_round(
    model_dir: Path, pool: list[Path], root: Path, method: str, **kw: Any
) -> dict[str, Any]:
    """One round of ``method`` (2 of 3 clients sampled) in ``root/method``; return row + state
    bytes.
    """
    data = root / "data.jsonl"
    if not data.exists():
        write_dataset(data)
    settings: dict[str, Any] = {
        "method": method,
        "num_rounds": 1,
        "track_energy": False,
        "eval_every": 0,
    }
    cfg = tiny_config(model_dir, pool, data, root / method, **{**settings, **kw})
    RunDir.open(cfg, run_meta(engine="direct"))
    run_server(DirectGrid(make_client_app(cfg), cfg.fed.num_clients), cfg)
    bundle = get_bundle(BundleSpec.from_config(cfg))
    state = bundle.method.trainable_state(bundle.model)
    state_bytes = sum(int(v.numel()) * 4 for v in state.values())
    return {
        "row": RunDir(cfg.output_dir).metrics()[-1],
        "state_bytes": state_bytes,
        "keys": len(state),
        "cfg": cfg,
    }


@pytest.mark.parametrize("method", METHODS)
def test_one_round_with_counted_bytes(
    method: str,
    tiny_model_dir: Path,
    tiny_pool: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = run_one_round(tiny_model_dir, tiny_pool, tmp_path_factory.mktemp("round"), method)
    row, state_bytes = out["row"], out["state_bytes"]
    assert row["round"] == 1 and len(row["clients"]) == 2 and not row["rejected"]
    assert row["eval_loss"] is not None and row["train_loss"] is not None
    overhead = 2 * (
        300 * out["keys"] + 2048
    )  # keys, array headers, config/metrics records (2 messages)
    if method == "merge":  # nothing travels but the round's control records
        assert state_bytes == 0 and row["payload_down"] < overhead and row["payload_up"] < overhead
    elif method == "lorahub":  # (lambda + 1) x N candidate weights down, lambda + 1 losses up
        assert 2 * 5 * 3 * 4 < row["payload_down"] < 2 * 5 * 3 * 4 + overhead
        assert 2 * 5 * 4 < row["payload_up"] < 2 * 5 * 4 + overhead
    else:  # the trainable state, both ways, per sampled client
        assert state_bytes > 0
        assert 2 * state_bytes < row["payload_down"] < 2 * state_bytes + overhead
        assert 2 * state_bytes < row["payload_up"] < 2 * state_bytes + overhead
    assert row["bytes_down"] >= row["payload_down"] and row["bytes_up"] >= row["payload_up"]
