"""Plain-text tables for ``smartfed pool inspect`` (formatting only; the CLI prints them)."""

from __future__ import annotations

from smartfed.config import FedConfig, RouterConfig
from smartfed.errors import ConfigError
from smartfed.fed.candidates import (
    CANDIDATE_SETTINGS,
    compare_bytes,
    fedit_rank,
    format_bytes,
    pool_dims,
    round_bytes,
)
from smartfed.pool.pool import LoraPool
from smartfed.routing.lowrank import router_param_count


def format_pool(pool: LoraPool, router: RouterConfig, fed: FedConfig | None = None) -> list[str]:
    """Describe adapters, matrices, experts, and router size/bytes per round.

    Router parameters are ``sum_m M_m * d_in_m`` (one ``W_router`` per matrix), ``sum_m M_m * h``
    with ``router_proj_dim = h`` (the fixed projections never travel), or ``sum_m r (M_m +
    d_in_m)`` with ``router_rank = r``; they travel once per direction per sampled client per
    round. Bytes are the values alone (``fed.wire_dtype``: 4 / 2 / 1 per value; Flower adds ~200
    bytes of headers per tensor). Per-round lines use ``fed`` (default: ``FedConfig()``) for the
    sampled clients and the wire settings: this setting, the paper's full float32 router and
    FedIT (:func:`smartfed.fed.candidates.compare_bytes`), then every candidate of
    :data:`smartfed.fed.candidates.CANDIDATE_SETTINGS`.
    """
    lines = [
        f"pool: {len(pool.adapters)} adapters, {len(pool.matrices())} matrices, "
        f"{sum(pool.experts_per_matrix().values())} experts"
    ]
    width = max(7, *(len(a.name) for a in pool.adapters))
    lines.append(f"{'adapter':<{width}}  ranks  alpha  rslora  scaling   modules  targets  sha256")
    for a in pool.adapters:
        ranks = sorted(set(a.ranks().values()))
        scalings = sorted({round(m.scaling, 4) for m in a.modules.values()})
        lines.append(
            f"{a.name:<{width}}  {'/'.join(map(str, ranks)):<5}  {a.alpha:<5g}  "
            f"{'yes' if a.use_rslora else 'no':<6}  {'/'.join(f'{s:g}' for s in scalings):<8}  "
            f"{len(a.modules):<7}  {','.join(sorted(a.target_modules))}  {a.sha256[:12]}"
        )
    _check_proj_dim(pool, router.router_proj_dim)
    _check_proj_dim(pool, router.router_rank, "router_rank")
    params = 0
    shapes: dict[str, tuple[int, int]] = {}
    mwidth = max(len(m) for m in pool.matrices())
    lines.append(f"{'matrix':<{mwidth}}  d_in  d_out    M  K_m  c      experts from (rank)")
    for matrix, m in pool.experts_per_matrix().items():
        mods = pool.modules_for(matrix)
        d_in, d_out = mods[0][1].d_in, mods[0][1].d_out
        params += router_param_count(m, d_in, router.router_proj_dim, router.router_rank)
        shapes[matrix] = (m, d_in)
        k = min(router.topk_experts, m)
        c = _scale(router, [mod.rank for _, mod in mods], k)
        src = ", ".join(f"{pool.adapters[i].name}({mod.rank})" for i, mod in mods)
        lines.append(f"{matrix:<{mwidth}}  {d_in:<4}  {d_out:<5}  {m:>3}  {k:>3}  {c:<5.3g}  {src}")
    h, r = router.router_proj_dim, router.router_rank
    width_name = f"h (router_proj_dim={h})" if h else "d_in"
    formula = f"r (M_m + d_in), router_rank={r}" if r else f"M_m x {width_name}"
    lines.append(f"router parameters: {params:,} (sum over matrices of {formula})")
    lines.append(
        f"router bytes per round, each direction per client: fp32 {4 * params:,} "
        f"({4 * params / 1e6:.2f} MB), bf16 {2 * params:,} ({2 * params / 1e6:.2f} MB), "
        f"int8 update (client -> server) {params:,} ({params / 1e6:.2f} MB)"
    )
    return lines + _round_lines(pool, shapes, router, fed or FedConfig())


def _round_lines(
    pool: LoraPool, shapes: dict[str, tuple[int, int]], router: RouterConfig, fed: FedConfig
) -> list[str]:
    """Bytes per round of this setting, the paper's full fp32 router, FedIT and every candidate."""
    s, n, rounds = fed.sample_clients, fed.num_clients, fed.num_rounds
    rows = compare_bytes(
        pool_dims(pool), router.router_proj_dim, router.router_rank, fed, fedit_rank(pool)
    )
    paper = round_bytes(shapes, {}, s, n, rounds)
    lines = [
        *format_bytes(rows, fed),
        f"{'candidate':<24}  {'params':>10}  {'up MB':>8}  {'down MB':>8}  {'total MB':>8}  ratio",
    ]
    min_d_in = min(d for _, d in shapes.values())
    for name, setting in CANDIDATE_SETTINGS.items():
        width = max(int(setting.get("router_proj_dim", 0)), int(setting.get("router_rank", 0)))
        if width >= min_d_in:
            lines.append(f"{name:<24}  n/a (h or r >= d_in {min_d_in})")
            continue
        b = round_bytes(shapes, setting, s, n, rounds)
        lines.append(
            f"{name:<24}  {b.params:>10,}  {b.up / 1e6:>8.3f}  {b.down_mean / 1e6:>8.3f}  "
            f"{b.total_mean / 1e6:>8.3f}  {paper.total_mean / b.total_mean:5.1f}x"
        )
    return lines


def _check_proj_dim(pool: LoraPool, proj_dim: int, field: str = "router_proj_dim") -> None:
    """The same rule as ``inject_more``: h (or r) must be below every routed matrix's d_in."""
    if proj_dim <= 0:
        return
    d_in, name = min((mods[0][1].d_in, m) for m in pool.matrices() if (mods := pool.modules_for(m)))
    if proj_dim >= d_in:
        raise ConfigError(
            f"{field}={proj_dim} is not below d_in={d_in} of {name}; choose "
            f"1 <= {field} < {d_in} or 0 (full routers)"
        )


def _scale(router: RouterConfig, ranks: list[int], k: int) -> float:
    if router.output_scale_mode == "rank":
        return sum(ranks) / len(ranks)
    if router.output_scale_mode == "topk":
        return float(k)
    return router.output_scale
