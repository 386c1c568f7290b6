"""``mole``: a MoLE-style router over WHOLE LoRAs (Wu et al., ICLR 2024), trained router-only.

Reuses the MoRE machinery: a whole LoRA is the group of its rank-one experts in the matrix's
:class:`~smartfed.experts.bank.ExpertBank`, and a :class:`GroupRouter` gives every expert of a group
its LoRA's gate. Per matrix ``m`` with ``N_m`` pool LoRAs targeting it:

``h = W0 x + sum_n g_n(x) s_n B_n A_n x``, ``g(x) = softmax(W_g x)``, ``W_g: (N_m, d_in)`` [P MoLE:
softmax gate per LoRA, per token; dense, all LoRAs kept]. The MoRE output scale is the constant 1
[D], so uniform gates (the init, std ``router_init_std``) start at the linear merge of the LoRAs
that
target ``m`` (mean over ``N_m``). MoLE's auxiliary balancing loss is not used [D].

Sent per round (each direction, per sampled client): the gate weights, ``sum_m N_m * d_in`` float32
values (keys ``<matrix>.router.weight``, like SmartFed's routers).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from smartfed.errors import ConfigError
from smartfed.methods.smartfed import SmartFed
from smartfed.model.inject import inject_more
from smartfed.model.state import more_layers
from smartfed.routing.router import RoutingOutput

if TYPE_CHECKING:
    from smartfed.config import RunConfig
    from smartfed.pool.pool import LoraPool


class GroupRouter(nn.Module):
    """Softmax gate over ``N`` groups of experts, every expert weighted by its group's gate.

    Args:
        d_in: input features.
        groups: group (LoRA) id of each expert, shape ``(M,)``, values ``0..N-1``.
        init_std: std of the normal init of ``weight``.
        generator: the random source of the init.

    Attributes:
        weight: ``W_g``, shape ``(N, d_in)``, float32, the only trainable tensor.
    """

    def __init__(
        self, d_in: int, groups: torch.Tensor, init_std: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        n = int(groups.max()) + 1
        self.weight = nn.Parameter(torch.randn(n, d_in, generator=generator) * init_std)
        self.register_buffer("groups", groups.long(), persistent=False)
        self.register_buffer("experts", torch.arange(groups.numel()), persistent=False)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Gate per LoRA, shape ``(..., N)``, float32."""
        return torch.softmax(nn.functional.linear(x, self.weight.to(x.dtype)).float(), dim=-1)

    def forward(self, x: torch.Tensor, k: int) -> RoutingOutput:  # noqa: ARG002
        """Dense routing: weights ``(..., M)`` = the gate of each expert's LoRA; ``k`` ignored."""
        weights = self.probs(x)[..., self.groups]
        return RoutingOutput(weights, self.experts.expand(weights.shape))


class MoLE(SmartFed):
    """Router over whole LoRAs (one gate per LoRA per matrix), router-only, no EEQA."""

    name = "mole"
    uses_eeqa = False

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Inject MoRE layers, then swap each router for a seeded :class:`GroupRouter` (K = M, c =
        1).
        """
        if cfg.router.router_proj_dim:
            raise ConfigError(
                f"router_proj_dim={cfg.router.router_proj_dim}: mole's per-LoRA gates have no "
                "projected variant; use router_proj_dim 0 with --method mole"
            )
        router_cfg = dataclasses.replace(
            cfg.router, topk_experts=1, output_scale_mode="constant", output_scale=1.0
        )
        inject_more(model, pool, router_cfg, seed=cfg.train.seed)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        out: dict[str, int] = {}
        for name, layer in more_layers(model).items():
            groups = torch.unique(layer.bank.adapter_index.cpu(), return_inverse=True)[1]
            layer.router = GroupRouter(
                layer.in_features, groups, cfg.router.router_init_std, gen
            ).to(layer.base_layer.weight.device)
            layer.set_quota(layer.num_experts)
            out[name] = layer.num_experts
        return out
