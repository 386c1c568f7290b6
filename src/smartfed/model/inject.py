"""Turn a base causal LM into a MoRE model: one routed layer per adapted matrix (docs/method.md §2).

Works for any Hugging Face causal LM whose adapted modules are ``nn.Linear`` (Llama, Qwen, Mistral
naming: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``).
Everything is frozen except the routers.

Top-K per matrix [D]: ``K_m = min(topk_experts, M_m)``; a matrix with fewer experts than
``topk_experts`` (in a heterogeneous pool, one adapted by a single small LoRA) applies all of
them and is listed in ``InjectionReport.clamped``; a ``topk_experts`` larger than every ``M_m`` is
clamped too, with a logged note (:meth:`LoraPool.check_topk`, the one rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from smartfed.config import RouterConfig
from smartfed.errors import ConfigError, PoolCompatibilityError
from smartfed.experts.bank import ExpertBank
from smartfed.log import get_logger
from smartfed.pool.pool import LoraPool
from smartfed.pool.validate import validate_pool
from smartfed.routing.layer import MoRELinear
from smartfed.routing.lowrank import LowRankRouter, lowrank_seed
from smartfed.routing.router import TopKRouter, projection_seed, random_projection

log = get_logger(__name__)


@dataclass
class InjectionReport:
    """What :func:`inject_more` did.

    Attributes:
        replaced: module paths now wrapped by ``MoRELinear``, in model order.
        experts_per_matrix: M_m per matrix.
        quotas: K_m per matrix.
        output_scales: c per matrix.
        clamped: matrices whose K_m was lowered to M_m.
        router_params: trainable router parameters in total (``sum_m M_m * d_in_m``, or
            ``sum_m M_m * h`` with a projection, ``sum_m r (M_m + d_in_m)`` low-rank): what
            travels.
        router_proj_dim: h of the projected routers; 0 = full routers.
        router_rank: r of the low-rank routers; 0 = not low-rank.
        full_router_params: ``sum_m M_m * d_in_m``, the paper's full routers, for comparison.
    """

    replaced: list[str]
    experts_per_matrix: dict[str, int]
    quotas: dict[str, int]
    output_scales: dict[str, float]
    clamped: list[str] = field(default_factory=list)
    router_params: int = 0
    router_proj_dim: int = 0
    router_rank: int = 0
    full_router_params: int = 0

    @property
    def router_bytes_fp32(self) -> int:
        """Bytes of the routers sent per round per direction in float32 (what travels)."""
        return 4 * self.router_params

    @property
    def router_bytes_bf16(self) -> int:
        """Bytes of the routers if they travelled in bfloat16."""
        return 2 * self.router_params

    def summary_lines(self) -> list[str]:
        """The router size of these routers and of the paper's full routers (bytes per round
        come from ``smartfed.fed.candidates``, logged when a run starts)."""
        kind = (
            f"low-rank r={self.router_rank}"
            if self.router_rank
            else f"projected h={self.router_proj_dim}"
            if self.router_proj_dim
            else "full"
        )
        return [
            f"routers ({kind}): {self.router_params:,} parameters "
            f"({4 * self.router_params:,} B per client per direction in float32); "
            f"paper-faithful full routers: {self.full_router_params:,} parameters"
        ]


def inject_more(
    model: nn.Module, pool: LoraPool, router_cfg: RouterConfig, seed: int = 0
) -> InjectionReport:
    """Replace every adapted ``nn.Linear`` of ``model`` by a ``MoRELinear`` (in place).

    Args:
        model: a Hugging Face causal LM (any module tree whose targets are ``nn.Linear``).
        pool: the LoRA pool; checked against ``model`` first.
        router_cfg: top-K, output scale, temperature, init, renormalisation, projection.
        seed: seeds the router initialisation (routers drawn in model order) and, with
            ``router_proj_dim > 0``, each matrix's projection (from ``(seed, matrix name)``).

    Returns:
        The injection report.

    Raises:
        PoolCompatibilityError: a target absent from the model, not linear, or of another shape.
        ConfigError: ``router_proj_dim`` not below some routed matrix's d_in.
    """
    matrices = validate_pool(pool, model)
    if not matrices:
        raise PoolCompatibilityError(
            f"no module of the model matches the pool's targets {pool.matrices()[:4]}; "
            "use adapters made for this base model"
        )
    pool.check_topk(router_cfg.topk_experts)
    _check_proj_dim(model, matrices, router_cfg.router_proj_dim)
    _check_proj_dim(model, matrices, router_cfg.router_rank, "router_rank")
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    report = InjectionReport(
        [],
        {},
        {},
        {},
        router_proj_dim=router_cfg.router_proj_dim,
        router_rank=router_cfg.router_rank,
    )
    for name in matrices:
        layer = _build_layer(model.get_submodule(name), pool, name, router_cfg, generator, seed)
        model.set_submodule(name, layer)
        report.replaced.append(name)
        report.experts_per_matrix[name] = layer.num_experts
        report.quotas[name] = layer.k
        report.output_scales[name] = layer.output_scale
        report.router_params += sum(p.numel() for p in layer.router.parameters())
        report.full_router_params += layer.num_experts * layer.in_features
        if layer.k < router_cfg.topk_experts:
            report.clamped.append(name)
    log.info(
        "MoRE: %d matrices, %d experts, %d router parameters (proj_dim %d, rank %d)",
        len(report.replaced),
        sum(report.experts_per_matrix.values()),
        report.router_params,
        report.router_proj_dim,
        report.router_rank,
    )
    for line in report.summary_lines():
        log.info("MoRE %s", line)
    return report


def _check_proj_dim(
    model: nn.Module, matrices: list[str], proj_dim: int, field: str = "router_proj_dim"
) -> None:
    """A projection (or rank) must be narrower than every routed matrix's input."""
    if proj_dim <= 0:
        return
    d_in, name = min((model.get_submodule(m).in_features, m) for m in matrices)
    if proj_dim >= d_in:
        raise ConfigError(
            f"{field}={proj_dim} is not below d_in={d_in} of {name}; choose "
            f"1 <= {field} < {d_in} or 0 (full routers)"
        )


