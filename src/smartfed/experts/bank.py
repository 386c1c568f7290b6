"""The frozen experts of one adapted matrix, gathered from every pool adapter that targets it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smartfed.experts.decompose import RankOneFactors, rank_one_factors
from smartfed.pool.adapter import LoraAdapter


class ExpertBank(nn.Module):
    """All rank-one experts of one matrix as frozen (non-trainable, non-persistent) buffers.

    Expert ``j`` is ``scaling[j] * outer(B[:, j], A[j])`` and comes from pool adapter
    ``adapter_index[j]`` (docs/method.md §1). With a heterogeneous pool a matrix holds only the
    experts of the adapters that target it, in pool order.

    Attributes:
        A: shape ``(M, d_in)``, model dtype.
        B: shape ``(d_out, M)``, model dtype.
        scaling: shape ``(M,)``, float32 (each expert keeps its LoRA's ``s``) [D].
        adapter_index: shape ``(M,)``, int64, position of the source adapter in the pool.
        source_ranks: rank of each source adapter that targets this matrix, in pool order.
    """

    A: torch.Tensor
    B: torch.Tensor
    scaling: torch.Tensor
    adapter_index: torch.Tensor

    def __init__(
        self, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor, adapter_index: torch.Tensor,
        source_ranks: Sequence[int],
    ) -> None:
        super().__init__()
        m = A.shape[0]
        if B.shape[1] != m or scaling.shape != (m,) or adapter_index.shape != (m,) or m == 0:
            raise ValueError(
                f"ExpertBank: A {tuple(A.shape)}, B {tuple(B.shape)}, scaling "
                f"{tuple(scaling.shape)}, adapter_index {tuple(adapter_index.shape)} disagree on M"
            )
        # Buffers are not persistent: experts come from the pool, never from a checkpoint.
        self.register_buffer("A", A.detach(), persistent=False)
        self.register_buffer("B", B.detach(), persistent=False)
        self.register_buffer("scaling", scaling.detach().float(), persistent=False)
        self.register_buffer("adapter_index", adapter_index.detach().long(), persistent=False)
        self.source_ranks = tuple(int(r) for r in source_ranks)

    @classmethod
    def from_adapters(
        cls, adapters: Sequence[LoraAdapter], matrix: str, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> ExpertBank:
        """Gather the experts of ``matrix`` from every adapter that targets it.

        Args:
            adapters: the pool in order (index = ``adapter_index``).
            matrix: module path, e.g. ``model.layers.0.self_attn.q_proj``.
            dtype: storage dtype of ``A`` and ``B`` (the model's).
            device: where the buffers live.

        Raises:
            ValueError: no adapter targets ``matrix`` or the adapters disagree on its shape.
        """
        parts = [
            (i, rank_one_factors(mod.A, mod.B, mod.scaling))
            for i, a in enumerate(adapters)
            if (mod := a.modules.get(matrix)) is not None
        ]
        if not parts:
            raise ValueError(f"no adapter in the pool targets {matrix}")
        shapes = {(f.b.shape[0], f.a.shape[1]) for _, f in parts}
        if len(shapes) > 1:
            raise ValueError(f"pool adapters disagree on the shape of {matrix}: {sorted(shapes)}")
        index = torch.cat([torch.full((f.a.shape[0],), i, dtype=torch.long) for i, f in parts])
        return cls(
            A=torch.cat([f.a for _, f in parts]).to(device=device, dtype=dtype),
            B=torch.cat([f.b for _, f in parts], dim=1).to(device=device, dtype=dtype),
            scaling=torch.cat([f.scale.float() for _, f in parts]).to(device),
            adapter_index=index.to(device),
            source_ranks=[f.a.shape[0] for _, f in parts],
        )

    @property
    def num_experts(self) -> int:
        """M, the number of experts of this matrix."""
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        """Input features."""
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        """Output features."""
        return int(self.B.shape[0])

    def experts_of(self, adapter_index: int) -> torch.Tensor:
        """Expert ids (shape ``(r_n,)``, int64) that come from pool adapter ``adapter_index``."""
        return torch.nonzero(self.adapter_index == adapter_index).flatten()

    def factors(self) -> RankOneFactors:
        """All experts as :class:`RankOneFactors` (``a`` ``(M, d_in)``, ``b`` ``(d_out, M)``)."""
        return RankOneFactors(a=self.A, b=self.B, scale=self.scaling)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``z = x @ A^T``, the expert input projections, shape ``(..., M)``."""
        return nn.functional.linear(x, self.A.to(x.dtype))

    def extra_repr(self) -> str:  # noqa: D102
        return f"M={self.num_experts}, d_in={self.d_in}, d_out={self.d_out}, " \
            f"ranks={self.source_ranks}"
