"""``SmartFedStrategy(FedAvg)``: seeded sampling, robust router averaging and EEQA.

Overrides only ``configure_train`` (seeded client sampling over partition ids, quotas into the
config, bytes down) and ``aggregate_train`` (per-reply checks, mean of routers weighted by what the
server knows, or a robust rule, importance -> EEQA, bytes up). Everything else is Flower's FedAvg;
``Strategy.start`` drives rounds.

Clients are not trusted (docs/security.md, "Clients and server"): a reply is used only when it
comes from the node that holds the partition it names, once per round, with finite routers,
loss and importance of the right shapes; its weight is the partition size the server assigned
(or, for a partition the server does not know, its claim capped at the round's lower-median claim).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from smartfed.config import RunConfig
from smartfed.errors import SmartFedError
from smartfed.fed import wire
from smartfed.fed.accounting import RoundAccount
from smartfed.fed.wire_state import DownlinkRefs
from smartfed.log import get_logger
from smartfed.quota.allocate import aggregate_importance
from smartfed.quota.schedule import EEQAState
from smartfed.update import ClientUpdate

log = get_logger(__name__)

Aggregator = Callable[[Sequence[tuple[int, dict[str, np.ndarray]]]], dict[str, np.ndarray]]
TRIM_FRACTION = 0.2
"""Default cut fraction of :func:`trimmed_mean` [D] (Flower's FedTrimmedAvg ``beta``)."""


def weighted_mean(updates: Sequence[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Example-weighted mean per tensor [P: FedAvg], accumulated in float64, returned float32."""
    total = sum(n for n, _ in updates)
    keys = list(updates[0][1])
    return {
        k: (sum(np.float64(n) * u[k].astype(np.float64) for n, u in updates) / total).astype(
            np.float32
        )
        for k in keys
    }


def trimmed_mean(
    updates: Sequence[tuple[int, dict[str, np.ndarray]]], cut: float = TRIM_FRACTION
) -> dict[str, np.ndarray]:
    """Per-coordinate trimmed mean (Flower's ``trim_mean``), unweighted, returned float32.

    Args:
        updates: ``(weight, {key: array})`` per client; weights are ignored (a robust rule must not
            let a client's claim move it).
        cut: fraction of clients cut at each end, in [0, 0.5) (with fewer than ``1 / cut``
            clients nothing is cut: the plain mean).
    """
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

    keys = list(updates[0][1])
    return {
        k: np.asarray(
            trim_mean(np.stack([u[k].astype(np.float64) for _, u in updates]), cut), np.float32
        )
        for k in keys
    }


def coordinate_median(
    updates: Sequence[tuple[int, dict[str, np.ndarray]]],
) -> dict[str, np.ndarray]:
    """Per-coordinate median (as Flower's FedMedian), unweighted, returned float32."""
    keys = list(updates[0][1])
    return {
        k: np.median(np.stack([u[k].astype(np.float64) for _, u in updates]), axis=0).astype(
            np.float32
        )
        for k in keys
    }


def make_aggregator(name: str, cut: float = TRIM_FRACTION) -> Aggregator:
    """The aggregation rule of ``fed.aggregation`` (``mean``, ``trimmed_mean``, ``median``).

    Raises:
        SmartFedError: an unknown rule name.
    """
    if name == "mean":
        return weighted_mean
    if name == "trimmed_mean":
        return lambda updates: trimmed_mean(updates, cut)
    if name == "median":
        return coordinate_median
    raise SmartFedError(f"fed.aggregation={name!r}: choose mean, trimmed_mean or median")


def server_weights(claims: Sequence[tuple[int, int]], known: dict[int, int]) -> list[int]:
    """The FedAvg weight of each ``(partition id, claimed examples)`` [D].

    A partition whose size the server assigned gets that size, whatever the client claims; any
    other claim is capped at the lower median of the round's claims (one client cannot outweigh
    the rest by claiming more).
    """
    unknown = sorted(n for pid, n in claims if pid not in known)
    cap = unknown[(len(unknown) - 1) // 2] if unknown else 0
    return [known[pid] if pid in known else min(n, cap) for pid, n in claims]


def sample_partitions(partitions: Sequence[int], k: int, seed: int, server_round: int) -> list[int]:
    """The partitions trained in a round: a pure function of (seed, round) [D], sorted."""
    rng = random.Random(seed * 1_000_003 + server_round)
    return sorted(rng.sample(sorted(partitions), k))


@dataclass
class RoundOutcome:
    """What the strategy learnt in one round (read by the server loop to log and checkpoint)."""

    round: int
    account: RoundAccount
    sampled: list[int] = field(default_factory=list)
    updates: list[ClientUpdate] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    failures: int = 0
    quotas: dict[str, int] = field(default_factory=dict)
    ok: bool = False
    decoded: bool = False


class SmartFedStrategy(FedAvg):
    """FedAvg over routers with EEQA quotas, seeded sampling and per-reply validation.

    Args:
        cfg: the run config.
        node_partitions: node id -> partition id (from the start-of-run hello).
        quotas: matrix -> K_m used when EEQA is off or not given.
        eeqa: the EEQA schedule (``None`` = quotas never move).
        round_offset: rounds already completed (resume); Flower's round r is round r + offset.
        max_update_norm: reject updates farther than this from the global routers (L2).
        aggregate: the aggregation rule (default: example-weighted mean).
        partition_sizes: partition id -> rows the server assigned it (the FedAvg weight; a
            partition missing here is weighted by its capped claim, :func:`server_weights`).
        experts_per_matrix: matrix -> M_m (importance lists must have this length; ``None`` =
            only finiteness and matrix names are checked).
    """

    def __init__(
        self,
        cfg: RunConfig,
        node_partitions: dict[int, int],
        quotas: dict[str, int],
        eeqa: EEQAState | None,
        *,
        round_offset: int = 0,
        max_update_norm: float = math.inf,
        aggregate: Aggregator = weighted_mean,
        partition_sizes: dict[int, int] | None = None,
        experts_per_matrix: dict[str, int] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=0.0,
            fraction_evaluate=0.0,
            min_train_nodes=cfg.fed.sample_clients,
            min_available_nodes=1,
        )
        self.cfg, self.eeqa, self.offset = cfg, eeqa, round_offset
        self.node_of = {pid: node for node, pid in node_partitions.items()}
        self.quotas = dict(eeqa.quotas if eeqa else quotas)
        self.max_update_norm, self.aggregate = max_update_norm, aggregate
        self.partition_sizes = dict(partition_sizes or {})
        self.experts_per_matrix = dict(experts_per_matrix) if experts_per_matrix else None
        self.outcome: RoundOutcome | None = None
        self._global: dict[str, np.ndarray] = {}
        self._sent: dict[str, np.ndarray] = {}
        self.downlink = DownlinkRefs(cfg.fed.wire_dtype, cfg.fed.wire_delta)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send routers + quotas to the sampled partitions' nodes (seeded: sample_partitions)."""
        t0 = time.perf_counter()
        rnd = server_round + self.offset
        out = self.outcome = RoundOutcome(rnd, RoundAccount(started=t0), quotas=dict(self.quotas))
        out.sampled = sample_partitions(
            list(self.node_of), self.cfg.fed.sample_clients, self.cfg.train.seed, rnd
        )
        # what the clients will decode (== the global state for float32): int8 replies are
        # rebuilt against it and update norms are measured from it (fed.wire_delta: the float32
        # global state, and each client gets its own records, wire_state.DownlinkRefs)
        records, self._sent = self.downlink.pack(arrays, out.sampled, rnd)
        self._global = self._sent
        t = self.cfg.train
        train_cfg = wire.pack_train_config(
            self.quotas, t.local_steps, t.batch_size, t.learning_rate
        )
        train_cfg[wire.SERVER_ROUND] = rnd
        for record in records.values():
            record[wire.CONFIG] = train_cfg
        msgs = [
            Message(records[p], dst_node_id=self.node_of[p], message_type=MessageType.TRAIN)
            for p in out.sampled
        ]
        out.account.bytes_down = sum(wire.message_bytes(m) for m in msgs)
        out.account.payload_down = sum(wire.content_bytes(m) for m in msgs)
        out.account.add_phase("configure_s", time.perf_counter() - t0)
        self._sent_at = time.perf_counter()
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies one by one, average the accepted routers, run EEQA."""
        out = self.outcome
        assert out is not None  # configure_train always runs first
        replies = self.decoded_replies(replies)
        t0 = time.perf_counter()
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        out.failures = len(errors) + max(0, len(out.sampled) - len(replies))
        for msg in valid:
            self._accept(msg, out)
        out.updates.sort(key=lambda u: u.partition_id)
        if len(out.updates) < self.cfg.fed.min_replies:
            log.warning(
                "round %d: %d accepted replies < min_replies=%d; routers unchanged",
                out.round,
                len(out.updates),
                self.cfg.fed.min_replies,
            )
            out.account.add_phase("aggregate_s", time.perf_counter() - t0)
            return None, None
        weights = server_weights(
            [(u.partition_id, u.num_examples) for u in out.updates], self.partition_sizes
        )
        for u, w in zip(out.updates, weights, strict=True):
            u.num_examples = w  # what the round log and every later weighting use
        routers = self.aggregate([(u.num_examples, u.routers) for u in out.updates])
        if self.eeqa is not None:
            scores = aggregate_importance(
                [(u.num_examples, u.importance) for u in out.updates if u.importance]
            )
            self.quotas = self.eeqa.update(out.round, scores)
        out.ok = True
        out.account.add_phase("aggregate_s", time.perf_counter() - t0)
        n = sum(u.num_examples for u in out.updates)
        loss = math.fsum(u.num_examples * u.train_loss for u in out.updates) / n
        return wire.arrays_from_numpy(routers), MetricRecord({wire.TRAIN_LOSS: loss})

    def decoded_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The round's replies with every state decoded to float32; bytes counted as they came.

        Counts ``bytes_up``/``payload_up`` from the messages as received (encoded), then replaces
        each encoded reply by a copy whose arrays hold the float32 state they decode to (against
        what this round sent, ``fed.wire_dtype`` / ``wire_delta``), without the
        :data:`~smartfed.fed.wire.WIRE` record. Everything after this sees float32 states: the
        checks, the aggregation and a DP wrapper's clipping (:class:`DecodedDPClipping`). A reply
        that does not decode stays as it came and is rejected by :meth:`aggregate_train`. Once
        per round (a second call returns the replies unchanged).
        """
        out = self.outcome
        assert out is not None  # configure_train always runs first
        replies = list(replies)
        if out.decoded:
            return replies
        out.decoded = True
        out.account.add_phase("clients_s", time.perf_counter() - self._sent_at)
        out.account.bytes_up = sum(wire.message_bytes(m) for m in replies)
        out.account.payload_up = sum(wire.content_bytes(m) for m in replies)
        return [self._decoded(m) for m in replies]

    def _decoded(self, msg: Message) -> Message:
        """A copy of ``msg`` holding the float32 state its arrays decode to (``msg`` itself when
        it is float32 already, an error, or does not decode)."""
        if msg.has_error() or not msg.has_content() or wire.WIRE not in msg.content:
            return msg
        try:
            state = wire.decode_state(msg.content[wire.ARRAYS], msg.content[wire.WIRE], self._sent)
        except (SmartFedError, KeyError, TypeError):
            return msg
        content = RecordDict({k: v for k, v in msg.content.items() if k != wire.WIRE})
        content[wire.ARRAYS] = wire.arrays_from_numpy(state)
        out = copy.copy(msg)  # same metadata; the received message stays as it came
        out.content = content
        return out

    def _accept(self, msg: Message, out: RoundOutcome) -> None:
        node = msg.metadata.src_node_id
        try:
            upd = wire.unpack_train_res(msg.content, self._sent)
        except SmartFedError as err:
            out.rejected[-1 - len(out.rejected)] = str(err)
            log.warning("round %d: reply from node %d rejected: %s", out.round, node, err)
            return
        if self._check_sender(upd, node, out):  # logged under no partition id
            return
        self.downlink.acknowledge(upd.partition_id)  # it holds what it was sent this round
        reason = self._check(upd)
        if reason:
            out.rejected[upd.partition_id] = reason
            log.warning(
                "round %d: update of partition %d rejected: %s", out.round, upd.partition_id, reason
            )
        else:
            out.updates.append(upd)

    def _check_sender(self, upd: ClientUpdate, node: int, out: RoundOutcome) -> str:
        """Why a reply may not speak for its partition ("" = it may): wrong node or a repeat."""
        pid = upd.partition_id
        if pid in self.node_of and self.node_of[pid] != node:
            reason = f"node {node} claims partition {pid}, which node {self.node_of[pid]} holds"
            out.rejected[-1 - len(out.rejected)] = reason  # never under the victim's id
            log.warning("round %d: reply rejected: %s", out.round, reason)
            return reason
        if any(u.partition_id == pid for u in out.updates) or pid in out.rejected:
            reason = f"a second reply for partition {pid} this round"
            out.rejected[-1 - len(out.rejected)] = reason
            log.warning("round %d: reply rejected: %s", out.round, reason)
            return reason
        return ""

    def _check_importance(self, upd: ClientUpdate) -> str:
        """Why a reply's importance is unusable ("" = fine): unknown matrix, length, NaN/inf."""
        for matrix, values in upd.importance.items():
            if matrix not in self.quotas:
                return f"importance for unknown matrix {matrix!r}"
            want = self.experts_per_matrix.get(matrix) if self.experts_per_matrix else None
            if want is not None and len(values) != want:
                return f"importance for {matrix!r} has {len(values)} values, not {want}"
            if not all(math.isfinite(v) for v in values):
                return f"non-finite importance for {matrix!r}"
        return ""

    def _check(self, upd: ClientUpdate) -> str:
        """Return why an update is unusable ("" = fine)."""
        if upd.partition_id not in self.outcome.sampled:  # type: ignore[union-attr]
            return "partition was not sampled this round"
        if set(upd.routers) != set(self._global):
            return "router keys differ from the global routers"
        if any(upd.routers[k].shape != v.shape for k, v in self._global.items()):
            return "router shapes differ from the global routers"
        if not wire.is_finite_update(upd.routers) or not math.isfinite(upd.train_loss):
            return "non-finite router weights or loss"
        if upd.num_examples <= 0:
            return "num-examples must be > 0"
        bad_importance = self._check_importance(upd)
        if bad_importance:
            return bad_importance
        norm = wire.update_norm(upd.routers, self._global)
        if norm > self.max_update_norm:
            return f"update norm {norm:.3g} > max_update_norm {self.max_update_norm:.3g}"
        return ""


class DecodedDPClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP, applied to the decoded float32 updates [D].

    Flower clips each reply's arrays against the global arrays of the round; under a
    ``fed.wire_dtype`` other than float32 those arrays are bf16 bits or int8 codes (or, with
    ``wire_delta``, updates), so the replies are decoded first
    (:meth:`SmartFedStrategy.decoded_replies`): the clipping norm bounds ``decoded - global``
    and the Gaussian noise is added to the float32 aggregate, under every encoding.

    Args:
        strategy: the wrapped strategy.
        noise_multiplier: ``fed.dp_noise_multiplier``.
        clipping_norm: ``fed.dp_clipping_norm``.
        num_sampled_clients: ``fed.sample_clients``.
    """

    def __init__(
        self,
        strategy: SmartFedStrategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
    ) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        self.smartfed = strategy

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the replies, then Flower's clipping, aggregation and noise."""
        return super().aggregate_train(server_round, self.smartfed.decoded_replies(replies))
