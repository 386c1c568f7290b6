"""``fed.wire_dtype``: bf16/int8 codecs, state encode/decode, strategy checks on decoded states, and
the float32 default being byte-for-byte what was sent before the encodings existed."""

from __future__ import annotations

import types

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity

from smartfed.config import RunConfig
from smartfed.errors import ConfigError, WireFormatError
from smartfed.fed import codec, wire
from smartfed.fed.driver import FederationError, _make_strategy
from smartfed.fed.strategy import SmartFedStrategy
from smartfed.methods import get_method
from smartfed.update import ClientUpdate

Q, V = "m.layers.0.q_proj.router.weight", "m.layers.0.v_proj.router.weight"
SHAPES = {Q: (6, 16), V: (6, 16)}


pytestmark = pytest.mark.usefixtures("task_identity")


def _state(seed: int, std: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * std).astype(np.float32) for k, s in SHAPES.items()}


def test_bf16_round_trip_error_and_specials() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 33)) * 10.0 ** rng.integers(-6, 4, (64, 33))).astype(np.float32)
    bits = codec.to_bf16_bits(x)
    back = codec.from_bf16_bits(bits)
    assert bits.dtype == np.uint16 and bits.shape == x.shape and back.dtype == np.float32
    rel = np.abs(back - x) / np.abs(x)
    assert rel.max() <= 2.0**-8 and rel.max() > 0  # half a bf16 ulp (8 significant bits)
    assert np.array_equal(codec.from_bf16_bits(codec.to_bf16_bits(back)), back)  # idempotent
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], np.float32)
    out = codec.from_bf16_bits(codec.to_bf16_bits(special))
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
    assert np.array_equal(out[3:], special[3:])


def test_int8_quantisation_error_bound() -> None:
    x = np.random.default_rng(1).standard_normal((40, 17)).astype(np.float32) * 3e-3
    q, scale = codec.quantize_int8(x)
    back = codec.dequantize_int8(q, scale)
    assert q.dtype == np.int8 and q.shape == x.shape and int(np.abs(q).max()) == 127
    assert scale == pytest.approx(float(np.abs(x).max()) / 127, rel=1e-6)
    assert np.abs(back - x).max() <= scale / 2 * (1 + 1e-5)
    zq, zs = codec.quantize_int8(np.zeros((3, 2), np.float32))
    assert zs == 0.0 and not zq.any() and not codec.dequantize_int8(zq, zs).any()
    bad = x.copy()
    bad[0, 0] = np.inf
    nq, ns = codec.quantize_int8(bad)
    assert np.isnan(ns) and np.isnan(codec.dequantize_int8(nq, ns)).all()


def test_encode_decode_state_per_dtype() -> None:
    ref, local = _state(0), _state(1)
    arrays, enc = wire.encode_state(local, "float32")
    assert enc is None and all(arrays[k].dtype == "float32" for k in arrays)
    arrays, enc = wire.encode_state(local, "bfloat16")
    assert enc is not None and enc[wire.WIRE_DTYPE] == "bfloat16"
    back = wire.decode_state(arrays, enc)
    assert all(arrays[k].dtype == "uint16" for k in arrays)
    assert all(np.abs(back[k] - local[k]).max() <= 2.0**-8 * np.abs(local[k]).max() for k in local)
    arrays, enc = wire.encode_state(local, "int8", reference=ref)
    assert all(arrays[k].dtype == "int8" for k in arrays) and len(enc[wire.WIRE_SCALES]) == 2
    back = wire.decode_state(arrays, enc, reference=ref)
    for k, scale in zip(arrays, enc[wire.WIRE_SCALES], strict=True):
        assert back[k].dtype == np.float32
        assert np.abs(back[k] - local[k]).max() <= scale / 2 + 1e-7
    with pytest.raises(WireFormatError, match="need the state"):
        wire.encode_state(local, "int8")
    with pytest.raises(WireFormatError, match="keys/shapes differ"):
        wire.decode_state(arrays, enc, reference={Q: ref[Q]})
    with pytest.raises(WireFormatError, match="2 scales for 1 arrays"):
        wire.decode_state(ArrayRecord({Q: arrays[Q]}), enc, reference={Q: ref[Q]})
    with pytest.raises(WireFormatError, match="holds int8, not uint16"):
        wire.decode_state(arrays, ConfigRecord({wire.WIRE_DTYPE: "bfloat16"}))
    with pytest.raises(WireFormatError, match="unknown state encoding"):
        wire.decode_state(arrays, ConfigRecord({wire.WIRE_DTYPE: "fp4"}))


def _update(routers: dict[str, np.ndarray], pid: int = 0, n: int = 10) -> ClientUpdate:
    return ClientUpdate(pid, n, 1.5, routers, {"m.layers.0.q_proj": [0.5] * 6}, steps=2)


def test_float32_default_is_byte_identical_to_the_plain_records() -> None:
    upd = _update(_state(2))
    old_style = RecordDict(  # what pack_train_res built before wire_dtype existed
        {
            wire.ARRAYS: ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in upd.routers.items()}
            ),
            wire.METRICS: wire.pack_train_res(upd)[wire.METRICS],
        }
    )
    new = wire.pack_train_res(upd)
    assert wire.WIRE not in new and wire.WIRE not in wire.pack_train_res(upd, "float32", _state(0))
    assert (
        recorddict_to_proto(new).SerializeToString()
        == recorddict_to_proto(old_style).SerializeToString()
    )
    arrays = wire.arrays_from_numpy(_state(3))
    records, reference = wire.pack_state(arrays, "float32")
    assert records[wire.ARRAYS] is arrays and list(records) == [wire.ARRAYS]
    assert all(np.array_equal(reference[k], arrays[k].numpy()) for k in arrays)


