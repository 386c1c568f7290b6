"""SmartFed's wire contract: every record key, and pack/unpack of every message.

What travels (docs/method.md §7): down = routers (``ArrayRecord``) + quotas and step settings
(``ConfigRecord``); up = routers + example count, loss, timings, energy and, for EEQA methods, the
per-expert importance of every matrix (``MetricRecord``, one list per matrix, same keys from every
client). Quotas travel as a list of K_m in the sorted order of the router keys, which both sides
derive from the same pool.

State encoding (``fed.wire_dtype`` [D], numerics in :mod:`smartfed.fed.codec`): ``float32``
sends the ``ArrayRecord`` of float32 arrays as it always did and adds nothing. Otherwise a
``ConfigRecord`` under :data:`WIRE` names the encoding (``dtype``; int8 adds ``scales``, one per
array in record order) and the arrays hold its codes:

============  =====================================  =========================================
wire_dtype    server -> client                       client -> server
============  =====================================  =========================================
float32       float32 state                          float32 state
bfloat16      bf16 state (uint16 bits)               bf16 state (uint16 bits)
int8          bf16 state (uint16 bits)               int8 update ``local - received`` + scale
============  =====================================  =========================================

Without ``fed.wire_delta``, downlink int8 is not used [D]: the state itself spans a wider range
than one round's update. The server decodes its own downlink to get exactly the state the clients
start from (the ``reference``), and rebuilds an int8 reply as ``reference + q * scale``. Everything
after decoding is float32: NaN/Inf checks, the update norm, aggregation and checkpoints.

An update (``delta = True`` in the :data:`WIRE` record; always for int8) decodes as
``reference + values``. With ``fed.wire_delta`` (:mod:`smartfed.fed.wire_state`) replies are
bf16/int8 updates vs the received state, decoded against the server's float32 global state, and a
downlink may be an update against the state the client held after round ``base-round``
(:data:`WIRE_BASE_ROUND`), which the client applies to its own copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto, recorddict_to_proto

from smartfed.errors import WireFormatError
from smartfed.fed import codec
from smartfed.update import ClientUpdate

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SERVER_ROUND = "server-round"  # written by FedAvg.configure_train
QUOTAS = "quotas"
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
LEARNING_RATE = "learning-rate"
NUM_EXAMPLES = "num-examples"  # FedAvg's weighted_by_key
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train_loss"
STEPS = "steps"
TRAIN_S = "train_s"
LOAD_S = "load_s"
STEP_LOSSES = "step_losses"
ENERGY_KWH = "energy_kwh"
IMPORTANCE_PREFIX = "imp:"
USAGE_PREFIX = "use:"
ROUTER_SUFFIX = ".router.weight"
WIRE = "wire"  # ConfigRecord naming a non-float32 state encoding; absent = float32
WIRE_DTYPE = "dtype"
WIRE_SCALES = "scales"
WIRE_DELTA = "delta"  # True: the arrays are an update, decoded as reference + values
WIRE_BASE_ROUND = "base-round"  # downlink update: the round of the state it applies to
WIRE_DTYPES = ("float32", "bfloat16", "int8")
_CODE_DTYPES = {"bfloat16": np.uint16, "int8": np.int8}

State = Mapping[str, np.ndarray]


def matrix_of(router_key: str) -> str:
    """``model.layers.0.self_attn.q_proj.router.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    return router_key.removesuffix(ROUTER_SUFFIX)


@dataclass
class TrainIns:
    """Server -> client for one round."""

    server_round: int
    routers: dict[str, torch.Tensor]
    quotas: dict[str, int]
    local_steps: int
    batch_size: int
    learning_rate: float


