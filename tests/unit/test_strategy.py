"""SmartFedStrategy round logic without a runtime: sampling, per-reply checks, FedAvg, EEQA."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message
from flwr.supercore.task_identity import TaskIdentity

from smartfed.config import RunConfig
from smartfed.fed import wire
from smartfed.fed.strategy import SmartFedStrategy, sample_partitions, weighted_mean
from smartfed.quota.schedule import EEQAState
from smartfed.update import ClientUpdate

Q, V = "m.layers.0.q_proj", "m.layers.0.v_proj"
KEYS = {Q + wire.ROUTER_SUFFIX: (6, 4), V + wire.ROUTER_SUFFIX: (6, 4)}


pytestmark = pytest.mark.usefixtures("task_identity")


def _cfg(**kw: object) -> RunConfig:
    base = {"num_clients": 4, "sample_clients": 3, "min_replies": 1, "topk_experts": 2}
    return RunConfig.from_flat({**base, **kw})


def _strategy(cfg: RunConfig, eeqa: EEQAState | None = None, **kw: object) -> SmartFedStrategy:
    nodes = {100 + p: p for p in range(cfg.fed.num_clients)}  # node id -> partition id
    return SmartFedStrategy(cfg, nodes, {Q: 2, V: 2}, eeqa, **kw)  # type: ignore[arg-type]


def _global() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in KEYS.items()}


def _reply(
    ins: Message, pid: int, value: float, n: int, imp: dict[str, list[float]] | None = None
) -> Message:
    TaskIdentity._node_id = ins.metadata.dst_node_id
    upd = ClientUpdate(
        pid, n, 1.0 + value, {k: np.full(s, value, np.float32) for k, s in KEYS.items()}, imp or {}
    )
    return Message(wire.pack_train_res(upd), reply_to=ins)


def test_weighted_mean_is_example_weighted() -> None:
    a, b = {"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([3.0, 6.0], np.float32)}
    out = weighted_mean([(1, a), (3, b)])
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    assert out["w"].dtype == np.float32


def test_sampling_is_seeded_and_round_dependent() -> None:
    parts = list(range(20))
    assert sample_partitions(parts, 2, 0, 1) == sample_partitions(parts[::-1], 2, 0, 1)
    rounds = {tuple(sample_partitions(parts, 2, 0, r)) for r in range(1, 11)}
    assert len(rounds) > 1
    assert sample_partitions(parts, 2, 0, 1) != sample_partitions(
        parts, 2, 1, 1
    ) or sample_partitions(parts, 2, 0, 2) != sample_partitions(parts, 2, 1, 2)


def test_round_averages_accepted_and_rejects_bad_updates() -> None:
    strat = _strategy(_cfg())
    msgs = list(strat.configure_train(1, wire.arrays_from_numpy(_global()), ConfigRecord(), None))
    assert len(msgs) == 3 and strat.outcome is not None
    assert all(m.content[wire.CONFIG][wire.SERVER_ROUND] == 1 for m in msgs)
    sampled = strat.outcome.sampled
    strat.partition_sizes = {sampled[0]: 10, sampled[1]: 30, sampled[2]: 10}  # server-assigned
    good1 = _reply(msgs[0], sampled[0], 1.0, 10)
    good2 = _reply(msgs[1], sampled[1], 4.0, 30)
    nan = _reply(msgs[2], sampled[2], float("nan"), 10)
    arrays, metrics = strat.aggregate_train(1, [good1, good2, nan])
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays[Q + wire.ROUTER_SUFFIX].numpy(), 3.25)  # (10*1 + 30*4)/40
    out = strat.outcome
    assert [u.partition_id for u in out.updates] == sorted(sampled[:2])
    assert sampled[2] in out.rejected and "non-finite" in out.rejected[sampled[2]]
    assert out.account.bytes_up > out.account.payload_up > 0


def test_oversized_update_and_error_reply_do_not_stop_round() -> None:
    strat = _strategy(_cfg(), max_update_norm=1.0)
    msgs = list(strat.configure_train(1, wire.arrays_from_numpy(_global()), ConfigRecord(), None))
    sampled = strat.outcome.sampled  # type: ignore[union-attr]
    TaskIdentity._node_id = msgs[1].metadata.dst_node_id
    err = Message(Error(code=0, reason="client crashed"), reply_to=msgs[1])
    replies = [_reply(msgs[0], sampled[0], 0.01, 5), err, _reply(msgs[2], sampled[2], 100.0, 5)]
    arrays, _ = strat.aggregate_train(1, replies)
    out = strat.outcome
    assert arrays is not None and out is not None and out.ok
    assert [u.partition_id for u in out.updates] == [sampled[0]]
    assert "max_update_norm" in out.rejected[sampled[2]]
    assert out.failures == 1


def test_too_few_replies_keeps_routers() -> None:
    strat = _strategy(_cfg(min_replies=2))
    msgs = list(strat.configure_train(1, wire.arrays_from_numpy(_global()), ConfigRecord(), None))
    sampled = strat.outcome.sampled  # type: ignore[union-attr]
    arrays, metrics = strat.aggregate_train(1, [_reply(msgs[0], sampled[0], 1.0, 5)])  # 2 timed out
    assert arrays is None and metrics is None
    assert strat.outcome.failures == 2 and not strat.outcome.ok  # type: ignore[union-attr]


def test_eeqa_moves_quotas_after_warmup_and_offset_applies() -> None:
    eeqa = EEQAState.create({Q: 6, V: 6}, topk=2)
    strat = _strategy(_cfg(), eeqa, round_offset=4)
    msgs = list(strat.configure_train(1, wire.arrays_from_numpy(_global()), ConfigRecord(), None))
    assert strat.outcome.round == 5  # type: ignore[union-attr]
    assert msgs[0].content[wire.CONFIG][wire.SERVER_ROUND] == 5
    sampled = strat.outcome.sampled  # type: ignore[union-attr]
    imp = {Q: [0.9] * 6, V: [0.01] * 6}
    replies = [_reply(m, p, 0.0, 5, imp) for m, p in zip(msgs, sampled, strict=True)]
    strat.aggregate_train(1, replies)
    assert sum(strat.quotas.values()) == 4 and strat.quotas[Q] > strat.quotas[V]
    assert strat.outcome.quotas == {Q: 2, V: 2}  # type: ignore[union-attr]  # used in this round


def test_server_side_dp_wrapper_clips_and_noises_router_updates() -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    strat = _strategy(_cfg(sample_clients=2))
    dp = DifferentialPrivacyServerSideFixedClipping(
        strat, noise_multiplier=0.5, clipping_norm=0.1, num_sampled_clients=2
    )
    msgs = list(dp.configure_train(1, wire.arrays_from_numpy(_global()), ConfigRecord(), None))
    sampled = strat.outcome.sampled  # type: ignore[union-attr]
    replies = [_reply(m, p, 5.0, 10) for m, p in zip(msgs, sampled, strict=True)]
    arrays, _ = dp.aggregate_train(1, replies)
    assert arrays is not None
    flat = np.concatenate([arrays[k].numpy().ravel() for k in arrays])
    assert np.isfinite(flat).all() and not np.allclose(
        flat, 5.0
    )  # clipped to norm 0.1, then noised
    assert strat.outcome.ok  # type: ignore[union-attr]
