"""Every wire encoding over real rounds (DirectGrid delivery; real driver, strategy, ClientApp):
faults, norm checks, resume, server-side DP, clients that missed rounds, and the printed bytes
per round against the bytes that were serialized.

One 3-round run per encoding, 3 of 4 clients per round (seed 0 samples partitions [0, 1, 2],
[0, 2, 3], [0, 1, 2]), with faults: in round 2 partition 2 crashes (error reply) and partition 0
sends an oversized update; in round 3 partition 1 (which missed round 2) sends NaN. The same
faults happen in a run stopped after round 1 and resumed, and a 1-round run with DP checks the
clipping.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedkit import run_direct, stable, tiny_config, write_dataset
from flwr.app import Message

from factories import pin_task_identity
from smartfed.fed import client_work, wire, wire_state
from smartfed.fed.candidates import (
    compare_run_bytes,
    format_bytes,
    human_bytes,
    pool_dims,
)
from smartfed.pool.pool import resolve_pool
from smartfed.recipes.train import prepare_run

INT8_DELTA_EF = {"wire_dtype": "int8", "wire_delta": True, "wire_error_feedback": True}
ENCODINGS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"wire_dtype": "bfloat16"},
    "int8_delta_ef": INT8_DELTA_EF,
    "proj16_int8_delta_ef": {"router_proj_dim": 16, **INT8_DELTA_EF},
    "lowrank4": {"router_rank": 4},
}
STATEFUL = {"int8_delta_ef", "proj16_int8_delta_ef"}  # client state restarts on resume
CRASH = (2, 2)  # (partition, round) replying with an error
POISON = {(0, 2): "huge", (1, 3): "nan"}  # (partition, round) -> what its update becomes
SAMPLED = {1: [0, 1, 2], 2: [0, 2, 3], 3: [0, 1, 2]}
CLIP = 1e-3  # DP clipping norm, far below a round's update norm
RESUME_TOL = 0.3  # stateful encodings: |resumed - uninterrupted| <= tol * |update of the run|


def _norm(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in b)))


def _spy_client_round(starts: dict[tuple[int, int], dict[str, np.ndarray]]) -> Any:
    """Wrap ``client_round``: keep the state each client decoded, poison :data:`POISON`."""
    real = client_work.client_round

    def run(*args: Any, **kw: Any) -> Any:
        pid, rnd = kw["partition_id"], kw["server_round"]
        start = {k: v.numpy().copy() for k, v in kw["routers"].items()}
        starts[(pid, rnd)] = start
        upd = real(*args, **kw)
        if POISON.get((pid, rnd)) == "huge":
            upd.routers = {k: v + 100.0 for k, v in start.items()}
        elif POISON.get((pid, rnd)) == "nan":
            upd.routers = {k: np.full_like(v, np.nan) for k, v in upd.routers.items()}
        return upd

    return run


def _spy_pack(globs: dict[int, dict[str, np.ndarray]]) -> Any:
    """Wrap ``DownlinkRefs.pack``: keep the server's float32 global state of every round."""
    real = wire_state.DownlinkRefs.pack

    def pack(self: wire_state.DownlinkRefs, arrays: Any, parts: Any, rnd: int) -> Any:
        globs[rnd] = {k: arrays[k].numpy().copy() for k in arrays}
        return real(self, arrays, parts, rnd)

    return pack


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("wire-enc-data") / "data.jsonl")


