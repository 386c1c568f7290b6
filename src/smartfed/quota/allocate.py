"""EEQA allocation on the server: aggregated importance -> per-matrix top-K quotas (method.md §5).

Pure and stdlib only (no torch, numpy or flwr): the Flower strategy calls these functions on plain
Python numbers that arrived over the wire.

The allocation follows the paper's two phases [P]:

1. *proportional*: every matrix m gets the real-valued target ``t_m = clip(lam * w_m, k_min,
   k_max_m)`` with ``lam`` chosen so that ``sum_m t_m == budget``, then ``floor(t_m)``. With no
   bound active this is exactly ``floor(budget * w_m / sum(w))``; the clip is how the per-matrix
   bounds enter the proportional phase [D] (a capped matrix's surplus flows to the others in
   proportion to their importance instead of being lost).
2. *greedy*: the ``budget - sum floor(t_m)`` units left go one each to the matrices with the largest
   residual ``t_m - floor(t_m)``; ties go to the higher importance, then to the smaller name.

All arithmetic is exact (``fractions.Fraction`` of the float scores), so the result is bit-for-bit
deterministic and budget-exact; no float round-off can move a unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction

from smartfed.errors import ConfigError, WireFormatError
from smartfed.log import get_logger

log = get_logger(__name__)


def sanitize_scores(scores: Mapping[str, float]) -> tuple[dict[str, Fraction], set[str]]:
    """Turn raw importance scores into exact non-negative weights [D].

    NaN and negative scores count as 0 (no measured contribution); ``+inf`` scores form a tier that
    is served before all finite ones. If every weight is 0 the allocation is uniform.

    Args:
        scores: matrix name -> aggregated importance.

    Returns:
        ``(weights, infinite)``: exact weights (``+inf`` entries get weight 1) and the names whose
        score was ``+inf``.
    """
    weights: dict[str, Fraction] = {}
    infinite: set[str] = set()
    for name, raw in scores.items():
        value = float(raw)
        if math.isnan(value) or value <= 0.0:
            weights[name] = Fraction(0)
        elif math.isinf(value):
            infinite.add(name)
            weights[name] = Fraction(1)
        else:
            weights[name] = Fraction(value)
    return weights, infinite


def _check_bounds(
    names: list[str], budget: int, k_min: int, k_max: Mapping[str, int]
) -> dict[str, int]:
    """Validate the budget and bounds; return the cap of every matrix.

    Raises:
        ConfigError: wrong types, negative values, missing caps or an infeasible budget.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ConfigError(f"total_budget={budget!r}: must be an integer >= 0")
    if isinstance(k_min, bool) or not isinstance(k_min, int) or k_min < 0:
        raise ConfigError(f"k_min={k_min!r}: must be an integer >= 0")
    missing = [n for n in names if n not in k_max]
    if missing:
        raise ConfigError(f"k_max has no bound for matrix {missing[0]!r} ({len(missing)} missing)")
    caps = {n: int(k_max[n]) for n in names}
    low = [n for n in names if caps[n] < k_min]
    if low:
        raise ConfigError(
            f"infeasible EEQA bounds: k_max[{low[0]!r}]={caps[low[0]]} < k_min={k_min}; "
            "lower k_min or give that matrix more experts"
        )
    lo_sum, hi_sum = k_min * len(names), sum(caps.values())
    if not lo_sum <= budget <= hi_sum:
        raise ConfigError(
            f"infeasible EEQA budget: total_budget={budget} is outside [{lo_sum}, {hi_sum}] "
            f"(k_min={k_min} x {len(names)} matrices .. sum of min(k_max, M_m)); "
            "change total_budget, topk_experts, k_min or k_max"
        )
    return caps


def _waterfill(
    names: list[str], weights: Mapping[str, Fraction], lo: int, caps: Mapping[str, int], total: int
) -> dict[str, Fraction]:
    """Return exact targets ``t_m = clip(lam * w_m, lo, cap_m)`` with ``sum t_m == total``.

    Requires every weight > 0 and ``lo * len(names) <= total <= sum(caps)``. ``f(lam) = sum_m
    clip(lam * w_m, ...)`` is piecewise linear and non-decreasing, so ``lam`` is found exactly on
    the segment between two sorted breakpoints.
    """

    def clipped(lam: Fraction) -> dict[str, Fraction]:
        return {n: min(max(lam * weights[n], Fraction(lo)), Fraction(caps[n])) for n in names}

    breaks = sorted(
        {Fraction(lo) / weights[n] for n in names} | {caps[n] / weights[n] for n in names}
    )
    prev = Fraction(0)
    for lam in breaks:
        if sum(clipped(lam).values()) >= total:
            break
        prev = lam
    else:  # total == sum(caps): every matrix sits at its cap
        return {n: Fraction(caps[n]) for n in names}
    # On [prev, lam] each matrix is either fixed (at lo or its cap) or linear (lam * w_m).
    mid = clipped((prev + lam) / 2)
    free = [n for n in names if lo < mid[n] < caps[n]]
    fixed = sum(mid[n] for n in names if n not in free)
    if not free:
        return mid
    lam_star = (total - fixed) / sum(weights[n] for n in free)
    return clipped(lam_star)


