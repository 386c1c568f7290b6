"""Wire contract: every pack/unpack round-trips; malformed messages raise WireFormatError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from smartfed.errors import WireFormatError
from smartfed.fed import wire
from smartfed.update import ClientUpdate

ROUTERS = {
    "model.layers.0.self_attn.q_proj.router.weight": torch.randn(6, 8),
    "model.layers.0.self_attn.v_proj.router.weight": torch.randn(4, 8),
}


pytestmark = pytest.mark.usefixtures("task_identity")


def _ins() -> RecordDict:
    quotas = {"model.layers.0.self_attn.v_proj": 3, "model.layers.0.self_attn.q_proj": 5}
    cfg = wire.pack_train_config(quotas, local_steps=10, batch_size=16, learning_rate=5e-4)
    cfg[wire.SERVER_ROUND] = 7
    return RecordDict({wire.ARRAYS: wire.arrays_from_state(ROUTERS), wire.CONFIG: cfg})


def test_train_ins_round_trip() -> None:
    ins = wire.unpack_train_ins(_ins())
    assert ins.server_round == 7 and ins.local_steps == 10 and ins.batch_size == 16
    assert ins.learning_rate == pytest.approx(5e-4)
    assert ins.quotas == {
        "model.layers.0.self_attn.q_proj": 5,
        "model.layers.0.self_attn.v_proj": 3,
    }
    for k, v in ROUTERS.items():
        assert torch.equal(ins.routers[k], v)


def test_train_res_round_trip() -> None:
    upd = ClientUpdate(
        partition_id=3,
        num_examples=42,
        train_loss=1.5,
        routers={k: v.numpy() for k, v in ROUTERS.items()},
        importance={"model.layers.0.self_attn.q_proj": [0.1, 0.2]},
        steps=10,
        train_s=1.0,
        load_s=0.5,
        energy_kwh=1e-6,
    )
    back = wire.unpack_train_res(wire.pack_train_res(upd))
    assert (back.partition_id, back.num_examples, back.steps) == (3, 42, 10)
    assert back.importance == upd.importance
    assert back.train_loss == 1.5 and back.energy_kwh == pytest.approx(1e-6)
    for k, v in upd.routers.items():
        np.testing.assert_array_equal(back.routers[k], v)


def test_hello_round_trip() -> None:
    assert wire.unpack_hello(wire.pack_hello(4)) == 4


@pytest.mark.parametrize("drop", [wire.QUOTAS, wire.SERVER_ROUND, wire.LOCAL_STEPS])
def test_missing_config_key_raises(drop: str) -> None:
    content = _ins()
    cfg = content[wire.CONFIG]
    content[wire.CONFIG] = ConfigRecord({k: v for k, v in cfg.items() if k != drop})
    with pytest.raises(WireFormatError):
        wire.unpack_train_ins(content)


def test_quota_count_must_match_routers() -> None:
    content = _ins()
    content[wire.CONFIG][wire.QUOTAS] = [1, 2, 3]
    with pytest.raises(WireFormatError):
        wire.unpack_train_ins(content)


def test_reply_without_metrics_raises() -> None:
    with pytest.raises(WireFormatError):
        wire.unpack_train_res(RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 1})}))


def test_bytes_count_the_router_payload() -> None:
    msg = Message(_ins(), dst_node_id=123, message_type=MessageType.TRAIN)
    payload = sum(v.numel() * 4 for v in ROUTERS.values())
    content, full = wire.content_bytes(msg), wire.message_bytes(msg)
    # + per tensor: its key, dtype/shape and the .npy header (~128 B); + the config record
    assert payload < content < payload + 300 * len(ROUTERS) + 256
    assert content < full < content + 512  # + message metadata


def test_update_checks() -> None:
    ref = {k: v.numpy() for k, v in ROUTERS.items()}
    assert wire.is_finite_update(ref)
    bad = {k: v.copy() for k, v in ref.items()}
    next(iter(bad.values()))[0, 0] = np.nan
    assert not wire.is_finite_update(bad)
    moved = {k: v + 1.0 for k, v in ref.items()}
    assert wire.update_norm(moved, ref) == pytest.approx(np.sqrt(6 * 8 + 4 * 8))


def test_usage_round_trips_and_sums_over_clients() -> None:
    from smartfed.fed import wire
    from smartfed.fed.driver import round_usage
    from smartfed.update import ClientUpdate

    upd = ClientUpdate(
        0,
        5,
        1.0,
        {"m.router.weight": np.zeros((2, 3), np.float32)},
        importance={"m": [0.1, 0.2]},
        usage={"m": [7, 0, 3]},
    )
    back = wire.unpack_train_res(wire.pack_train_res(upd))
    assert back.usage == {"m": [7, 0, 3]} and back.importance == {"m": [0.1, 0.2]}
    assert round_usage([back.usage, {"m": [1, 2, 3]}]) == {"m": [8, 2, 6]}
    assert round_usage([{}, {}]) == {}