@pytest.fixture(scope="module", params=list(ENCODINGS))
def enc(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    tiny_pool: list[Path],
    data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    name = request.param
    mp = pytest.MonkeyPatch()
    pin_task_identity(mp)
    starts: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    globs: dict[int, dict[str, np.ndarray]] = {}
    mp.setattr(client_work, "client_round", _spy_client_round(starts))
    mp.setattr(wire_state.DownlinkRefs, "pack", _spy_pack(globs))
    root = tmp_path_factory.mktemp(f"wire-enc-{name}")
    kw = {"num_clients": 4, "sample_clients": 3, "track_energy": False, "eval_every": 0}
    cfg = tiny_config(tiny_model_dir, tiny_pool, data, root / "full", **kw, **ENCODINGS[name])
    try:
        out: dict[str, Any] = {"name": name, "cfg": cfg, "root": root}
        out["full"] = run_direct(cfg, [CRASH])
        out["starts"], out["globs"] = dict(starts), dict(globs)
        part = dataclasses.replace(
            cfg, output_dir=str(root / "resumed"), fed=dataclasses.replace(cfg.fed, num_rounds=1)
        )
        run_direct(part, [CRASH])
        out["resumed"] = run_direct(dataclasses.replace(part, resume=True, fed=cfg.fed), [CRASH])
        fed = dataclasses.replace(
            cfg.fed, num_rounds=1, dp_noise_multiplier=1e-3, dp_clipping_norm=CLIP
        )
        out["dp"] = run_direct(dataclasses.replace(cfg, output_dir=str(root / "dp"), fed=fed))
    finally:
        mp.undo()
    return out


def _calls(run: dict[str, Any]) -> dict[tuple[int, int], tuple[Message, Message]]:
    return {(p, r): (msg, reply) for p, r, msg, reply in run["rec"].calls}


def _base_round(msg: Message) -> int | None:
    rec = msg.content.get(wire.WIRE)
    return int(rec[wire.WIRE_BASE_ROUND]) if rec and wire.WIRE_BASE_ROUND in rec else None


def test_faulty_clients_are_rejected_and_rounds_complete(enc: dict[str, Any]) -> None:
    rows = enc["full"]["rows"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["sampled"] for r in rows] == list(SAMPLED.values())
    assert rows[0]["clients"] == [0, 1, 2] and not rows[0]["rejected"]
    # round 2: the crash is a failure, the oversized update fails the norm check after decoding
    assert rows[1]["clients"] == [3] and rows[1]["failures"] == 1
    assert list(rows[1]["rejected"]) == ["0"] and "update norm" in rows[1]["rejected"]["0"]
    # round 3: NaN survives every encoding (int8 sends a NaN scale) and is rejected
    assert rows[2]["clients"] == [0, 2] and rows[2]["failures"] == 0
    assert list(rows[2]["rejected"]) == ["1"] and "non-finite" in rows[2]["rejected"]["1"]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    ckpt = enc["full"]["ckpt"]
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in ckpt.values())


def test_every_client_starts_from_the_global_state(enc: dict[str, Any]) -> None:
    """Each sampled client decodes the server's global state of that round, up to the error of
    the message it got: also after a client failed (round 3), for a client whose update was
    rejected (partition 0), one that crashed (2) and one that missed round 2 (1)."""
    calls, starts, globs = _calls(enc["full"]), enc["starts"], enc["globs"]
    assert set(starts) == set(calls) - {CRASH}
    for (p, rnd), start in starts.items():
        msg, glob = calls[(p, rnd)][0], globs[rnd]
        rec = msg.content.get(wire.WIRE)
        if rec is None:  # float32: exactly the global state
            assert all(np.array_equal(start[k], glob[k]) for k in glob), (p, rnd)
        elif _base_round(msg) is None:  # a full bf16 state
            for k in glob:
                assert np.all(np.abs(start[k] - glob[k]) <= 2.0**-8 * np.abs(glob[k])), (p, rnd)
        else:  # an int8 update against the state this client held: within half a step
            keys = list(msg.content[wire.ARRAYS])
            for k, scale in zip(keys, rec[wire.WIRE_SCALES], strict=True):
                assert np.abs(start[k] - glob[k]).max() <= scale / 2 * 1.001 + 1e-7, (p, rnd)


def test_downlink_updates_skip_failed_clients_and_span_missed_rounds(enc: dict[str, Any]) -> None:
    bases = {key: _base_round(msg) for key, (msg, _) in _calls(enc["full"]).items()}
    if enc["name"] not in STATEFUL:
        assert set(bases.values()) == {None}  # every client gets the full state
        return
    assert bases == {
        (0, 1): None,
        (1, 1): None,
        (2, 1): None,
        (0, 2): 1,
        (2, 2): 1,
        (3, 2): None,  # partition 3 is new
        # 0's update was rejected after it decoded: it holds round 2; 1 missed round 2: an
        # update against round 1; 2 crashed: the server forgot it and sends the full state
        (0, 3): 2,
        (1, 3): 1,
        (2, 3): None,
    }


