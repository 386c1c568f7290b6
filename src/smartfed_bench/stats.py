"""Pure statistics of a bench: per-round means over seeds and the to-target figures.

Everything here takes plain dicts and lists (the ``metrics.jsonl`` rows of each seed, or the
results JSON) and returns plain dicts: no torch, no I/O, so the derived figures of the README can be
recomputed from the committed JSON alone (``benchmarks/derived_figures.py``).

To-target [P: the paper's convergence / communication / energy ratios compare each method with
FedIT's quality after its last round]: ``target`` = the reference method's mean over seeds at its
last round; a method reaches it at the first round whose mean over seeds is at least as good. The
crossing is interpolated linearly on the mean per-round curve between the last round short of the
target and the first round reaching it [D], so rounds, bytes, energy and wall time are fractional
(not quantised to evaluation rounds); reached at round 1 means "at most one round".

Confidence intervals [D]: 95% Student-t intervals, ``mean ± t_{0.975, n-1} · sd / sqrt(n)``, over
seeds; for two methods, over the paired per-seed differences (same seed = same pool, client
sampling and data order), which removes the seed-to-seed variation both methods share.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

LOWER_IS_BETTER = ("eval_loss", "train_loss", "eval_tf_loss", "val_tf_loss")
PER_ROUND_KEYS = (
    "train_loss",
    "eval_loss",
    "eval_tf_em",
    "eval_tf_loss",
    "bytes_up",
    "bytes_down",
    "wall_s",
    "energy_kwh",
)
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
)  # fmt: skip
"""Two-sided 95% Student-t quantiles ``t_{0.975, df}`` for df = 1..20 (standard tables); larger df
use 1.96 + 2.4 / df (error < 0.01 for df > 20)."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (``df`` >= 1)."""
    return T975[df - 1] if df <= len(T975) else 1.959964 + 2.4 / df


