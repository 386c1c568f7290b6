"""Stateful wire settings over real rounds (DirectGrid delivery; real driver, strategy and
ClientApp): error feedback, per-client downlink updates, a client that fails, resume per
setting, and the counted bytes against the formula of :mod:`smartfed.fed.candidates`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedkit import run_direct, stable, tiny_config, write_dataset
from flwr.app import Message
from flwr.common.serde import array_record_to_proto

from factories import pin_task_identity
from smartfed.fed import wire, wire_state
from smartfed.fed.candidates import round_bytes
from smartfed.pool.pool import resolve_pool

INT8_DELTA_EF = {"wire_dtype": "int8", "wire_delta": True, "wire_error_feedback": True}
SETTINGS: dict[str, dict[str, Any]] = {
    "int8": {"wire_dtype": "int8"},
    "lowrank4": {"router_rank": 4},
    "int8_ef": {"wire_dtype": "int8", "wire_error_feedback": True},
    "bf16_delta": {"wire_dtype": "bfloat16", "wire_delta": True},
    "int8_delta_ef": INT8_DELTA_EF,
    "lowrank4_int8_delta_ef": {"router_rank": 4, **INT8_DELTA_EF},
}
STATEFUL = {"int8_ef", "bf16_delta", "int8_delta_ef", "lowrank4_int8_delta_ef"}
ROUNDS = 3  # seed 0 samples partitions [0, 2] in rounds 1-3 (strategy.sample_partitions)
FAIL = (2, 2)  # (partition, round) that replies with an error in the fault run


def _run(cfg: Any, fail: tuple[int, int] | None = None) -> dict[str, Any]:
    return run_direct(cfg, [fail] if fail else [])


@pytest.fixture(scope="module")
def runs(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    mp = pytest.MonkeyPatch()
    pin_task_identity(mp)
    replies: list[tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray], Any]] = []
    real_reply = wire_state.ClientWire.reply

    def spy(self: wire_state.ClientWire, content: Any) -> Any:
        out = real_reply(self, content)
        if self.active:
            local = wire.decode_values(content[wire.ARRAYS], None)
            replies.append((self.store, dict(self.received), local, out))
        return out

    mp.setattr(wire_state.ClientWire, "reply", spy)
    globs: dict[int, dict[str, np.ndarray]] = {}
    real_pack = wire_state.DownlinkRefs.pack

    def spy_pack(self: wire_state.DownlinkRefs, arrays: Any, parts: Any, rnd: int) -> Any:
        globs[rnd] = {k: arrays[k].numpy().copy() for k in arrays}
        return real_pack(self, arrays, parts, rnd)

    mp.setattr(wire_state.DownlinkRefs, "pack", spy_pack)
    root = tmp_path_factory.mktemp("wire-state")
    data = write_dataset(root / "data.jsonl")
    out: dict[str, dict[str, Any]] = {}
    try:
        for name, setting in SETTINGS.items():
            kw = {"num_rounds": ROUNDS, "track_energy": False, "eval_every": 0, **setting}
            cfg = tiny_config(tiny_model_dir, tiny_pool, data, root / name, **kw)
            replies.clear()
            out[name] = _run(cfg)
            out[name]["replies"], out[name]["globals"] = list(replies), dict(globs)
            part = dataclasses.replace(
                cfg,
                output_dir=str(root / f"{name}-resumed"),
                fed=dataclasses.replace(cfg.fed, num_rounds=1),
            )
            first = _run(part)
            resumed = dataclasses.replace(part, resume=True, fed=cfg.fed)
            out[name]["resumed"] = _run(resumed)
            out[name]["resumed"]["first"] = first
        kw = {"num_rounds": ROUNDS, "track_energy": False, "eval_every": 0, **INT8_DELTA_EF}
        cfg = tiny_config(tiny_model_dir, tiny_pool, data, root / "fault", **kw)
        out["fault"] = _run(cfg, fail=FAIL)
    finally:
        mp.undo()
    return out


def _base_round(msg: Message) -> int | None:
    enc = msg.content.get(wire.WIRE)
    if enc is None or wire.WIRE_BASE_ROUND not in enc:
        return None
    return int(enc[wire.WIRE_BASE_ROUND])


def test_every_setting_completes_without_rejections(runs: dict[str, dict[str, Any]]) -> None:
    for name in SETTINGS:
        for run in (runs[name], runs[name]["resumed"]):
            rows = run["rows"]
            assert [r["round"] for r in rows] == [1, 2, 3], name
            assert all(r["clients"] == [0, 2] and not r["rejected"] for r in rows), name
            assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["eval_loss"]) for r in rows)
            assert all(v.dtype == np.float32 for v in run["ckpt"].values()), name


def test_resume_is_exact_for_stateless_settings(runs: dict[str, dict[str, Any]]) -> None:
    for name in set(SETTINGS) - STATEFUL:
        full, resumed = runs[name], runs[name]["resumed"]
        assert stable(resumed["rows"]) == stable(full["rows"]), name
        assert all(np.array_equal(full["ckpt"][k], resumed["ckpt"][k]) for k in full["ckpt"])


def test_resume_restarts_client_wire_state(runs: dict[str, dict[str, Any]]) -> None:
    """Flower gives a resumed run fresh client contexts, and the server forgets what clients held:
    the first round after a resume sends full states and residuals restart at zero; the rounds
    before the resume are the same run."""
    for name in STATEFUL:
        full, resumed = runs[name], runs[name]["resumed"]
        assert stable(resumed["rows"][:1]) == stable(full["rows"][:1]), name
        after = [m for p, rnd, m, _ in resumed["rec"].calls if rnd == 2]
        assert len(after) == 2 and all(_base_round(m) is None for m in after), name
        if "delta" in name:  # uninterrupted: round 2 is an update against round 1
            again = [m for p, rnd, m, _ in full["rec"].calls if rnd == 2]
            assert [_base_round(m) for m in again] == [1, 1], name


def test_downlink_updates_go_to_clients_that_hold_a_state(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["int8_delta_ef"]
    for p, rnd, msg, _ in run["rec"].calls:
        codes = {msg.content[wire.ARRAYS][k].dtype for k in msg.content[wire.ARRAYS]}
        if rnd == 1:  # nobody holds a state yet: the full state in bf16
            assert _base_round(msg) is None and codes == {"uint16"}, p
        else:  # partitions 0 and 2 replied in the round before: int8 update against it
            assert _base_round(msg) == rnd - 1 and codes == {"int8"}, (p, rnd)
    fault = runs["fault"]
    bases = {(p, rnd): _base_round(m) for p, rnd, m, _ in fault["rec"].calls}
    # partition 2 failed in round 2: the server forgot it and sends it the full state in round 3
    assert bases == {(0, 1): None, (2, 1): None, (0, 2): 1, (2, 2): 1, (0, 3): 2, (2, 3): None}
    rows = fault["rows"]
    assert rows[1]["clients"] == [0] and rows[1]["failures"] == 1
    assert rows[2]["clients"] == [0, 2] and not rows[2]["rejected"]


def test_clients_start_within_the_encoding_error_of_the_global_state(
    runs: dict[str, dict[str, Any]],
) -> None:
    """A client decodes its own update against its own held state and lands on the server's
    float32 global state up to that message's int8 half-step (bf16 rounding for a full state)."""
    run = runs["int8_delta_ef"]
    starts = [received for _, received, _, _ in run["replies"]]  # in call order
    assert len(starts) == len(run["rec"].calls) == 2 * ROUNDS
    for (p, rnd, msg, _), received in zip(run["rec"].calls, starts, strict=True):
        glob = run["globals"][rnd]
        if _base_round(msg) is None:
            for k, v in received.items():
                assert np.all(np.abs(v - glob[k]) <= 2.0**-8 * np.abs(glob[k])), (p, rnd, k)
            continue
        scales = list(msg.content[wire.WIRE][wire.WIRE_SCALES])
        for (k, v), scale in zip(received.items(), scales, strict=True):
            assert np.max(np.abs(v - glob[k])) <= scale / 2 * 1.001 + 1e-7, (p, rnd, k)


