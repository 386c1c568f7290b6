"""The rank-one split of a LoRA update and its inverse (docs/method.md §1 [P]).

A LoRA update is ``delta_W = s * B @ A = sum_i s * B[:, i] A[i, :]``: each rank-one term
``E_i(x) = s * B[:, i] (A[i, :] . x)`` is one expert. These functions are pure tensor algebra and
are the only place (with :meth:`smartfed.routing.layer.MoRELinear.get_delta_weight`, which calls
:func:`recompose`) where ``delta_W`` is formed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RankOneFactors(NamedTuple):
    """``r`` rank-one experts: expert ``i`` is ``scale[i] * outer(b[:, i], a[i])``.

    Attributes:
        a: input directions, shape ``(r, d_in)``.
        b: output directions, shape ``(d_out, r)``.
        scale: per-expert scaling, shape ``(r,)``.
    """

    a: torch.Tensor
    b: torch.Tensor
    scale: torch.Tensor


def rank_one_factors(A: torch.Tensor, B: torch.Tensor, scaling: float) -> RankOneFactors:
    """Split a LoRA ``(A, B, s)`` into its ``r`` rank-one experts, each keeping the LoRA's ``s``.

    Args:
        A: shape ``(r, d_in)``.
        B: shape ``(d_out, r)``.
        scaling: the LoRA's ``alpha / r`` (or ``alpha / sqrt(r)``) [D: each expert keeps it].

    Returns:
        The factors; ``recompose(rank_one_factors(A, B, s)) == s * B @ A``.

    Raises:
        ValueError: shapes that are not ``(r, d_in)`` / ``(d_out, r)``.
    """
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(
            f"expected A (r, d_in) and B (d_out, r), got {tuple(A.shape)}, {tuple(B.shape)}"
        )
    scale = torch.full((A.shape[0],), float(scaling), dtype=A.dtype, device=A.device)
    return RankOneFactors(a=A, b=B, scale=scale)


def recompose(factors: RankOneFactors, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``sum_i w_i * scale_i * outer(b_i, a_i)``.

    Args:
        factors: ``M`` experts (from one or several LoRAs).
        weights: per-expert mixing weights, shape ``(M,)``; ``None`` = all ones (the LoRA itself).

    Returns:
        ``delta_W``, shape ``(d_out, d_in)``, in the factors' dtype.
    """
    coef = factors.scale if weights is None else factors.scale * weights.to(factors.scale.dtype)
    return (factors.b * coef.to(factors.b.dtype)) @ factors.a