def test_resume_matches_the_uninterrupted_run(enc: dict[str, Any]) -> None:
    full, resumed = enc["full"], enc["resumed"]
    assert [r["round"] for r in resumed["rows"]] == [1, 2, 3]
    if enc["name"] not in STATEFUL:  # bit-exact, faults included
        assert stable(resumed["rows"]) == stable(full["rows"])
        assert all(np.array_equal(full["ckpt"][k], resumed["ckpt"][k]) for k in full["ckpt"])
        return
    # client wire state (held states, residuals) restarts: same round 1, then within tolerance
    assert stable(resumed["rows"][:1]) == stable(full["rows"][:1])

    def faults(rows: list[dict[str, Any]]) -> list[Any]:
        return [(r["clients"], sorted(r["rejected"]), r["failures"]) for r in rows]

    assert faults(resumed["rows"]) == faults(full["rows"])
    moved = _norm(full["ckpt"], enc["globs"][1])
    assert _norm(resumed["ckpt"], full["ckpt"]) <= RESUME_TOL * moved


def test_dp_clips_the_decoded_update(enc: dict[str, Any]) -> None:
    dp, initial = enc["dp"], enc["globs"][1]
    (row,) = dp["rows"]
    assert row["clients"] == [0, 1, 2] and not row["rejected"]
    free = _norm(enc["globs"][2], initial)  # round 1 of the same setting without DP
    clipped = _norm(dp["ckpt"], initial)
    assert free > 20 * CLIP  # so clipping has something to do
    assert 0 < clipped <= 1.1 * CLIP, (clipped, free)  # mean of clipped updates + tiny noise


def _value_bytes(msg: Message) -> int:
    """The value bytes of a message's arrays (no .npy header, no record framing)."""
    return sum(a.numpy().nbytes for a in msg.content[wire.ARRAYS].values())


def test_printed_bytes_are_the_serialized_bytes(
    enc: dict[str, Any], tiny_pool: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    cfg, calls = enc["cfg"], _calls(enc["full"])
    pool = resolve_pool([str(p) for p in tiny_pool])
    rows = compare_run_bytes(cfg, pool)
    this, s = rows[0].bytes, cfg.fed.sample_clients
    scales = 9 * this.tensors if cfg.fed.wire_dtype == "int8" else 0  # in the "wire" record
    params = sum(v.size for v in enc["full"]["ckpt"].values())
    assert this.params == params and this.tensors == len(enc["full"]["ckpt"])
    for (p, rnd), (msg, reply) in calls.items():
        if (p, rnd) in POISON or (p, rnd) == CRASH:
            continue
        assert _value_bytes(reply) + scales == this.up // s, (p, rnd)
        held = _base_round(msg) is not None
        want = (this.down_held if held else this.down_full) // s
        assert _value_bytes(msg) + (scales if held else 0) == want, (p, rnd)
    # round 1 (every client replied, nobody held a state): the counted messages are these
    # values plus Flower's framing (array headers, config down, metrics and importance up)
    row = enc["full"]["rows"][0]
    framing = s * this.tensors * 260
    assert this.up < row["payload_up"] <= this.up + framing + s * 2000
    assert this.down_full < row["payload_down"] <= this.down_full + framing + s * 600
    assert row["bytes_up"] > row["payload_up"] and row["bytes_down"] > row["payload_down"]
    # what pool inspect prints and smartfed train logs are these numbers
    table = "\n".join(format_bytes(rows, cfg.fed))
    assert f"{human_bytes(this.up / s)} " in table and human_bytes(this.up) in table
    assert "paper-faithful: full router, float32" in table and "FedIT: LoRA r=8" in table
    fedit = rows[2].bytes
    assert fedit.params == sum(8 * (d_in + d_out) for _, d_in, d_out in pool_dims(pool).values())
    logger = logging.getLogger("smartfed.recipes.train")  # the CLI may stop propagation
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    try:
        prepare_run(dataclasses.replace(cfg, output_dir=str(enc["root"] / "startup")))
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
    line = next(r.getMessage() for r in caplog.records if "bytes per round" in r.getMessage())
    assert human_bytes(this.total_mean) in line and human_bytes(fedit.total_mean) in line