def test_downlink_encoding_and_client_side_unpack() -> None:
    glob = _state(4)
    for dtype, down in (("bfloat16", "bfloat16"), ("int8", "bfloat16")):
        records, reference = wire.pack_state(wire.arrays_from_numpy(glob), dtype)
        assert records[wire.WIRE][wire.WIRE_DTYPE] == down
        records[wire.CONFIG] = wire.pack_train_config({"m.layers.0.q_proj": 2,
                                                       "m.layers.0.v_proj": 2}, 3, 4, 1e-3)
        records[wire.CONFIG][wire.SERVER_ROUND] = 1
        ins = wire.unpack_train_ins(records)
        for k in glob:  # the client decodes exactly the server's reference
            assert np.array_equal(ins.routers[k].numpy(), reference[k])
            assert np.abs(reference[k] - glob[k]).max() <= 2.0**-8 * np.abs(glob[k]).max()


def test_reply_round_trip_per_dtype() -> None:
    received, local = _state(5), _state(6)
    for dtype, tol in (("float32", 0.0), ("bfloat16", 2.0**-8), ("int8", 1 / 254)):
        content = wire.pack_train_res(_update(local), dtype, received)
        content = recorddict_from_proto(recorddict_to_proto(content))  # as Flower transports it
        back = wire.unpack_train_res(content, reference=received)
        assert back.num_examples == 10 and back.importance["m.layers.0.q_proj"] == [0.5] * 6
        for k in local:
            scale = np.abs(local[k]).max() if dtype == "bfloat16" else np.abs(
                local[k] - received[k]
            ).max()
            assert np.abs(back.routers[k] - local[k]).max() <= tol * scale + 1e-8, dtype
    with pytest.raises(WireFormatError):  # an int8 reply cannot be read without the reference
        wire.unpack_train_res(wire.pack_train_res(_update(local), "int8", received))
    nan = {k: v.copy() for k, v in local.items()}
    nan[V][1, 1] = np.nan  # survives serialisation as a NaN scale: decodes all-NaN, not finite
    content = recorddict_from_proto(recorddict_to_proto(wire.pack_train_res(_update(nan), "int8",
                                                                            received)))
    back = wire.unpack_train_res(content, reference=received)
    assert np.isnan(back.routers[V]).all() and not wire.is_finite_update(back.routers)


def _cfg(**kw: object) -> RunConfig:
    base = {"num_clients": 4, "sample_clients": 3, "min_replies": 1, "topk_experts": 2}
    return RunConfig.from_flat({**base, **kw})


def _reply(cfg: RunConfig, ins: Message, pid: int, local: dict[str, np.ndarray]) -> Message:
    TaskIdentity._node_id = ins.metadata.dst_node_id
    got = wire.unpack_train_ins(ins.content)
    received = {k: v.numpy() for k, v in got.routers.items()}
    content = wire.pack_train_res(_update(local, pid), cfg.fed.wire_dtype, received)
    return Message(content, reply_to=ins)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_strategy_checks_and_averages_decoded_states(dtype: str) -> None:
    cfg = _cfg(wire_dtype=dtype)
    nodes = {100 + p: p for p in range(4)}
    quotas = {"m.layers.0.q_proj": 2, "m.layers.0.v_proj": 2}
    strat = SmartFedStrategy(cfg, nodes, quotas, None, max_update_norm=1.0)
    glob = _state(7)
    msgs = list(strat.configure_train(1, wire.arrays_from_numpy(glob), ConfigRecord(), None))
    sampled = strat.outcome.sampled  # type: ignore[union-attr]
    good = {k: v + 0.01 for k, v in glob.items()}
    nan = {k: v.copy() for k, v in good.items()}
    nan[Q][0, 0] = np.nan
    far = {k: v + 10.0 for k, v in glob.items()}
    states = [good, nan, far]
    replies = [_reply(cfg, m, p, s) for m, p, s in zip(msgs, sampled, states, strict=True)]
    arrays, _ = strat.aggregate_train(1, replies)
    out = strat.outcome
    assert arrays is not None and out is not None
    assert [u.partition_id for u in out.updates] == [sampled[0]]
    assert "non-finite" in out.rejected[sampled[1]]
    assert "max_update_norm" in out.rejected[sampled[2]]
    for k in glob:  # the decoded, averaged state is float32 and close to what the client had
        got = arrays[k].numpy()
        assert got.dtype == np.float32
        assert np.abs(got - good[k]).max() <= 2.0**-8 * np.abs(good[k]).max() + 1e-7


def test_config_and_driver_validation() -> None:
    assert RunConfig().fed.wire_dtype == "float32"
    with pytest.raises(ConfigError, match="wire_dtype='fp16'"):
        _cfg(wire_dtype="fp16")
    dp = _cfg(wire_dtype="int8", dp_noise_multiplier=1.0, dp_clipping_norm=1.0)  # decoded first
    assert dp.fed.wire_dtype == "int8" and dp.fed.dp_noise_multiplier == 1.0
    cfg = _cfg(wire_dtype="bfloat16", method="lorahub")
    bundle = types.SimpleNamespace(method=get_method("lorahub"))
    with pytest.raises(FederationError, match="--wire_dtype float32"):
        _make_strategy(cfg, bundle, None, {100: 0})  # type: ignore[arg-type]


def test_non_config_wire_record_is_refused() -> None:
    content = wire.pack_train_res(_update(_state(0)), "bfloat16")
    content[wire.WIRE] = MetricRecord({"x": 1})
    with pytest.raises(WireFormatError, match="not a ConfigRecord"):
        wire.unpack_train_res(content)