def ci95(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n", "sd"}``: the 95% t interval of the mean of the finite values
    (``lo``/``hi`` are ``None`` with fewer than 2 values)."""
    xs = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not xs:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "sd": None}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "sd": None}
    sd = statistics.stdev(xs)
    half = t975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(xs), "sd": sd}


def paired_ci(a: Mapping[str, float | None], b: Mapping[str, float | None]) -> dict[str, Any]:
    """95% t interval of ``a - b`` over the seeds both have (paired per seed).

    Args:
        a: seed -> value of method A (e.g. smartfed's final accuracy).
        b: seed -> value of method B.

    Returns:
        :func:`ci95` of the differences plus ``per_seed`` (seed -> difference), ``seeds`` and
        ``method`` (``paired t``).
    """
    seeds = sorted(
        k for k in a if k in b and isinstance(a[k], int | float) and isinstance(b[k], int | float)
    )
    diffs = {k: float(a[k]) - float(b[k]) for k in seeds}  # type: ignore[arg-type]
    return {**ci95(list(diffs.values())), "per_seed": diffs, "seeds": seeds, "method": "paired t"}


def choose_rate(grid: Sequence[Mapping[str, Any]]) -> float | None:
    """The sweep's choice: the multiplier with the highest ``val_tf_em``, ties broken by the lower
    ``val_tf_loss``, then by the smaller multiplier [D]; ``None`` while a run lacks its score."""
    if not grid or any(g.get("val_tf_em") is None for g in grid):
        return None

    def key(g: Mapping[str, Any]) -> tuple[float, float, float]:
        loss = g.get("val_tf_loss")
        loss = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else math.inf
        return (-float(g["val_tf_em"]), loss, float(g["mult"]))

    return float(min(grid, key=key)["mult"])


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n", "ci95"}`` of the finite values (sample std; 0 for one value;
    ``ci95`` = the t interval's half-width, ``None`` for one value)."""
    xs = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {
        "mean": statistics.fmean(xs),
        "std": std,
        "n": len(xs),
        "ci95": t975(len(xs) - 1) * std / math.sqrt(len(xs)) if len(xs) > 1 else None,
    }


def row_energy(row: Mapping[str, Any]) -> float:
    """Clients' plus server's kWh of one metrics row (0 when energy was not tracked)."""
    return float(row.get("energy_kwh_clients") or 0.0) + float(row.get("energy_kwh_server") or 0.0)


def per_round(
    seed_rows: Sequence[Sequence[Mapping[str, Any]]], metric: str
) -> list[dict[str, Any]]:
    """Mean and std over seeds per round of every per-round key and ``eval_<metric>``.

    Args:
        seed_rows: one list of ``metrics.jsonl`` rows per seed.
        metric: the task metric (``accuracy``, ``execution_accuracy``, ...).

    Returns:
        One dict per round present in every seed: ``round``, ``<key>: {mean, std, n}``, and
        ``bytes_cum`` (mean cumulative bytes up + down through that round).
    """
    if not seed_rows:
        return []
    by_round = [{int(r["round"]): r for r in rows} for rows in seed_rows]
    rounds = sorted(set.intersection(*(set(b) for b in by_round)))
    out: list[dict[str, Any]] = []
    cum = [0.0] * len(by_round)
    for rnd in rounds:
        rows = [b[rnd] for b in by_round]
        item: dict[str, Any] = {"round": rnd}
        for key in PER_ROUND_KEYS:
            vals = [row_energy(r) if key == "energy_kwh" else r.get(key) for r in rows]
            item[key] = mean_std(vals)  # type: ignore[arg-type]
        acc = [r.get(f"eval_{metric}") for r in rows]
        if any(a is not None for a in acc):
            item[f"eval_{metric}"] = mean_std(acc)  # type: ignore[arg-type]
        cum = [
            c + float(r["bytes_up"]) + float(r["bytes_down"])
            for c, r in zip(cum, rows, strict=True)
        ]
        item["bytes_cum"] = statistics.fmean(cum)
        out.append(item)
    return out


def _better(value: float, target: float, key: str) -> bool:
    return value <= target if key in LOWER_IS_BETTER else value >= target


def first_reaching(rounds: Sequence[Mapping[str, Any]], key: str, target: float) -> int | None:
    """Index of the first item of ``rounds`` whose mean ``key`` is as good as ``target``."""
    for i, item in enumerate(rounds):
        stat = item.get(key)
        if stat and stat.get("mean") is not None and _better(stat["mean"], target, key):
            return i
    return None


def last_value(rounds: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """Mean of ``key`` at the last round that has it."""
    for item in reversed(rounds):
        stat = item.get(key)
        if stat and stat.get("mean") is not None:
            return float(stat["mean"])
    return None


def to_target(
    methods: Mapping[str, Mapping[str, Any]], reference: str, key: str
) -> dict[str, dict[str, Any]]:
    """Rounds, bytes, energy and wall time for each method to reach ``reference``'s final ``key``.

    Args:
        methods: ``{name: {"per_round": [...]}}`` as in the results JSON.
        reference: the method whose last-round mean is the target (FedIT in the paper).
        key: ``eval_loss`` or ``eval_<metric>``.

    Returns:
        ``{name: {"target", "reached", "round", "bytes", "energy_kwh", "wall_s", "ratio_rounds",
        "ratio_bytes", "ratio_energy"}}``; ratios are reference / method (> 1: the method needs
        less), ``None`` where either never reaches the target. Empty when the reference is
        missing, or when its final accuracy is 0 (every method "reaches" 0: no target to speak of).
    """
    ref = methods.get(reference)
    target = last_value(ref["per_round"], key) if ref else None
    if target is None or (key not in LOWER_IS_BETTER and target <= 0):
        return {}
    costs = {name: _cost_at(m["per_round"], key, target) for name, m in methods.items()}
    base = costs[reference]
    out: dict[str, dict[str, Any]] = {}
    for name, cost in costs.items():
        item: dict[str, Any] = {"target": target, **cost}
        for field, ratio in (
            ("round", "ratio_rounds"),
            ("bytes", "ratio_bytes"),
            ("energy_kwh", "ratio_energy"),
            ("wall_s", "ratio_wall"),
        ):
            a, b = base.get(field), cost.get(field)
            item[ratio] = a / b if cost["reached"] and base["reached"] and a and b else None
        out[name] = item
    return out


def _cost_at(rounds: Sequence[Mapping[str, Any]], key: str, target: float) -> dict[str, Any]:
    """Cost to the target, interpolated linearly between the rounds around the crossing."""
    i = first_reaching(rounds, key, target)
    if i is None:
        return {"reached": False, "round": None, "bytes": None, "energy_kwh": None, "wall_s": None}
    energy = _cumulative(rounds, "energy_kwh")
    wall = _cumulative(rounds, "wall_s")
    point = {
        "round": float(rounds[i]["round"]),
        "bytes": float(rounds[i]["bytes_cum"]),
        "energy_kwh": energy[i],
        "wall_s": wall[i],
    }
    prev = rounds[i - 1].get(key) if i > 0 else None
    if prev and prev.get("mean") is not None:
        lo, hi = float(prev["mean"]), float(rounds[i][key]["mean"])
        frac = (target - lo) / (hi - lo) if hi != lo else 1.0
        before = {
            "round": float(rounds[i - 1]["round"]),
            "bytes": float(rounds[i - 1]["bytes_cum"]),
            "energy_kwh": energy[i - 1],
            "wall_s": wall[i - 1],
        }
        point = {k: before[k] + frac * (point[k] - before[k]) for k in point}
    return {"reached": True, **point}


def _cumulative(rounds: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out, total = [], 0.0
    for r in rounds:
        total += float((r.get(key) or {}).get("mean") or 0.0)
        out.append(total)
    return out


def deltas(
    methods: Mapping[str, Mapping[str, Any]], key: str, against: str
) -> dict[str, float | None]:
    """Final mean ``key`` of each method minus ``against``'s (points of accuracy, or loss)."""
    ref = methods.get(against)
    base = last_value(ref["per_round"], key) if ref else None
    out: dict[str, float | None] = {}
    for name, m in methods.items():
        value = last_value(m["per_round"], key)
        out[name] = value - base if value is not None and base is not None else None
    return out
