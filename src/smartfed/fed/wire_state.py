"""Stateful wire encodings: client-side error feedback and per-client downlink references [D].

Both are opt-in (``fed.wire_error_feedback``, ``fed.wire_delta``) and only change what travels;
the server's global state, aggregation and checkpoints stay float32 (:mod:`smartfed.fed.wire`).

Error feedback (client side, uplink): a client sends ``Q(u + e)`` where ``u = local - received``
is its update and ``e`` the rounding error it kept from its last reply; it keeps
``e' = (u + e) - decode(Q(u + e))``. ``e`` lives in the client's Flower ``Context.state``
(:data:`RESIDUAL`), which persists across the rounds of one run on the same node; a non-finite
residual is dropped (the NaN reply is rejected by the server anyway).

Downlink updates (server side, ``fed.wire_delta``): :class:`DownlinkRefs` keeps, per partition, the
state that client decoded in its last round whose reply arrived and decoded (``(round, state)``,
float32). A sampled client with such a state gets ``Q(global - state)`` plus
:data:`~smartfed.fed.wire.WIRE_BASE_ROUND`; every other one (first time sampled, last reply
missing or undecodable, or after a resume) gets the full state (bfloat16). The client keeps the
state it decoded in :data:`HELD` and refuses an update against a round it does not hold (an error
reply; the server then forgets the client and sends the full state next time). Because the next
update is taken against what the client decoded, the downlink rounding error is carried into the
next update: this is the server-side error feedback, per client. Memory on the server: one router
state per client that has been sampled.

The ClientApp wraps its training in :class:`ClientWire` (decode to a float32 instruction, train on
a float32 wire, re-encode the reply), so training code and the per-node worker never see these
encodings.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from smartfed.config import FedConfig, RunConfig
from smartfed.errors import WireFormatError

if TYPE_CHECKING:
    from types import ModuleType


def _wire() -> ModuleType:
    """:mod:`smartfed.fed.wire`, imported on first use (it imports torch; a ClientApp that only
    forwards messages to a worker imports this module without it)."""
    return importlib.import_module("smartfed.fed.wire")


HELD = "smartfed.wire.held"  # ArrayRecord: the state this client decoded in its last round
HELD_ROUND = "smartfed.wire.held-round"  # ConfigRecord {"round": r} of HELD
RESIDUAL = "smartfed.wire.residual"  # ArrayRecord: the client's uplink rounding error

State = Mapping[str, np.ndarray]


class ClientWire:
    """A client's stateful wire for one message: decode the instruction, encode the reply.

    Wraps the client's training without changing it: :meth:`receive` turns the instruction into a
    plain float32 one, :meth:`inner_config` makes the training reply in float32, and :meth:`reply`
    re-encodes that reply as a bf16/int8 update (with error feedback when asked). With neither
    ``wire_delta`` nor ``wire_error_feedback`` every method passes its input through.

    Args:
        fed: the run's federated settings.
        store: the client's ``Context.state`` (read and updated; persists across rounds).
    """

    def __init__(self, fed: FedConfig, store: RecordDict) -> None:
        self.fed, self.store = fed, store
        self.active = bool(fed.wire_delta or fed.wire_error_feedback)
        self.received: dict[str, np.ndarray] = {}

    def inner_config(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with a float32 wire, for the wrapped training when this wire is active."""
        if not self.active:
            return cfg
        fed = dataclasses.replace(
            cfg.fed, wire_dtype="float32", wire_delta=False, wire_error_feedback=False
        )
        return dataclasses.replace(cfg, fed=fed)

    def receive(self, content: RecordDict) -> RecordDict:
        """The instruction with its state decoded to float32 (a downlink update applied to the
        held state); with ``wire_delta`` the decoded state is kept for the next round.

        Raises:
            WireFormatError: as :func:`smartfed.fed.wire.unpack_train_ins` (the held state is
                dropped when it does not match).
        """
        if not self.active:
            return content
        wire = _wire()
        held = _held(self.store) if self.fed.wire_delta else None
        try:
            ins = wire.unpack_train_ins(content, held)
        except WireFormatError:
            for key in (HELD, HELD_ROUND):
                self.store.pop(key, None)
            raise
        self.received = {k: v.numpy() for k, v in ins.routers.items()}
        plain = wire.arrays_from_numpy(self.received)
        if self.fed.wire_delta:
            self.store[HELD] = plain
            self.store[HELD_ROUND] = ConfigRecord({"round": int(ins.server_round)})
        out = RecordDict({k: v for k, v in content.items() if k != wire.WIRE})
        out[wire.ARRAYS] = plain
        return out

    def reply(self, content: RecordDict) -> RecordDict:
        """Re-encode a float32 reply as an update ``local - received`` (+ the kept residual)."""
        if not self.active:
            return content
        wire = _wire()
        if wire.ARRAYS not in content:
            return content
        local = wire.decode_values(content[wire.ARRAYS], None)  # type: ignore[arg-type]
        update = {k: v.astype(np.float64) - self.received[k] for k, v in local.items()}
        if self.fed.wire_error_feedback:
            residual = _residual(self.store, update)
            update = {k: v + residual[k] for k, v in update.items()}
        arrays, enc = wire.encode_update(update, self.fed.wire_dtype)
        if self.fed.wire_error_feedback:
            sent = wire.decode_values(arrays, enc)
            left = {k: (v - sent[k]).astype(np.float32) for k, v in update.items()}
            if all(np.isfinite(v).all() for v in left.values()):
                self.store[RESIDUAL] = wire.arrays_from_numpy(left)
            else:  # a NaN update is rejected by the server; do not carry NaN forward
                self.store.pop(RESIDUAL, None)
        out = RecordDict(dict(content.items()))
        out[wire.ARRAYS], out[wire.WIRE] = arrays, enc
        return out