def _targets(
    names: list[str],
    weights: Mapping[str, Fraction],
    infinite: set[str],
    lo: int,
    caps: Mapping[str, int],
    budget: int,
) -> dict[str, Fraction]:
    """Serve tiers in order (+inf scores, positive scores, zero scores), each by water-filling."""
    positive = [n for n in names if n not in infinite and weights[n] > 0]
    zero = [n for n in names if n not in infinite and weights[n] == 0]
    if not infinite and not positive:
        positive, zero = zero, []  # all zero -> uniform
        weights = {n: Fraction(1) for n in names}
    tiers = [sorted(infinite), positive, zero]
    targets = {n: Fraction(lo) for n in names}
    remaining = budget - lo * len(names)
    for tier in tiers:
        if not tier or remaining <= 0:
            continue
        room = sum(caps[n] - lo for n in tier)
        tier_w = weights if tier is not zero else {n: Fraction(1) for n in tier}
        if remaining >= room:
            targets.update({n: Fraction(caps[n]) for n in tier})
        else:
            targets.update(_waterfill(tier, tier_w, lo, caps, lo * len(tier) + remaining))
        remaining -= min(room, remaining)
    return targets


def allocate_quotas(
    scores: Mapping[str, float], budget: int, k_min: int, k_max: Mapping[str, int]
) -> dict[str, int]:
    """Allocate per-matrix top-K quotas K_m from importance, exactly spending ``budget``.

    EEQA (method.md §5) [P]: proportional phase (floored), then the remaining units greedily to the
    largest residuals. Guarantees (property-tested in ``tests/unit/test_allocate.py``):

    * ``sum(K_m) == budget`` and ``k_min <= K_m <= k_max[m]`` whenever
      ``k_min * n <= budget <= sum(k_max)``; otherwise ``ConfigError``;
    * weakly monotone: a matrix with a strictly higher (sanitised) score never gets a smaller quota
      unless it is at its cap;
    * deterministic and independent of the mapping's iteration order.

    Score handling [D]: NaN and negative scores count as 0; ``+inf`` scores are served first; if all
    are 0 the allocation is uniform (see :func:`sanitize_scores`).

    Args:
        scores: matrix name -> aggregated importance (e.g. from :func:`aggregate_importance`).
        budget: total top-K units over all matrices.
        k_min: lower bound of every K_m.
        k_max: matrix name -> upper bound, already ``min(cap, M_m)`` (the caller knows M_m).

    Returns:
        Matrix name -> K_m, in sorted name order.

    Raises:
        ConfigError: infeasible budget, a bound missing for a matrix, or invalid numbers.
    """
    names = sorted(scores)
    caps = _check_bounds(names, budget, k_min, k_max)
    weights, infinite = sanitize_scores(scores)
    targets = _targets(names, weights, infinite, k_min, caps, budget)
    quotas = {n: math.floor(targets[n]) for n in names}
    left = budget - sum(quotas.values())
    # Exact arithmetic: the residuals sum to `left` and each is < 1, so at least `left` matrices
    # have a positive residual, and those sit strictly below their caps.
    order = sorted(
        names, key=lambda n: (-(targets[n] - quotas[n]), n not in infinite, -weights[n], n)
    )
    for name in order[:left]:
        quotas[name] += 1
    assert sum(quotas.values()) == budget  # internal invariant (exact arithmetic)
    return quotas


