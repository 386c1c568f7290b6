"""Stateful wire pieces without a model: update encodings, the client wrapper (held state, error
feedback), the server's per-client downlink references, the candidate settings and their bytes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from smartfed.config import FedConfig, RunConfig
from smartfed.errors import ConfigError, WireFormatError
from smartfed.fed import wire
from smartfed.fed.candidates import CANDIDATE_SETTINGS, held_share, round_bytes
from smartfed.fed.wire_state import HELD, RESIDUAL, ClientWire, DownlinkRefs

KEYS = ("a.router.weight", "b.router.weight")


def _state(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal((4, 6)) * scale).astype(np.float32) for k in KEYS}


def _ins(arrays: RecordDict, rnd: int) -> RecordDict:
    cfg = wire.pack_train_config({"a": 1, "b": 1}, 1, 1, 0.1)
    cfg[wire.SERVER_ROUND] = rnd
    arrays[wire.CONFIG] = cfg
    return arrays


def test_config_needs_a_lossy_dtype_for_stateful_wire() -> None:
    for flag in ("wire_delta", "wire_error_feedback"):
        with pytest.raises(ConfigError, match=f"{flag}=True: needs wire_dtype"):
            FedConfig(**{flag: True})
        assert getattr(FedConfig(wire_dtype="int8", **{flag: True}), flag)
    # server-side DP clips the decoded updates: every encoding works under it
    assert FedConfig(wire_dtype="int8", wire_delta=True, dp_noise_multiplier=1, dp_clipping_norm=1)


def test_every_candidate_is_a_valid_config() -> None:
    assert CANDIDATE_SETTINGS["full_fp32"] == {}  # the paper's router is the reference
    for name, setting in CANDIDATE_SETTINGS.items():
        cfg = RunConfig.from_flat(setting)
        assert cfg.router.router_proj_dim == setting.get("router_proj_dim", 0), name


def test_update_encodings_decode_against_the_reference() -> None:
    ref, new = _state(0), _state(1, 0.01)
    state = {k: ref[k] + new[k] for k in KEYS}
    for dtype, tol in (("bfloat16", 2.0**-8), ("int8", 1 / 127)):
        arrays, enc = wire.encode_state(state, dtype, ref, delta=True)
        assert wire.is_update(enc)
        got = wire.decode_state(arrays, enc, ref)
        for k in KEYS:
            assert np.max(np.abs(got[k] - state[k])) <= tol * np.max(np.abs(new[k])) + 1e-7
        with pytest.raises(WireFormatError, match="need the state"):
            wire.decode_state(arrays, enc, None)
    _, enc = wire.encode_state(state, "bfloat16")  # a bf16 state is not an update
    assert not wire.is_update(enc)
    with pytest.raises(WireFormatError, match="bfloat16 or int8"):
        wire.encode_update(new, "float32")


def test_inactive_client_wire_passes_everything_through() -> None:
    cw, cfg = ClientWire(FedConfig(wire_dtype="int8"), RecordDict()), RunConfig()
    content = RecordDict()
    assert not cw.active and cw.receive(content) is content and cw.reply(content) is content
    assert cw.inner_config(cfg) is cfg


def test_client_wire_holds_state_and_refuses_a_foreign_base() -> None:
    fed = FedConfig(wire_dtype="int8", wire_delta=True, wire_error_feedback=True)
    store, refs, glob = RecordDict(), DownlinkRefs("int8", True), _state(0)
    records, _ = refs.pack(wire.arrays_from_numpy(glob), [5], 1)
    cw = ClientWire(fed, store)
    plain = cw.receive(_ins(records[5], 1))
    assert wire.WIRE not in plain and HELD in store  # the training sees a float32 state
    assert cw.inner_config(RunConfig.from_flat({"wire_dtype": "int8"})).fed.wire_dtype == "float32"
    refs.acknowledge(5)
    glob2 = {k: v + 0.01 for k, v in glob.items()}
    records, _ = refs.pack(wire.arrays_from_numpy(glob2), [5], 2)
    assert records[5][wire.WIRE][wire.WIRE_BASE_ROUND] == 1
    bad = RecordDict(dict(records[5].items()))
    bad[wire.WIRE] = ConfigRecord({**dict(records[5][wire.WIRE].items()), wire.WIRE_BASE_ROUND: 0})
    with pytest.raises(WireFormatError, match="against round 0, but this client holds"):
        ClientWire(fed, store).receive(_ins(bad, 2))
    assert HELD not in store  # dropped: the server sends the full state next time


def test_error_feedback_keeps_the_rounding_error_and_drops_nan() -> None:
    fed = FedConfig(wire_dtype="int8", wire_error_feedback=True)
    store, start = RecordDict(), _state(0)
    cw = ClientWire(fed, store)
    cw.receive(_ins(RecordDict({wire.ARRAYS: wire.arrays_from_numpy(start)}), 1))
    local = {k: v + _state(2, 0.01)[k] for k, v in start.items()}
    out = cw.reply(RecordDict({wire.ARRAYS: wire.arrays_from_numpy(local)}))
    sent = wire.decode_values(out[wire.ARRAYS], out[wire.WIRE])
    residual = {k: store[RESIDUAL][k].numpy() for k in KEYS}
    for k in KEYS:
        assert np.allclose(sent[k] + residual[k], local[k] - start[k], atol=1e-7)
        assert 0 < np.abs(residual[k]).max() <= float(np.abs(local[k] - start[k]).max()) / 254
    local[KEYS[0]][0, 0] = np.nan
    out = cw.reply(RecordDict({wire.ARRAYS: wire.arrays_from_numpy(local)}))
    assert RESIDUAL not in store  # no NaN carried into the next round
    assert np.isnan(wire.decode_state(out[wire.ARRAYS], out[wire.WIRE], start)[KEYS[0]]).all()


def test_downlink_refs_forget_clients_that_did_not_reply() -> None:
    refs, glob = DownlinkRefs("int8", True), wire.arrays_from_numpy(_state(0))
    records, reference = refs.pack(glob, [1, 2], 1)
    assert all(wire.WIRE_BASE_ROUND not in r[wire.WIRE] for r in records.values())
    assert all(np.array_equal(reference[k], glob[k].numpy()) for k in KEYS)  # float32 global
    refs.acknowledge(1)  # 2 never replies
    records, _ = refs.pack(glob, [1, 2], 2)
    assert records[1][wire.WIRE][wire.WIRE_BASE_ROUND] == 1
    assert wire.WIRE_BASE_ROUND not in records[2][wire.WIRE]
    records, _ = refs.pack(glob, [1], 3)  # 1 did not reply in round 2: forgotten too
    assert wire.WIRE_BASE_ROUND not in records[1][wire.WIRE]
    plain, decoded = DownlinkRefs("bfloat16", False).pack(glob, [1, 2], 1)
    assert plain[1][wire.ARRAYS] is plain[2][wire.ARRAYS]  # one shared full state, as before
    assert not np.array_equal(decoded[KEYS[0]], glob[KEYS[0]].numpy())  # bf16-rounded


def test_round_bytes_formula() -> None:
    shapes = {"a": (64, 576), "b": (64, 576)}
    full = round_bytes(shapes, {}, sample_clients=2)
    assert full.params == 2 * 64 * 576 and full.up == full.down_full == 2 * 4 * full.params
    proj = round_bytes(shapes, CANDIDATE_SETTINGS["proj64"], 2)
    low = round_bytes(shapes, CANDIDATE_SETTINGS["lowrank8"], 2)
    assert proj.params == 2 * 64 * 64 and low.params == 2 * 8 * (64 + 576) and low.tensors == 4
    delta = round_bytes(shapes, CANDIDATE_SETTINGS["full_int8_delta_ef"], 2, 20, 20)
    assert delta.up == 2 * (full.params + 2 * 9) and delta.down_full == 2 * 2 * full.params
    share = held_share(2, 20, 20)
    assert 0.55 < share < 0.57  # most sampled clients in a 20-round run were sampled before
    assert delta.down_mean == pytest.approx(share * delta.down_held + (1 - share) * delta.down_full)
    assert held_share(2, 2, 4) == pytest.approx(0.75)  # everyone, every round after the first