def arrays_from_state(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Wrap float32 CPU tensors as an ``ArrayRecord`` (keys in the given order)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def state_from_arrays(rec: ArrayRecord) -> dict[str, torch.Tensor]:
    """Unwrap an ``ArrayRecord`` into CPU tensors."""
    return {k: torch.from_numpy(np.array(rec[k].numpy(), copy=True)) for k in rec}


def downlink_dtype(wire_dtype: str) -> str:
    """The encoding of the server -> client state for a ``fed.wire_dtype`` (int8 -> bfloat16)."""
    return "bfloat16" if wire_dtype == "int8" else wire_dtype


def encode_state(
    state: State, wire_dtype: str, reference: State | None = None, delta: bool = False
) -> tuple[ArrayRecord, ConfigRecord | None]:
    """Encode a float32 state as ``(arrays, encoding record)``; ``None`` record = float32.

    Args:
        state: key -> float32 array, in record order.
        wire_dtype: ``float32``, ``bfloat16`` or ``int8``.
        reference: int8 (or ``delta``): the state the sender received; ``state - reference`` is
            sent.
        delta: bfloat16: send ``state - reference`` instead of the state (int8 always does).

    Raises:
        WireFormatError: an unknown dtype, or an update without a reference of the same
            keys/shapes.
    """
    if wire_dtype == "float32":
        return arrays_from_numpy(state), None
    if wire_dtype not in WIRE_DTYPES:
        raise WireFormatError(f"wire_dtype={wire_dtype!r}: choose one of {WIRE_DTYPES}")
    if wire_dtype == "bfloat16" and not delta:
        codes = {k: codec.to_bf16_bits(v) for k, v in state.items()}
        return arrays_from_numpy(codes), ConfigRecord({WIRE_DTYPE: "bfloat16"})
    _check_reference(state, reference)
    assert reference is not None  # _check_reference raised otherwise
    return encode_update(
        {k: v.astype(np.float64) - reference[k] for k, v in state.items()}, wire_dtype
    )


def encode_update(update: State, wire_dtype: str) -> tuple[ArrayRecord, ConfigRecord]:
    """Encode an update (any float arrays) in ``bfloat16`` or ``int8``; decodes as ref + values.

    Raises:
        WireFormatError: ``wire_dtype`` is not bfloat16 or int8.
    """
    if wire_dtype == "bfloat16":
        codes = {k: codec.to_bf16_bits(v) for k, v in update.items()}
        return arrays_from_numpy(codes), ConfigRecord({WIRE_DTYPE: "bfloat16", WIRE_DELTA: True})
    if wire_dtype != "int8":
        raise WireFormatError(f"updates travel as bfloat16 or int8, not {wire_dtype!r}")
    quantized = {k: codec.quantize_int8(v) for k, v in update.items()}
    enc = ConfigRecord(
        {WIRE_DTYPE: "int8", WIRE_SCALES: [scale for _, scale in quantized.values()]}
    )
    return arrays_from_numpy({k: q for k, (q, _) in quantized.items()}), enc


def is_update(enc: ConfigRecord | None) -> bool:
    """True when the encoding record describes an update (int8, or ``delta``)."""
    if enc is None:
        return False
    return str(enc.get(WIRE_DTYPE, "")) == "int8" or bool(enc.get(WIRE_DELTA, False))


def decode_state(
    arrays: ArrayRecord, enc: ConfigRecord | None, reference: State | None = None
) -> dict[str, np.ndarray]:
    """Decode :func:`encode_state`'s records back to float32 arrays (record order).

    Raises:
        WireFormatError: unknown encoding, codes of the wrong dtype, a scale list that does not
            fit, or an int8 update without the matching reference.
    """
    values = decode_values(arrays, enc)
    if not is_update(enc):
        return values
    _check_reference(values, reference)
    assert reference is not None
    return {k: np.asarray(reference[k], dtype=np.float32) + v for k, v in values.items()}


def decode_values(arrays: ArrayRecord, enc: ConfigRecord | None) -> dict[str, np.ndarray]:
    """The float32 values the arrays encode (a state, or an update without its reference).

    Raises:
        WireFormatError: unknown encoding, codes of the wrong dtype or a scale list that does not
            fit.
    """
    dtype = "float32" if enc is None else str(enc.get(WIRE_DTYPE, ""))
    if dtype not in WIRE_DTYPES:
        raise WireFormatError(f"unknown state encoding {dtype!r}; server/client versions differ")
    codes = {k: arrays[k].numpy() for k in arrays}
    if dtype == "float32":  # as before the encodings existed: arrays pass through unchecked
        return {k: np.array(v, copy=True) for k, v in codes.items()}
    want = np.dtype(_CODE_DTYPES[dtype])
    bad = [k for k, v in codes.items() if v.dtype != want]
    if bad:
        raise WireFormatError(f"{dtype} state: {bad[0]} holds {codes[bad[0]].dtype}, not {want}")
    if dtype == "bfloat16":
        return {k: codec.from_bf16_bits(v) for k, v in codes.items()}
    scales = list(enc.get(WIRE_SCALES, []))  # type: ignore[union-attr]
    if len(scales) != len(codes):
        raise WireFormatError(f"int8 state: {len(scales)} scales for {len(codes)} arrays")
    return {
        k: codec.dequantize_int8(q, float(s))
        for (k, q), s in zip(codes.items(), scales, strict=True)
    }


def _check_reference(state: State, reference: State | None) -> None:
    """An int8 update needs the received state: same keys, same shapes."""
    if reference is None:
        raise WireFormatError("int8 updates need the state they were computed against")
    if set(state) != set(reference) or any(
        np.shape(v) != np.shape(reference[k]) for k, v in state.items()
    ):
        raise WireFormatError(
            "int8 update keys/shapes differ from the state sent this round; "
            "use wire_dtype float32 for methods whose reply is not their trainable state"
        )


def pack_state(arrays: ArrayRecord, wire_dtype: str) -> tuple[RecordDict, dict[str, np.ndarray]]:
    """The downlink records of the global state, and the float32 state clients will decode.

    Args:
        arrays: the global float32 state (sent as is for ``float32``).
        wire_dtype: ``fed.wire_dtype``; the downlink uses :func:`downlink_dtype`.

    Returns:
        ``(records, reference)``: ``records`` holds :data:`ARRAYS` (+ :data:`WIRE`); add the
        config record to it. ``reference`` is what int8 replies are rebuilt against.
    """
    down = downlink_dtype(wire_dtype)
    if down == "float32":
        return RecordDict({ARRAYS: arrays}), {k: arrays[k].numpy() for k in arrays}
    sent, enc = encode_state({k: arrays[k].numpy() for k in arrays}, down)
    assert enc is not None
    return RecordDict({ARRAYS: sent, WIRE: enc}), decode_state(sent, enc)


def _wire_record(content: RecordDict) -> ConfigRecord | None:
    if WIRE not in content:
        return None
    rec = content[WIRE]
    if not isinstance(rec, ConfigRecord):
        raise WireFormatError(f"record {WIRE!r} is a {type(rec).__name__}, not a ConfigRecord")
    return rec


def pack_train_config(
    quotas: Mapping[str, int], local_steps: int, batch_size: int, learning_rate: float
) -> ConfigRecord:
    """The per-round ``ConfigRecord``: quotas (sorted matrix order) and step settings."""
    return ConfigRecord(
        {
            QUOTAS: [int(quotas[m]) for m in sorted(quotas)],
            LOCAL_STEPS: int(local_steps),
            BATCH_SIZE: int(batch_size),
            LEARNING_RATE: float(learning_rate),
        }
    )


def unpack_train_ins(content: RecordDict, held: tuple[int, State] | None = None) -> TrainIns:
    """Read a train instruction.

    Args:
        content: the instruction records.
        held: ``(round, state)`` the client decoded last time (for a downlink update).

    Raises:
        WireFormatError: missing records/keys, a quota list that does not fit the routers, or a
            downlink update against a state this client does not hold.
    """
    try:
        arrays, cfg = content[ARRAYS], content[CONFIG]
        enc = _wire_record(content)
        reference = None
        if enc is not None and WIRE_BASE_ROUND in enc:
            base = int(enc[WIRE_BASE_ROUND])  # type: ignore[arg-type]
            if held is None or held[0] != base:
                have = "no state" if held is None else f"the state of round {held[0]}"
                raise WireFormatError(
                    f"downlink update against round {base}, but this client holds {have}; the "
                    "server sends the full state next time"
                )
            reference = held[1]
        routers = {k: torch.from_numpy(v) for k, v in decode_state(arrays, enc, reference).items()}
        matrices = sorted(matrix_of(k) for k in routers if k.endswith(ROUTER_SUFFIX))  # routed only
        quotas = list(cfg[QUOTAS])
        if len(quotas) != len(matrices):
            raise WireFormatError(f"{len(quotas)} quotas for {len(matrices)} routed matrices")
        return TrainIns(
            int(cfg[SERVER_ROUND]),
            routers,
            dict(zip(matrices, map(int, quotas), strict=True)),
            int(cfg[LOCAL_STEPS]),
            int(cfg[BATCH_SIZE]),
            float(cfg[LEARNING_RATE]),
        )
    except KeyError as err:
        raise WireFormatError(
            f"train instruction lacks {err}; server and client versions differ"
        ) from err


def pack_train_res(
    res: ClientUpdate,
    wire_dtype: str = "float32",
    received: State | None = None,
) -> RecordDict:
    """Build the reply ``RecordDict`` (one ArrayRecord, one MetricRecord, + :data:`WIRE`).

    Args:
        res: the client's update.
        wire_dtype: ``fed.wire_dtype`` (how ``res.routers`` is encoded).
        received: the state the client started from (int8: the update is taken against it).
    """
    metrics: dict[str, int | float | list[float] | list[int]] = {
        NUM_EXAMPLES: int(res.num_examples),
        PARTITION_ID: int(res.partition_id),
        TRAIN_LOSS: float(res.train_loss),
        STEPS: int(res.steps),
        TRAIN_S: float(res.train_s),
        LOAD_S: float(res.load_s),
        ENERGY_KWH: float(res.energy_kwh),
    }
    if res.step_losses:
        metrics[STEP_LOSSES] = [float(v) for v in res.step_losses]
    for matrix, values in sorted(res.importance.items()):
        metrics[IMPORTANCE_PREFIX + matrix] = [float(v) for v in values]
    for matrix, counts in sorted(res.usage.items()):
        metrics[USAGE_PREFIX + matrix] = [int(c) for c in counts]
    arrays, enc = encode_state(res.routers, wire_dtype, received)
    out = RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})
    if enc is not None:
        out[WIRE] = enc
    return out