def mean_expert_scores(
    client_scores: Iterable[tuple[int, Mapping[str, list[float]]]],
) -> dict[str, list[float]]:
    """Average per-expert importance over clients, weighted by their sample counts [P].

    Args:
        client_scores: ``(num_examples, {matrix: [score per expert]})`` per replying client.
            Clients with 0 examples are ignored.

    Returns:
        Matrix -> per-expert weighted mean, for every matrix some client with examples reported.

    Raises:
        WireFormatError: negative sample count, non-finite score, or expert counts that differ
            between clients for the same matrix.
    """
    sums: dict[str, list[float]] = {}
    total: dict[str, int] = {}
    for n_examples, per_matrix in client_scores:
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 0:
            raise WireFormatError(
                f"importance reply has num_examples={n_examples!r}; need an int >= 0"
            )
        if n_examples == 0:
            continue
        for matrix, values in per_matrix.items():
            vals = [float(v) for v in values]
            if not all(math.isfinite(v) for v in vals):
                raise WireFormatError(f"importance for {matrix!r} has a non-finite value")
            acc = sums.setdefault(matrix, [0.0] * len(vals))
            if len(acc) != len(vals):
                raise WireFormatError(
                    f"importance for {matrix!r} has {len(vals)} experts, another client sent "
                    f"{len(acc)}; all clients must use the same pool"
                )
            for i, v in enumerate(vals):
                acc[i] += n_examples * v
            total[matrix] = total.get(matrix, 0) + n_examples
    return {m: [v / total[m] for v in sums[m]] for m in sorted(sums)}


def aggregate_importance(
    client_scores: list[tuple[int, Mapping[str, list[float]]]],
) -> dict[str, float]:
    """Aggregate client importance into one score per matrix (docs/method.md §5 [P]).

    Sample-weighted mean per expert over clients (:func:`mean_expert_scores`), then summed over
    the experts of each matrix.

    Args:
        client_scores: ``(num_examples, {matrix: [score per expert]})`` per replying client.

    Returns:
        Matrix -> importance (plain floats, sorted by name).

    Raises:
        WireFormatError: see :func:`mean_expert_scores`.
    """
    return {m: math.fsum(v) for m, v in mean_expert_scores(client_scores).items()}


def default_budget(topk: int, matrices: int | Mapping[str, int]) -> int:
    """Return the default total budget: ``topk_experts x number of routed matrices`` [P].

    Args:
        topk: ``topk_experts``.
        matrices: the number of routed matrices, or matrix -> M_m (experts available). With M_m
            given, a matrix with fewer than ``topk`` experts contributes M_m [D], so the default
            budget is always what EEQA-off would use (:func:`uniform_quotas`).

    Raises:
        ConfigError: ``topk < 1``.
    """
    if topk < 1:
        raise ConfigError(f"topk_experts={topk}: must be >= 1")
    if isinstance(matrices, int):
        return topk * matrices
    return sum(uniform_quotas(matrices, topk).values())


def uniform_quotas(experts_per_matrix: Mapping[str, int], topk: int) -> dict[str, int]:
    """Return the EEQA-off quotas: every matrix keeps ``topk_experts`` [P], at most its M_m [D].

    Args:
        experts_per_matrix: matrix -> M_m.
        topk: ``topk_experts``.

    Raises:
        ConfigError: ``topk < 1`` or a matrix with no experts.
    """
    if topk < 1:
        raise ConfigError(f"topk_experts={topk}: must be >= 1")
    empty = [m for m, n in experts_per_matrix.items() if n < 1]
    if empty:
        raise ConfigError(f"matrix {empty[0]!r} has no experts; check the LoRA pool targets")
    return {m: min(topk, int(experts_per_matrix[m])) for m in sorted(experts_per_matrix)}


def matrix_caps(experts_per_matrix: Mapping[str, int], k_max: int) -> dict[str, int]:
    """Return ``min(k_max, M_m)`` per matrix (``k_max == 0`` means no cap beyond M_m)."""
    return {m: (min(k_max, n) if k_max > 0 else n) for m, n in sorted(experts_per_matrix.items())}


def describe_quotas(quotas: Mapping[str, int], top: int = 3) -> str:
    """One short line for logs and consoles: ``K_m min/median/max``, total, the largest matrices.

    Example: ``60 matrices, K_m min 2 / median 8 / max 16, total 480; largest:
    layers.3.self_attn.q_proj=16, ...``.
    """
    if not quotas:
        return "no quotas"
    ks = sorted(int(k) for k in quotas.values())
    median = ks[len(ks) // 2] if len(ks) % 2 else (ks[len(ks) // 2 - 1] + ks[len(ks) // 2]) / 2
    largest = sorted(quotas.items(), key=lambda kv: (-int(kv[1]), kv[0]))[:top]
    names = ", ".join(f"{m.removeprefix('model.')}={k}" for m, k in largest)
    return (
        f"{len(ks)} matrices, K_m min {ks[0]} / median {median:g} / max {ks[-1]}, "
        f"total {sum(ks)}; largest: {names}"
    )
