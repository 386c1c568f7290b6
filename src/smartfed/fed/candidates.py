"""Router-size and wire-encoding candidates, and their bytes per round from the formula [D].

:data:`CANDIDATE_SETTINGS` maps a variant name to run-config overrides (flat keys of
:class:`smartfed.config.RunConfig`), for a benchmark sweep that picks the cheapest setting whose
quality matches the paper's full float32 router (``full_fp32``, the default).
:func:`round_bytes` gives the router value bytes of one round of any setting (no Flower framing;
docs/method.md, "Bytes per round"); :func:`compare_bytes` applies it to the run's setting, the
paper-faithful full float32 router and FedIT, and :func:`format_bytes` /
:func:`bytes_summary_line` render that for ``smartfed pool inspect`` and ``smartfed train``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smartfed.config import FedConfig, RunConfig
from smartfed.pool.pool import LoraPool
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
    return value_bytes(params, tensors, setting, sample_clients, num_clients, num_rounds)


def value_bytes(
    params: int,
    tensors: int,
    setting: Override,
    sample_clients: int,
    num_clients: int = 20,
    num_rounds: int = 20,
) -> RoundBytes:
    """The byte formula: ``params`` values in ``tensors`` tensors per message, encoded as
    ``setting`` says (``wire_dtype``, ``wire_delta``), ``sample_clients`` clients per round."""
    dtype = str(setting.get("wire_dtype", "float32"))
    delta, b = bool(setting.get("wire_delta", False)), _BYTES[dtype]
    scales = tensors * _SCALE_BYTES if dtype == "int8" else 0
    up = sample_clients * (b * params + scales)
    full = sample_clients * (4 if dtype == "float32" else 2) * params
    held = sample_clients * (b * params + scales) if delta else full
    share = held_share(sample_clients, num_clients, num_rounds) if delta else 0.0
    return RoundBytes(params, tensors, up, full, held, share * held + (1 - share) * full)


def pool_dims(pool: LoraPool) -> dict[str, tuple[int, int, int]]:
    """Matrix -> ``(M_m, d_in_m, d_out_m)`` of a pool (model order)."""
    dims = {}
    for matrix, m in pool.experts_per_matrix().items():
        mod = pool.modules_for(matrix)[0][1]
        dims[matrix] = (m, mod.d_in, mod.d_out)
    return dims


def fedit_rank(pool: LoraPool) -> int:
    """The rank FedIT trains on ``pool``'s matrices: the largest rank in the pool (``fedit``)."""
    return max(a.rank for a in pool.adapters)


@dataclass(frozen=True)
class BytesRow:
    """One line of the bytes comparison: a label and its :class:`RoundBytes`."""

    label: str
    bytes: RoundBytes


def compare_bytes(
    dims: Mapping[str, tuple[int, int, int]],
    router_proj_dim: int,
    router_rank: int,
    fed: FedConfig,
    lora_rank: int,
) -> list[BytesRow]:
    """Bytes per round of this run's setting, the paper-faithful router and FedIT [D].

    All three come from :func:`value_bytes` with ``fed``'s sampled clients, clients and rounds:
    the run's routers in ``fed.wire_dtype`` (``wire_delta``); the paper's full float32 routers
    (``M_m x d_in_m`` per matrix); FedIT's LoRA of rank ``lora_rank`` on the same matrices
    (``r (d_in_m + d_out_m)`` values, ``A`` and ``B`` per matrix), float32 both ways.

    Args:
        dims: matrix -> ``(M_m, d_in_m, d_out_m)`` (:func:`pool_dims`).
        router_proj_dim: ``router.router_proj_dim`` (0 = full routers).
        router_rank: ``router.router_rank`` (0 = not low-rank).
        fed: the run's federated settings.
        lora_rank: FedIT's rank (:func:`fedit_rank`).
    """
    s, n, r = fed.sample_clients, fed.num_clients, fed.num_rounds
    shapes = {k: (m, d_in) for k, (m, d_in, _) in dims.items()}
    mine = {
        "router_proj_dim": router_proj_dim,
        "router_rank": router_rank,
        "wire_dtype": fed.wire_dtype,
        "wire_delta": fed.wire_delta,
    }
    lora = sum(lora_rank * (d_in + d_out) for _, d_in, d_out in dims.values())
    return [
        BytesRow(
            f"this run: {describe(mine, fed.wire_error_feedback)}",
            round_bytes(shapes, mine, s, n, r),
        ),
        BytesRow("paper-faithful: full router, float32", round_bytes(shapes, {}, s, n, r)),
        BytesRow(
            f"FedIT: LoRA r={lora_rank} on the same {len(dims)} matrices, float32",
            value_bytes(lora, 2 * len(dims), {}, s, n, r),
        ),
    ]