def test_error_feedback_sends_the_sum_of_the_true_updates(runs: dict[str, dict[str, Any]]) -> None:
    """With error feedback, sum of decoded updates + the kept residual == sum of true updates."""
    for name in ("int8_ef", "int8_delta_ef", "lowrank4_int8_delta_ef"):
        clients: dict[int, list[Any]] = {}
        for store, received, local, out in runs[name]["replies"]:
            clients.setdefault(id(store), []).append((store, received, local, out))
        assert len(clients) == 2 and all(len(v) == ROUNDS for v in clients.values())
        for items in clients.values():
            store = items[-1][0]
            residual = {
                k: store[wire_state.RESIDUAL][k].numpy() for k in store[wire_state.RESIDUAL]
            }
            for k in residual:
                true = sum(
                    local[k].astype(np.float64) - received[k] for _, received, local, _ in items
                )
                sent = sum(
                    wire.decode_values(out[wire.ARRAYS], out[wire.WIRE])[k].astype(np.float64)
                    for *_, out in items
                )
                assert np.allclose(sent + residual[k], true, atol=1e-6), (name, k)
                assert np.abs(residual[k]).max() > 0  # int8 rounding left something to carry


def _shapes(tiny_pool: list[Path]) -> dict[str, tuple[int, int]]:
    pool = resolve_pool([str(p) for p in tiny_pool])
    return {m: (n, pool.modules_for(m)[0][1].d_in) for m, n in pool.experts_per_matrix().items()}


def _arrays(msgs: list[Message]) -> int:
    return sum(array_record_to_proto(m.content[wire.ARRAYS]).ByteSize() for m in msgs)


def test_counted_bytes_match_the_formula(
    runs: dict[str, dict[str, Any]], tiny_pool: list[Path]
) -> None:
    shapes = _shapes(tiny_pool)
    for name, setting in SETTINGS.items():
        calls = runs[name]["rec"].calls
        expect = round_bytes(shapes, setting, sample_clients=2)
        header = 260 * expect.tensors  # key + .npy header + Array fields, per tensor per message
        for rnd in range(1, ROUNDS + 1):
            down = [m for p, r, m, _ in calls if r == rnd]
            up = [rep for p, r, _, rep in calls if r == rnd]
            held = sum(_base_round(m) is not None for m in down)
            values_down = (held * expect.down_held + (2 - held) * expect.down_full) / 2
            scales = 9 * expect.tensors * 2 if setting.get("wire_dtype") == "int8" else 0
            assert expect.up - scales <= _arrays(up) <= expect.up - scales + 2 * header, name
            # int8 downlink updates carry their scales in the "wire" record, not the arrays
            d_scales = 9 * expect.tensors * held if setting.get("wire_dtype") == "int8" else 0
            assert values_down - d_scales <= _arrays(down) <= values_down - d_scales + 2 * header
            row = runs[name]["rows"][rnd - 1]
            assert _arrays(up) < row["payload_up"] and _arrays(down) < row["payload_down"]
    # the delta run's rounds 2-3 save 1 byte per value per client downward (int8 vs bf16),
    # less the 14 int8 scales of each update
    rows, params = runs["int8_delta_ef"]["rows"], round_bytes(shapes, {}, 2).params
    saved = rows[0]["payload_down"] - rows[1]["payload_down"]
    assert 2 * params - 600 < saved < 2 * params, saved
