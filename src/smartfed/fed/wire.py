"""SmartFed's wire contract: every record key, and pack/unpack of every message (style.md §6).

What travels (SPEC.md §1.4): down = routers (``ArrayRecord``) + quotas and step settings
(``ConfigRecord``); up = routers + example count, loss, timings, energy and, for EEQA methods, the
per-expert importance of every matrix (``MetricRecord``, one list per matrix, same keys from every
client). Quotas travel as a list of K_m in the sorted order of the router keys, which both sides
derive from the same pool.
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
from smartfed.train.client import ClientUpdate

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
ENERGY_KWH = "energy_kwh"
IMPORTANCE_PREFIX = "imp:"
ROUTER_SUFFIX = ".router.weight"


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


def unpack_train_ins(content: RecordDict) -> TrainIns:
    """Read a train instruction.

    Raises:
        WireFormatError: missing records/keys or a quota list that does not fit the routers.
    """
    try:
        arrays, cfg = content[ARRAYS], content[CONFIG]
        routers = state_from_arrays(arrays)
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


def pack_train_res(res: ClientUpdate) -> RecordDict:
    """Build the reply ``RecordDict`` (one ArrayRecord, one MetricRecord)."""
    metrics: dict[str, int | float | list[float]] = {
        NUM_EXAMPLES: int(res.num_examples),
        PARTITION_ID: int(res.partition_id),
        TRAIN_LOSS: float(res.train_loss),
        STEPS: int(res.steps),
        TRAIN_S: float(res.train_s),
        LOAD_S: float(res.load_s),
        ENERGY_KWH: float(res.energy_kwh),
    }
    for matrix, values in sorted(res.importance.items()):
        metrics[IMPORTANCE_PREFIX + matrix] = [float(v) for v in values]
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in res.routers.items()})
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})


def unpack_train_res(content: RecordDict) -> ClientUpdate:
    """Read a client reply.

    Raises:
        WireFormatError: missing records/keys or wrong value types.
    """
    try:
        m, arrays = content[METRICS], content[ARRAYS]
        importance = {
            k.removeprefix(IMPORTANCE_PREFIX): [float(v) for v in m[k]]  # type: ignore[union-attr]
            for k in m
            if k.startswith(IMPORTANCE_PREFIX)
        }
        return ClientUpdate(
            partition_id=int(m[PARTITION_ID]),
            num_examples=int(m[NUM_EXAMPLES]),
            train_loss=float(m[TRAIN_LOSS]),  # type: ignore[arg-type]
            routers={k: arrays[k].numpy() for k in arrays},
            importance=importance,
            steps=int(m[STEPS]),
            train_s=float(m[TRAIN_S]),  # type: ignore[arg-type]
            load_s=float(m[LOAD_S]),
            energy_kwh=float(m[ENERGY_KWH]),  # type: ignore[arg-type]
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