def describe(setting: Override, error_feedback: bool = False) -> str:
    """A short name of a router/wire setting, e.g. ``projected h=64, int8 updates, delta down``."""
    h, r = int(setting.get("router_proj_dim", 0)), int(setting.get("router_rank", 0))
    router = f"low-rank r={r}" if r else f"projected h={h}" if h else "full router"
    dtype = str(setting.get("wire_dtype", "float32"))
    parts = [router, "int8 updates" if dtype == "int8" else dtype]
    if setting.get("wire_delta"):
        parts.append("delta down")
    if error_feedback or setting.get("wire_error_feedback"):
        parts.append("error feedback")
    return ", ".join(parts)


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, 3 significant digits: ``812 B``, ``53.2 kB``, ``8.92 MB``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size * 0.9995:
            v = n / size
            return (
                f"{v:.0f} {unit}"
                if v >= 99.95
                else f"{v:.1f} {unit}"
                if v >= 9.995
                else f"{v:.2f} {unit}"
            )
    return f"{n:.0f} B"


def format_bytes(rows: list[BytesRow], fed: FedConfig) -> list[str]:
    """A short table of :func:`compare_bytes` (the first row is the reference of the ratio)."""
    s = fed.sample_clients
    width = max(len(r.label) for r in rows)
    lines = [
        f"bytes per round, router values ({s} of {fed.num_clients} clients sampled; Flower adds "
        f"~0.2 kB per tensor per message):",
        f"{'setting':<{width}}  {'up/client':>10} {'down/client':>11}  {'up/round':>9} "
        f"{'down/round':>10} {'total':>8}  vs this run",
    ]
    ref = rows[0].bytes.total_mean
    for row in rows:
        b = row.bytes
        lines.append(
            f"{row.label:<{width}}  {human_bytes(b.up / s):>10} {human_bytes(b.down_mean / s):>11}"
            f"  {human_bytes(b.up):>9} {human_bytes(b.down_mean):>10} "
            f"{human_bytes(b.total_mean):>8}  {b.total_mean / max(ref, 1):.1f}x"
        )
    first = rows[0].bytes
    if first.down_held != first.down_full:
        lines.append(
            f"down with wire_delta: {human_bytes(first.down_held / s)} per client that holds its "
            f"last state, {human_bytes(first.down_full / s)} (full state) for one that does not; "
            f"'down' is the mean over {fed.num_rounds} rounds"
        )
    return lines


def bytes_summary_line(rows: list[BytesRow], fed: FedConfig) -> str:
    """One line of :func:`compare_bytes` for a run's start-up log."""
    this, *others = rows
    ref = this.bytes.total_mean
    parts = ", ".join(
        f"{r.label.split(':')[0]} {human_bytes(r.bytes.total_mean)} "
        f"({r.bytes.total_mean / max(ref, 1):.1f}x)"
        for r in others
    )
    return (
        f"bytes per round ({fed.sample_clients} clients, up + down, router values): "
        f"{this.label} {human_bytes(ref)}; {parts}"
    )


def compare_run_bytes(cfg: RunConfig, pool: LoraPool) -> list[BytesRow]:
    """:func:`compare_bytes` of a run's router and wire settings on ``pool``."""
    return compare_bytes(
        pool_dims(pool),
        cfg.router.router_proj_dim,
        cfg.router.router_rank,
        cfg.fed,
        fedit_rank(pool),
    )


def round_bytes_line(cfg: RunConfig, pool: LoraPool) -> str:
    """The start-up line of a run: :func:`compare_bytes` for ``cfg`` on ``pool``, one line."""
    rows = compare_run_bytes(cfg, pool)
    return bytes_summary_line(rows, cfg.fed)
