"""Router-size and wire-encoding candidates, and their bytes per round from the formula [D].

:data:`CANDIDATE_SETTINGS` maps a variant name to run-config overrides (flat keys of
:class:`smartfed.config.RunConfig`), for a benchmark sweep that picks the cheapest setting whose
quality matches the paper's full float32 router (``full_fp32``, the default).
:func:`round_bytes` gives the router value bytes of one round of any setting (no Flower framing;
docs/method.md, "Router size"), used by ``smartfed pool inspect`` and the injection report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smartfed.routing.lowrank import router_param_count

Override = Mapping[str, int | bool | str]

_INT8_EF_DELTA = {"wire_dtype": "int8", "wire_delta": True, "wire_error_feedback": True}

CANDIDATE_SETTINGS: dict[str, dict[str, int | bool | str]] = {
    "full_fp32": {},  # the paper's router and float32 both ways: the reference
    "full_bf16": {"wire_dtype": "bfloat16"},
    "full_bf16_delta": {"wire_dtype": "bfloat16", "wire_delta": True},
    "full_int8_ef": {"wire_dtype": "int8", "wire_error_feedback": True},
    "full_int8_delta_ef": dict(_INT8_EF_DELTA),
    "proj32": {"router_proj_dim": 32},
    "proj64": {"router_proj_dim": 64},
    "proj128": {"router_proj_dim": 128},
    "lowrank8": {"router_rank": 8},
    "lowrank16": {"router_rank": 16},
    "proj64_bf16": {"router_proj_dim": 64, "wire_dtype": "bfloat16"},
    "proj64_int8_ef": {"router_proj_dim": 64, "wire_dtype": "int8", "wire_error_feedback": True},
    "proj32_int8_delta_ef": {"router_proj_dim": 32, **_INT8_EF_DELTA},
    "proj64_int8_delta_ef": {"router_proj_dim": 64, **_INT8_EF_DELTA},
    "lowrank8_int8_delta_ef": {"router_rank": 8, **_INT8_EF_DELTA},
    "lowrank16_int8_delta_ef": {"router_rank": 16, **_INT8_EF_DELTA},
}
"""Variant name -> flat run-config overrides (``router_proj_dim``, ``router_rank``,
``wire_dtype``, ``wire_delta``, ``wire_error_feedback``)."""

_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}
_SCALE_BYTES = 9  # one double in the "wire" ConfigRecord's scale list (+ its tag), per tensor


@dataclass(frozen=True)
class RoundBytes:
    """Router value bytes of one setting (no Flower framing, no metrics).

    Attributes:
        params: router values per client per direction (``P_r``).
        tensors: router tensors per message (``L``, ``2 L`` for low-rank).
        up: bytes client -> server, per round (all sampled clients).
        down_full: bytes server -> client per round when every client gets the full state.
        down_held: the same when every client holds its last state (downlink updates).
        down_mean: expected downlink per round over the run (``wire_delta``: the share of
            sampled clients that were sampled before, uniform sampling).
    """

    params: int
    tensors: int
    up: int
    down_full: int
    down_held: int
    down_mean: float

    @property
    def total_mean(self) -> float:
        """Expected bytes per round, both directions."""
        return self.up + self.down_mean


def router_values(
    shapes: Mapping[str, tuple[int, int]], proj_dim: int = 0, rank: int = 0
) -> tuple[int, int]:
    """``(P_r, tensors)`` of routers over matrices with ``shapes[matrix] = (M_m, d_in_m)``."""
    params = sum(router_param_count(m, d, proj_dim, rank) for m, d in shapes.values())
    return params, len(shapes) * (2 if rank > 0 else 1)


def held_share(sample_clients: int, num_clients: int, num_rounds: int) -> float:
    """Mean share of a round's sampled clients that were sampled in an earlier round.

    Uniform sampling of ``S`` of ``N`` per round: round ``t`` has ``1 - (1 - S/N)^(t-1)``.
    """
    q = 1.0 - sample_clients / num_clients
    return 1.0 - sum(q**t for t in range(num_rounds)) / num_rounds


def round_bytes(
    shapes: Mapping[str, tuple[int, int]],
    setting: Override,
    sample_clients: int,
    num_clients: int = 20,
    num_rounds: int = 20,
) -> RoundBytes:
    """The router value bytes per round of ``setting`` (flat overrides over the defaults).

    Args:
        shapes: matrix -> ``(M_m, d_in_m)``.
        setting: e.g. ``CANDIDATE_SETTINGS[name]``.
        sample_clients: ``S``.
        num_clients: ``N`` (for the downlink-update share).
        num_rounds: ``R`` (same).
    """
    params, tensors = router_values(
        shapes, int(setting.get("router_proj_dim", 0)), int(setting.get("router_rank", 0))
    )
    dtype = str(setting.get("wire_dtype", "float32"))
    delta, b = bool(setting.get("wire_delta", False)), _BYTES[dtype]
    scales = tensors * _SCALE_BYTES if dtype == "int8" else 0
    up = sample_clients * (b * params + scales)
    full = sample_clients * (4 if dtype == "float32" else 2) * params
    held = sample_clients * (b * params + scales) if delta else full
    share = held_share(sample_clients, num_clients, num_rounds) if delta else 0.0
    return RoundBytes(params, tensors, up, full, held, share * held + (1 - share) * full)