def _compute_dtype(base: nn.Module) -> torch.dtype:
    """The activation dtype of a quantised linear layer (bitsandbytes ``compute_dtype``; bf16 when
    it has none, as LLM.int8 layers: experts are cast to the input's dtype when applied)."""
    dtype = getattr(base, "compute_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.bfloat16


def _build_layer(
    base: nn.Module,
    pool: LoraPool,
    name: str,
    cfg: RouterConfig,
    generator: torch.Generator,
    seed: int = 0,
) -> MoRELinear:
    """Build the routed layer of one matrix; experts in the base weight's dtype and device."""
    if not isinstance(base, nn.Linear):  # validate_pool already checked; kept for direct callers
        raise PoolCompatibilityError(f"{name} is a {type(base).__name__}, not an nn.Linear")
    weight = base.weight
    # A bitsandbytes 8/4-bit base stores int8/uint8 weights: keep experts in its compute dtype.
    dtype = weight.dtype if weight.dtype.is_floating_point else _compute_dtype(base)
    bank = ExpertBank.from_adapters(pool.adapters, name, dtype=dtype, device=weight.device)
    k = min(cfg.topk_experts, bank.num_experts)
    common = {
        "init_std": cfg.router_init_std,
        "temperature": cfg.router_temperature,
        "renormalize": cfg.renormalize_topk,
        "generator": generator,
    }
    if cfg.router_rank > 0:
        router: nn.Module = LowRankRouter(
            bank.d_in,
            bank.num_experts,
            cfg.router_rank,
            down_seed=lowrank_seed(seed, name),
            **common,
        )
    else:
        proj = None
        if cfg.router_proj_dim > 0:
            proj = random_projection(bank.d_in, cfg.router_proj_dim, projection_seed(seed, name))
        router = TopKRouter(bank.d_in, bank.num_experts, projection=proj, **common)
    router = router.to(weight.device)
    return MoRELinear.from_linear(
        base,
        bank,
        router,
        k,
        output_scale_mode=cfg.output_scale_mode,
        output_scale=cfg.output_scale,
        name=name,
    )
