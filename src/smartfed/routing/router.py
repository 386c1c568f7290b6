"""The per-matrix MoRE router: ``g = softmax(W x / T)``, top-K per token (docs/method.md §2 [P]).

Optional projected router [D] (``router_proj_dim = h > 0``): ``g = softmax(W_r (P x) / T)`` with a
fixed random ``P: (h, d_in)`` (:func:`random_projection`), a non-trainable, non-persistent buffer
rebuilt from ``(seed, matrix name)`` wherever the model is built; only ``W_r: (M, h)`` trains.
"""

from __future__ import annotations

import hashlib
import math
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


def matrix_seed(tag: str, seed: int, matrix: str) -> int:
    """A 63-bit seed from ``(tag, run seed, module path)`` (SHA-256) [D].

    Independent of the order in which routers are built, and of the router-init generator (so a
    fixed per-matrix draw does not move the draws of anything else); ``tag`` separates the uses.
    """
    digest = hashlib.sha256(f"{tag}:{int(seed)}:{matrix}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def projection_seed(seed: int, matrix: str) -> int:
    """The seed of ``matrix``'s projection: a hash of the run seed and the module path [D]."""
    return matrix_seed("smartfed.router_proj", seed, matrix)


def random_projection(d_in: int, proj_dim: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian projection ``P: (h, d_in)``, float32, entries N(0, 1/h) [D].

    Johnson-Lindenstrauss scaling: ``E ||P x||^2 = ||x||^2``, so the logits ``W_r (P x)`` of a
    router initialised with std ``s`` have the same spread as those of a full router ``W x`` with
    the same ``s`` (variance ``s^2 ||x||^2``), and ``router_init_std`` keeps its meaning.

    Args:
        d_in: input features of the routed matrix.
        proj_dim: h, ``1 <= h``.
        seed: e.g. :func:`projection_seed` of the run seed and the matrix name.
    """
    if d_in < 1 or proj_dim < 1:
        raise ValueError(f"random_projection: d_in={d_in}, proj_dim={proj_dim} must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(proj_dim, d_in, generator=gen, dtype=torch.float32) / math.sqrt(proj_dim)


def select_topk(probs: torch.Tensor, k: int, renormalize: bool) -> RoutingOutput:
    """Keep the top-``k`` of ``probs`` ``(..., M)``; renormalise with a detached normaliser [D].

    See :meth:`SoftmaxTopKRouter.select` (shared by every top-K router so that none freezes at
    K = 1).
    """
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True).detach()
    return RoutingOutput(weights, indices)


class SoftmaxTopKRouter(nn.Module):
    """What every top-K router shares: ``g = softmax(logits(x) / T)``, then the top-K of ``g``.

    Subclasses build ``weight`` (its rows are the ``M`` experts) and define :meth:`logits`.
    Stateless apart from their parameters: the same input always gives the same routing.

    Args:
        d_in: input features of the routed matrix.
        num_experts: M.
        temperature: softmax temperature ``T`` [D: 1].
        init_std: std of the normal init of ``weight``.
        renormalize: renormalise the kept K weights to sum to 1 (the config default turns it
            on). The normaliser is detached [D]: the forward values are the renormalised gates,
            the gradient is that of the softmax gates divided by their kept mass, so a router
            still learns at K = 1, where renormalised gates are the constant 1 (:meth:`select`).
        sizes: further sizes of the subclass (e.g. ``rank``), each ``>= 1``.

    Raises:
        ValueError: a size below 1, ``temperature <= 0`` or ``init_std < 0``.
    """

    weight: nn.Parameter

    def __init__(
        self,
        d_in: int,
        num_experts: int,
        temperature: float,
        init_std: float,
        renormalize: bool,
        **sizes: int,
    ) -> None:
        super().__init__()
        if min(d_in, num_experts, *sizes.values()) < 1 or temperature <= 0 or init_std < 0:
            values = {"d_in": d_in, "num_experts": num_experts, **sizes}
            values |= {"temperature": temperature, "init_std": init_std}
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise ValueError(f"{type(self).__name__}: {shown} out of range")
        self.temperature = float(temperature)
        self.renormalize = bool(renormalize)

    @staticmethod
    def init_weight(
        rows: int, cols: int, init_std: float, generator: torch.Generator | None
    ) -> nn.Parameter:
        """A ``(rows, cols)`` float32 parameter, entries N(0, ``init_std``) from ``generator``."""
        init = torch.randn(rows, cols, generator=generator, dtype=torch.float32) * init_std
        return nn.Parameter(init)

    @property
    def num_experts(self) -> int:
        """M."""
        return int(self.weight.shape[0])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``(..., M)`` in ``x``'s dtype for ``x`` of shape ``(..., d_in)``."""
        raise NotImplementedError

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Return the softmax over all experts, shape ``(..., M)``, float32.

        Logits are computed in the input dtype (fast in bf16); softmax runs in float32.
        """
        return torch.softmax(self.logits(x).float() / self.temperature, dim=-1)

    def select(self, probs: torch.Tensor, k: int) -> RoutingOutput:
        """Keep the top-``k`` of ``probs`` (shape ``(..., M)``, from :meth:`probs`).

        With ``renormalize`` the kept weights are ``g_i / sg(sum_{j in S} g_j)`` (``sg`` = stop
        gradient) [D]: the values are the renormalised gates (they sum to 1), the gradient with
        respect to the logits is ``(g_i / Z) (delta_ij - g_j)`` for *every* expert ``j``. The
        exact derivative of the renormalised gates, ``w_i (delta_ij - w_j)`` on the kept set
        only, is identically 0 at ``k = 1`` (the single gate is the constant 1) and never reaches
        the experts that were not kept; docs/method.md, "Router gradient at small K".

        Returns:
            ``RoutingOutput`` with weights ``(..., k)`` (float32) and indices ``(..., k)``.
        """
        return select_topk(probs, k, self.renormalize)

    def forward(self, x: torch.Tensor, k: int) -> RoutingOutput:
        """Route every token of ``x`` (shape ``(..., d_in)``) to its top-``k`` experts.

        Returns:
            ``RoutingOutput`` with weights ``(..., k)`` (float32; softmax values, or renormalised
            over the kept ``k``) and indices ``(..., k)``.
        """
        return self.select(self.probs(x), k)


class TopKRouter(SoftmaxTopKRouter):
    """A linear router over ``M`` experts with softmax gating and top-K selection.

    Args:
        d_in: input features of the routed matrix.
        num_experts: M.
        init_std: std of the normal init of ``weight`` [D: 0.01, near-uniform gates at start].
        temperature: softmax temperature ``T`` [D: 1].
        renormalize: renormalise the kept K weights (:class:`SoftmaxTopKRouter`).
        generator: the random source of the init (every random choice takes one).
        projection: optional fixed ``P: (h, d_in)`` [D]; then ``weight`` is ``(M, h)`` and the
            logits are ``weight @ (P x)``. Kept as a non-persistent buffer (never in a state dict).

    Attributes:
        weight: ``W_router``, shape ``(M, d_in)`` (or ``(M, h)`` with a projection), float32,
            the only trainable tensor of MoRE.
        proj: the projection ``(h, d_in)`` or ``None``.
    """

    proj: torch.Tensor | None

    def __init__(
        self,
        d_in: int,
        num_experts: int,
        init_std: float = 0.01,
        temperature: float = 1.0,
        renormalize: bool = False,
        generator: torch.Generator | None = None,
        projection: torch.Tensor | None = None,
    ) -> None:
        super().__init__(d_in, num_experts, temperature, init_std, renormalize)
        if projection is not None and (projection.dim() != 2 or projection.shape[1] != d_in):
            raise ValueError(f"TopKRouter: projection {tuple(projection.shape)} is not (h, {d_in})")
        width = d_in if projection is None else int(projection.shape[0])
        self.weight = self.init_weight(num_experts, width, init_std, generator)
        proj = None if projection is None else projection.detach().float().clone()
        self.register_buffer("proj", proj, persistent=False)

    @property
    def proj_dim(self) -> int:
        """h of the projection; 0 = a full router."""
        return 0 if self.proj is None else int(self.proj.shape[0])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``W x``, shape ``(..., M)``, in ``x``'s dtype; with a projection ``W (P x)``
        (``P x``: ``(..., h)``)."""
        if self.proj is not None:
            x = nn.functional.linear(x, self.proj.to(x.dtype))
        return nn.functional.linear(x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:  # noqa: D102
        d_in = self.weight.shape[1] if self.proj is None else self.proj.shape[1]
        proj = f", proj_dim={self.proj_dim}" if self.proj is not None else ""
        return (
            f"d_in={d_in}, M={self.num_experts}{proj}, T={self.temperature}, "
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
