"""The per-matrix MoRE router: ``g = softmax(W x / T)``, top-K per token (SPEC.md §1.2 [P])."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class RoutingOutput(NamedTuple):
    """Which experts a token uses and with what weight.

    Attributes:
        weights: gate values of the kept experts, shape ``(..., K)`` (float32 from a router).
        indices: expert ids, shape ``(..., K)``, int64. ``K`` may be 0 (no expert) or ``M`` (dense).
    """

    weights: torch.Tensor
    indices: torch.Tensor

    def detach(self) -> RoutingOutput:
        """Return a copy cut from the autograd graph."""
        return RoutingOutput(self.weights.detach(), self.indices.detach())


class TopKRouter(nn.Module):
    """A linear router over ``M`` experts with softmax gating and top-K selection.

    Stateless apart from ``weight``: the same input always gives the same routing.

    Args:
        d_in: input features of the routed matrix.
        num_experts: M.
        init_std: std of the normal init of ``weight`` [D: 0.01, near-uniform gates at start].
        temperature: softmax temperature ``T`` [D: 1].
        renormalize: renormalise the kept K weights to sum to 1 [D: off].
        generator: the random source of the init (every random choice takes one).

    Attributes:
        weight: ``W_router``, shape ``(M, d_in)``, float32, the only trainable tensor of MoRE.
    """

    def __init__(
        self, d_in: int, num_experts: int, init_std: float = 0.01, temperature: float = 1.0,
        renormalize: bool = False, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if d_in < 1 or num_experts < 1 or temperature <= 0 or init_std < 0:
            raise ValueError(
                f"TopKRouter: d_in={d_in}, num_experts={num_experts}, temperature={temperature}, "
                f"init_std={init_std} out of range"
            )
        init = torch.randn(num_experts, d_in, generator=generator, dtype=torch.float32) * init_std
        self.weight = nn.Parameter(init)
        self.temperature = float(temperature)
        self.renormalize = bool(renormalize)

    @property
    def num_experts(self) -> int:
        """M."""
        return int(self.weight.shape[0])

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Return the softmax over all experts, shape ``(..., M)``, float32.

        Logits are computed in the input dtype (fast in bf16); softmax runs in float32.
        """
        logits = nn.functional.linear(x, self.weight.to(x.dtype)).float()
        return torch.softmax(logits / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, k: int) -> RoutingOutput:
        """Route every token of ``x`` (shape ``(..., d_in)``) to its top-``k`` experts.

        Returns:
            ``RoutingOutput`` with weights ``(..., k)`` (float32; softmax values, or renormalised
            over the kept ``k``) and indices ``(..., k)``.
        """
        weights, indices = torch.topk(self.probs(x), k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return RoutingOutput(weights, indices)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"d_in={self.weight.shape[1]}, M={self.num_experts}, T={self.temperature}, "
            f"renormalize={self.renormalize}"
        )


class FixedRouter(nn.Module):
    """A router that ignores its input and always returns the same experts and weights.

    Used to force routing (e.g. unit routing on one adapter's experts for ``smartfed pool verify``);
    ``k`` is ignored. It has no parameters.

    Args:
        indices: expert ids, shape ``(K,)`` (``K`` may be 0).
        weights: their weights, shape ``(K,)``.
    """

    def __init__(self, indices: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("indices", indices.long().flatten(), persistent=False)
        self.register_buffer("fixed_weights", weights.float().flatten(), persistent=False)

    def forward(self, x: torch.Tensor, k: int) -> RoutingOutput:  # noqa: ARG002
        """Return the fixed routing for every token of ``x`` (shape ``(..., d_in)``)."""
        shape = (*x.shape[:-1], self.indices.numel())
        return RoutingOutput(self.fixed_weights.expand(shape), self.indices.expand(shape))
