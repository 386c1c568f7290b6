"""SmartFed: route over the rank-one experts of the pool; only routers travel [P]."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from smartfed.model.inject import inject_more
from smartfed.model.state import load_router_state_dict, more_layers, router_state_dict

if TYPE_CHECKING:
    from smartfed.config import RunConfig
    from smartfed.pool.pool import LoraPool


class SmartFed:
    """MoRE routers over the frozen pool, with EEQA quota reallocation [P]."""

    name = "smartfed"
    uses_eeqa = True

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Inject MoRE layers (routers seeded by ``cfg.train.seed``); return M_m per matrix."""
        report = inject_more(model, pool, cfg.router, seed=cfg.train.seed)
        return dict(report.experts_per_matrix)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Router weights ``W_router: (M_m, d_in)`` (``(M_m, h)`` when projected; ``U, V`` when
        low-rank) of every MoRE layer, in model order; a router projection is a buffer and never
        trains."""
        params = [p for layer in more_layers(model).values() for p in layer.router.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Router weights, float32 on CPU (``<matrix>.router.weight``: ``(M_m, d_in)``, or
        ``(M_m, h)`` with ``router_proj_dim = h``; the projections never travel)."""
        return router_state_dict(model)

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy router weights into the model (keys and shapes checked)."""
        load_router_state_dict(model, state)


class SmartFedNoEEQA(SmartFed):
    """Ablation: every matrix keeps ``topk_experts`` (no quota reallocation)."""

    name = "smartfed_no_eeqa"
    uses_eeqa = False