def _held(store: RecordDict) -> tuple[int, dict[str, np.ndarray]] | None:
    if HELD not in store or HELD_ROUND not in store:
        return None
    arrays, meta = store[HELD], store[HELD_ROUND]
    assert isinstance(arrays, ArrayRecord) and isinstance(meta, ConfigRecord)
    return int(meta["round"]), {k: arrays[k].numpy() for k in arrays}  # type: ignore[arg-type]


def _residual(store: RecordDict, like: State) -> dict[str, np.ndarray]:
    """The stored residual, or zeros when there is none or it does not fit ``like``."""
    rec = store.get(RESIDUAL)
    if isinstance(rec, ArrayRecord):
        res = {k: rec[k].numpy() for k in rec}
        if set(res) == set(like) and all(res[k].shape == v.shape for k, v in like.items()):
            return res
    return {k: np.zeros(v.shape, dtype=np.float32) for k, v in like.items()}


class DownlinkRefs:
    """The server's view of what each client holds, and the per-client downlink records.

    Args:
        wire_dtype: ``fed.wire_dtype``.
        delta: ``fed.wire_delta`` (off: every client gets the same full-state records).
    """

    def __init__(self, wire_dtype: str, delta: bool) -> None:
        self.wire_dtype, self.delta = wire_dtype, bool(delta)
        self.held: dict[int, tuple[int, dict[str, np.ndarray]]] = {}
        self._pending: dict[int, tuple[int, dict[str, np.ndarray]]] = {}

    def pack(
        self, arrays: ArrayRecord, partitions: Iterable[int], server_round: int
    ) -> tuple[dict[int, RecordDict], dict[str, np.ndarray]]:
        """The downlink records of each sampled partition (add the config record to each).

        Returns:
            ``(records, reference)``: ``reference`` is what replies are decoded against: the
            decoded full state (as :func:`wire.pack_state`), or with ``delta`` the float32 global
            state (replies are updates and the server adds them to it).
        """
        wire = _wire()
        full, decoded = wire.pack_state(arrays, self.wire_dtype)
        if not self.delta:
            return {p: RecordDict(dict(full.items())) for p in partitions}, decoded
        glob = {k: arrays[k].numpy() for k in arrays}
        records: dict[int, RecordDict] = {}
        self._pending = {}
        for p in partitions:
            ref = self.held.pop(p, None)
            if ref is None:
                records[p], start = RecordDict(dict(full.items())), decoded
            else:
                records[p], start = self._update_records(glob, *ref)
            self._pending[p] = (server_round, start)
        return records, glob

    def _update_records(
        self, glob: State, base: int, ref: State
    ) -> tuple[RecordDict, dict[str, np.ndarray]]:
        wire = _wire()
        arrays, enc = wire.encode_update(
            {k: v.astype(np.float64) - ref[k] for k, v in glob.items()}, self.wire_dtype
        )
        enc[wire.WIRE_BASE_ROUND] = int(base)
        return RecordDict({wire.ARRAYS: arrays, wire.WIRE: enc}), wire.decode_state(
            arrays, enc, ref
        )

    def acknowledge(self, partition: int) -> None:
        """A reply of ``partition`` arrived and decoded: it holds what it was sent this round."""
        if partition in self._pending:
            self.held[partition] = self._pending.pop(partition)