def unpack_train_res(content: RecordDict, reference: State | None = None) -> ClientUpdate:
    """Read a client reply; its state is decoded to float32 (int8: ``reference + update``).

    Args:
        content: the reply records.
        reference: the state sent this round as the clients decoded it (:func:`pack_state`).

    Raises:
        WireFormatError: missing records/keys, wrong value types or an undecodable state.
    """
    try:
        m, arrays = content[METRICS], content[ARRAYS]
        importance = {
            k.removeprefix(IMPORTANCE_PREFIX): [float(v) for v in m[k]]  # type: ignore[union-attr]
            for k in m
            if k.startswith(IMPORTANCE_PREFIX)
        }
        usage = {
            k.removeprefix(USAGE_PREFIX): [int(v) for v in m[k]]  # type: ignore[union-attr]
            for k in m
            if k.startswith(USAGE_PREFIX)
        }
        return ClientUpdate(
            partition_id=int(m[PARTITION_ID]),
            num_examples=int(m[NUM_EXAMPLES]),
            train_loss=float(m[TRAIN_LOSS]),  # type: ignore[arg-type]
            routers=decode_state(arrays, _wire_record(content), reference),
            importance=importance,
            usage=usage,
            steps=int(m[STEPS]),
            train_s=float(m[TRAIN_S]),  # type: ignore[arg-type]
            load_s=float(m[LOAD_S]),
            energy_kwh=float(m[ENERGY_KWH]),  # type: ignore[arg-type]
            step_losses=[float(v) for v in m[STEP_LOSSES]] if STEP_LOSSES in m else [],  # type: ignore[union-attr]
        )
    except (KeyError, TypeError, ValueError) as err:
        raise WireFormatError(f"client reply lacks or mistypes {err}; versions differ") from err


