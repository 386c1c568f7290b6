"""Plain-text tables for ``smartfed pool inspect`` (formatting only; the CLI prints them)."""

from __future__ import annotations

from smartfed.config import RouterConfig
from smartfed.errors import ConfigError
from smartfed.pool.pool import LoraPool


def format_pool(pool: LoraPool, router: RouterConfig) -> list[str]:
    """Describe adapters, matrices, experts, and router size/bytes per round.

    Router parameters are ``sum_m M_m * d_in_m`` (one ``W_router`` per matrix), or ``sum_m M_m * h``
    with ``router_proj_dim = h`` (the fixed projections never travel); they travel once per
    direction per sampled client per round. Bytes are the values alone (``fed.wire_dtype``:
    4 / 2 / 1 per value, int8 up only; Flower adds ~200 bytes of headers per matrix).
    """
    lines = [f"pool: {len(pool.adapters)} adapters, {len(pool.matrices())} matrices, "
             f"{sum(pool.experts_per_matrix().values())} experts"]
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
    params = 0
    mwidth = max(len(m) for m in pool.matrices())
    lines.append(f"{'matrix':<{mwidth}}  d_in  d_out    M  K_m  c      experts from (rank)")
    for matrix, m in pool.experts_per_matrix().items():
        mods = pool.modules_for(matrix)
        d_in, d_out = mods[0][1].d_in, mods[0][1].d_out
        params += m * (router.router_proj_dim or d_in)
        k = min(router.topk_experts, m)
        c = _scale(router, [mod.rank for _, mod in mods], k)
        src = ", ".join(f"{pool.adapters[i].name}({mod.rank})" for i, mod in mods)
        lines.append(f"{matrix:<{mwidth}}  {d_in:<4}  {d_out:<5}  {m:>3}  {k:>3}  {c:<5.3g}  {src}")
    h = router.router_proj_dim
    width_name = f"h (router_proj_dim={h})" if h else "d_in"
    lines.append(f"router parameters: {params:,} (sum over matrices of M_m x {width_name})")
    lines.append(
        f"router bytes per round, each direction per client: fp32 {4 * params:,} "
        f"({4 * params / 1e6:.2f} MB), bf16 {2 * params:,} ({2 * params / 1e6:.2f} MB), "
        f"int8 update (client -> server) {params:,} ({params / 1e6:.2f} MB)"
    )
    return lines


def _check_proj_dim(pool: LoraPool, proj_dim: int) -> None:
    """The same rule as ``inject_more``: h must be below every routed matrix's d_in."""
    if proj_dim <= 0:
        return
    d_in, name = min((mods[0][1].d_in, m) for m in pool.matrices() if (mods := pool.modules_for(m)))
    if proj_dim >= d_in:
        raise ConfigError(
            f"router_proj_dim={proj_dim} is not below d_in={d_in} of {name}; choose "
            f"1 <= router_proj_dim < {d_in} or 0 (full routers)"
        )


def _scale(router: RouterConfig, ranks: list[int], k: int) -> float:
    if router.output_scale_mode == "rank":
        return sum(ranks) / len(ranks)
    if router.output_scale_mode == "topk":
        return float(k)
    return router.output_scale
