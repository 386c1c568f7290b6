"""The server does not trust client claims: importance, example counts, partition ids, outliers."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity

from smartfed.config import RunConfig
from smartfed.errors import ConfigError
from smartfed.fed import wire
from smartfed.fed.strategy import (
    SmartFedStrategy,
    coordinate_median,
    make_aggregator,
    server_weights,
    trimmed_mean,
)
from smartfed.quota.schedule import EEQAState
from smartfed.update import ClientUpdate

Q, V = "m.layers.0.q_proj", "m.layers.0.v_proj"
KEYS = {Q + wire.ROUTER_SUFFIX: (6, 4), V + wire.ROUTER_SUFFIX: (6, 4)}
GOOD_IMP = {Q: [0.5] * 6, V: [0.1] * 6}


pytestmark = pytest.mark.usefixtures("task_identity")


def _strategy(eeqa: bool = False, **kw: object) -> SmartFedStrategy:
    cfg = RunConfig.from_flat(
        {"num_clients": 4, "sample_clients": 3, "min_replies": 1, "topk_experts": 2}
    )
    state = EEQAState.create({Q: 6, V: 6}, topk=2) if eeqa else None
    nodes = {100 + p: p for p in range(4)}
    return SmartFedStrategy(
        cfg,
        nodes,
        {Q: 2, V: 2},
        state,
        experts_per_matrix={Q: 6, V: 6},
        **kw,  # type: ignore[arg-type]
    )


def _round(strat: SmartFedStrategy) -> tuple[list[Message], list[int]]:
    zeros = {k: np.zeros(s, np.float32) for k, s in KEYS.items()}
    msgs = list(strat.configure_train(1, wire.arrays_from_numpy(zeros), ConfigRecord(), None))
    return msgs, strat.outcome.sampled  # type: ignore[union-attr]


def _reply(ins: Message, pid: int, value: float, n: int, imp: dict | None = None) -> Message:
    TaskIdentity._node_id = ins.metadata.dst_node_id  # the node the instruction went to
    upd = ClientUpdate(
        pid, n, 1.0, {k: np.full(s, value, np.float32) for k, s in KEYS.items()}, imp or {}
    )
    return Message(wire.pack_train_res(upd), reply_to=ins)


@pytest.mark.parametrize(
    "bad",
    [
        {Q: [float("nan")] * 6, V: [0.1] * 6},
        {Q: [float("inf")] + [0.5] * 5, V: [0.1] * 6},
        {Q: [-float("inf")] * 6, V: [0.1] * 6},
        {Q: [0.5] * 5, V: [0.1] * 6},  # wrong length
        {"m.nope": [0.5] * 6},
    ],
)
def test_bad_importance_rejects_only_that_reply(bad: dict) -> None:
    strat = _strategy(eeqa=True)
    msgs, sampled = _round(strat)
    replies = [
        _reply(msgs[0], sampled[0], 0.1, 5, GOOD_IMP),
        _reply(msgs[1], sampled[1], 0.1, 5, GOOD_IMP),
        _reply(msgs[2], sampled[2], 0.1, 5, bad),
    ]
    arrays, _ = strat.aggregate_train(1, replies)  # no WireFormatError: the round goes on
    out = strat.outcome
    assert arrays is not None and out is not None and out.ok
    assert [u.partition_id for u in out.updates] == sorted(sampled[:2])
    assert "importance" in out.rejected[sampled[2]]


def test_claimed_example_count_does_not_take_over_known_partitions() -> None:
    strat = _strategy(partition_sizes=dict.fromkeys(range(4), 10))
    msgs, sampled = _round(strat)
    replies = [
        _reply(msgs[0], sampled[0], 1.0, 10),
        _reply(msgs[1], sampled[1], 1.0, 10),
        _reply(msgs[2], sampled[2], 7.0, 10**9),  # a liar inside the norm bound
    ]
    arrays, _ = strat.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays[Q + wire.ROUTER_SUFFIX].numpy(), 3.0)  # (1 + 1 + 7) / 3


def test_unknown_partitions_are_capped_at_the_lower_median_claim() -> None:
    assert server_weights([(0, 10), (1, 30), (2, 10**9)], {}) == [10, 30, 30]
    assert server_weights([(0, 10), (1, 10**9)], {}) == [10, 10]
    assert server_weights([(0, 5), (1, 10**9)], {1: 7}) == [5, 7]


def test_a_node_cannot_speak_for_another_partition_or_twice() -> None:
    strat = _strategy()
    msgs, sampled = _round(strat)
    replies = [
        _reply(msgs[0], sampled[0], 1.0, 10),
        _reply(msgs[1], sampled[0], 9.0, 10),  # node of sampled[1] claims sampled[0]
        _reply(msgs[2], sampled[2], 1.0, 10),
        _reply(msgs[2], sampled[2], 9.0, 10),  # the same node answers twice
    ]
    arrays, _ = strat.aggregate_train(1, replies)
    out = strat.outcome
    assert arrays is not None and out is not None
    assert [u.partition_id for u in out.updates] == sorted([sampled[0], sampled[2]])
    np.testing.assert_allclose(arrays[Q + wire.ROUTER_SUFFIX].numpy(), 1.0)
    reasons = " | ".join(out.rejected.values())
    assert "claims partition" in reasons and "second reply" in reasons
    assert all(k < 0 for k in out.rejected)  # never logged under the victim's partition id


def test_robust_rules_bound_one_outlier() -> None:
    ups = [(1, {"w": np.array([v], np.float32)}) for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert coordinate_median(ups)["w"][0] == 3.0
    np.testing.assert_allclose(trimmed_mean(ups, 0.2)["w"], [3.0])  # 2, 3, 4
    np.testing.assert_allclose(make_aggregator("mean")(ups)["w"], [202.0])


def test_median_aggregation_in_a_round() -> None:
    strat = _strategy(aggregate=make_aggregator("median"))
    msgs, sampled = _round(strat)
    replies = [_reply(m, p, v, 10) for m, p, v in zip(msgs, sampled, (1.0, 2.0, 2.5), strict=True)]
    arrays, _ = strat.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays[V + wire.ROUTER_SUFFIX].numpy(), 2.0)


@pytest.mark.parametrize(
    "flat",
    [
        {"aggregation": "mode"},
        {"trim_fraction": 0.5},
        {"learning_rate": float("inf")},
        {"learning_rate": float("nan")},
        {"seed": -1},
    ],
)
def test_config_refuses_values_that_cannot_learn(flat: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(flat))):
        RunConfig.from_flat(flat)