def pack_hello(partition_id: int) -> RecordDict:
    """Reply to the start-of-run query: which partition this node holds."""
    return RecordDict({METRICS: MetricRecord({PARTITION_ID: int(partition_id)})})


def unpack_hello(content: RecordDict) -> int:
    """Read the partition id from a hello reply."""
    try:
        return int(content[METRICS][PARTITION_ID])  # type: ignore[arg-type]
    except (KeyError, TypeError) as err:
        raise WireFormatError(f"hello reply lacks {err}") from err


def message_bytes(msg: Message) -> int:
    """Serialized size of a Message as Flower encodes it (protobuf: metadata + records + error)."""
    return int(message_to_proto(msg).ByteSize())


def content_bytes(msg: Message) -> int:
    """Serialized size of a Message's records only (no metadata; deterministic for a payload)."""
    return int(recorddict_to_proto(msg.content).ByteSize()) if msg.has_content() else 0


def is_finite_update(routers: Mapping[str, np.ndarray]) -> bool:
    """True when every router tensor is all-finite."""
    return all(bool(np.isfinite(v).all()) for v in routers.values())


def update_norm(routers: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``routers - reference`` over all tensors (float64)."""
    sq = math.fsum(
        float(np.sum((routers[k].astype(np.float64) - reference[k]) ** 2)) for k in reference
    )
    return math.sqrt(sq)


def arrays_from_numpy(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Wrap numpy arrays as an ``ArrayRecord`` (keys in the given order)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
