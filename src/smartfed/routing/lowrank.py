"""A low-rank factorised MoRE router: ``g = softmax(U (V x) / T)`` [D], both factors trained.

Opt-in (``router.router_rank = r > 0``), not the paper's router (the paper trains a full
``W_router: (M, d_in)`` per matrix [P]). ``U: (M, r)`` and ``V: (r, d_in)`` both train and both
travel, so a matrix sends ``r (M + d_in)`` values instead of ``M d_in``. Compare the projected
router (``router_proj_dim = h``, :mod:`smartfed.routing.router`), where ``P: (h, d_in)`` is fixed,
seeded and never sent, and only ``W_r: (M, h)`` (``M h`` values) travels.

Init [D]: ``V`` is a seeded Gaussian with entries N(0, 1/r) (the same Johnson-Lindenstrauss scaling
as the projection, seeded from ``(seed, matrix name)`` by :func:`lowrank_seed`), ``U`` is N(0,
``init_std``) from the router-init generator. At step 0 the router is therefore a projected router
with ``P = V`` and the logits have the spread of a full router with the same ``init_std``; ``U``
small and ``V`` non-zero avoids the zero-gradient saddle of two small factors.
"""

from __future__ import annotations

import torch
from torch import nn

from smartfed.routing.router import (
    SoftmaxTopKRouter,
    matrix_seed,
    random_projection,
)


def lowrank_seed(seed: int, matrix: str) -> int:
    """The seed of ``matrix``'s ``V`` init: a hash of the run seed and the module path [D].

    Distinct from :func:`smartfed.routing.router.projection_seed` (another tag), and independent of
    the order in which routers are built.
    """
    return matrix_seed("smartfed.router_lowrank", seed, matrix)


def router_param_count(num_experts: int, d_in: int, proj_dim: int = 0, rank: int = 0) -> int:
    """Values one matrix's router sends: ``M d_in`` (full), ``M h`` (projected), ``r (M + d_in)``.

    Args:
        num_experts: M_m.
        d_in: input features of the matrix.
        proj_dim: h of a projected router (0 = not projected).
        rank: r of a low-rank router (0 = not low-rank).
    """
    if rank > 0:
        return rank * (num_experts + d_in)
    return num_experts * (proj_dim if proj_dim > 0 else d_in)


class LowRankRouter(SoftmaxTopKRouter):
    """A top-K router whose logits are ``U (V x)``; drop-in for :class:`TopKRouter`.

    Args:
        d_in: input features of the routed matrix.
        num_experts: M.
        rank: r, ``1 <= r``.
        init_std: std of the normal init of ``U`` [D: 0.01, as ``router_init_std``].
        temperature: softmax temperature ``T``.
        renormalize: renormalise the kept K weights to sum to 1.
        generator: the random source of ``U``'s init.
        down_seed: the seed of ``V``'s init (e.g. :func:`lowrank_seed`).

    Attributes:
        weight: ``U``, shape ``(M, r)``, float32, trained and sent (state key ``.router.weight``).
        down: ``V``, shape ``(r, d_in)``, float32, trained and sent (state key ``.router.down``).
    """

    def __init__(
        self,
        d_in: int,
        num_experts: int,
        rank: int,
        init_std: float = 0.01,
        temperature: float = 1.0,
        renormalize: bool = False,
        generator: torch.Generator | None = None,
        down_seed: int = 0,
    ) -> None:
        super().__init__(d_in, num_experts, temperature, init_std, renormalize, rank=rank)
        self.weight = self.init_weight(num_experts, rank, init_std, generator)
        self.down = nn.Parameter(random_projection(d_in, rank, down_seed))

    @property
    def rank(self) -> int:
        """r."""
        return int(self.weight.shape[1])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``U (V x)``, shape ``(..., M)``, in ``x``'s dtype; ``x``: ``(..., d_in)``,
        ``V x``: ``(..., r)``."""
        h = nn.functional.linear(x, self.down.to(x.dtype))
        return nn.functional.linear(h, self.weight.to(x.dtype))

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"d_in={self.down.shape[1]}, M={self.num_experts}, rank={self.rank}, "
            f"T={self.temperature}, renormalize={self.renormalize}"
        )
