"""Auxiliary load-balancing loss for top-K routers (Switch Transformer style) [D, opt-in].

Per MoRE layer with ``M`` experts and top-``K`` routing over ``N`` tokens (Fedus, Zoph and
Shazeer, 2021, "Switch Transformers: Scaling to Trillion Parameter Models with Simple and
Efficient Sparsity", JMLR 23; their eq. 4-6 for ``K = 1``):

    f_i = (1 / (N K)) sum_t [i in S(t)]          fraction of the N*K top-K slots given to i
    P_i = (1 / N) sum_t p_i(t)                   mean router probability of expert i
    L_layer = M * sum_i f_i * P_i                averaged over the layers

``f`` is a count (no gradient); the gradient reaches the routers through ``P``. ``L_layer = 1``
under uniform routing, and for tokens sharing one distribution it is ``M * (top-K mass) / K >= 1``
with equality only when the distribution is uniform. Enabled by ``router.load_balance_coef > 0``
(``smartfed.train.local``); the paper does not use it [D].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from smartfed.routing.layer import MoRELinear
from smartfed.routing.router import RoutingOutput


def switch_balance_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Return ``M * sum_i f_i P_i`` for one layer (see the module docstring).

    Args:
        probs: router softmax over all experts, shape ``(N, M)`` (gradient flows through it).
        indices: kept expert ids, shape ``(N, K)``, int64.

    Returns:
        A scalar in ``probs.dtype``; 0 when ``N == 0``.
    """
    n, m = probs.shape
    if n == 0 or indices.numel() == 0:
        return probs.sum() * 0.0
    counts = torch.bincount(indices.reshape(-1), minlength=m).to(probs.dtype)
    f = counts / indices.numel()  # (M,), sums to 1
    p = probs.mean(0)  # (M,)
    return m * (f * p).sum()


class LoadBalance:
    """Collect :func:`switch_balance_loss` from every MoRE layer with a top-K router.

    Use as a context manager around the forward passes of local training::

        with LoadBalance(model) as balance:
            balance.set_token_mask(batch["attention_mask"])  # optional: skip padding
            loss = task_loss(model, batch) + coef * balance.pop()

    Args:
        model: a model with MoRE layers.

    Attributes:
        layers: number of layers that contribute (those whose router exposes its softmax).
    """

    def __init__(self, model: nn.Module) -> None:
        self._layers = [
            m for m in model.modules() if isinstance(m, MoRELinear) and m.has_topk_router
        ]
        self.layers = len(self._layers)
        self._terms: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._mask: torch.Tensor | None = None

    def __enter__(self) -> LoadBalance:
        for layer in self._layers:
            self._handles.append(layer.add_routing_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._terms.clear()

    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """Count only tokens where ``mask`` (shape ``(batch, seq)``) is true; ``None`` = all."""
        self._mask = None if mask is None else mask.detach().bool()

    def _hook(self, probs: torch.Tensor, routing: RoutingOutput) -> None:
        m, k = probs.shape[-1], routing.indices.shape[-1]
        flat_p, flat_i = probs.reshape(-1, m), routing.indices.reshape(-1, k)
        if self._mask is not None:
            if self._mask.numel() != flat_p.shape[0]:
                raise ValueError(
                    f"token mask has {self._mask.numel()} entries, the layer {flat_p.shape[0]}"
                )
            keep = self._mask.reshape(-1).to(flat_p.device)
            flat_p, flat_i = flat_p[keep], flat_i[keep]
        self._terms.append(switch_balance_loss(flat_p, flat_i))

    def pop(self) -> torch.Tensor:
        """Mean of the layer terms collected since the last call (then cleared); 0 if none."""
        if not self._terms:
            return torch.zeros(())
        out = torch.stack([t.float() for t in self._terms]).mean()
        self._terms.clear()
        return out
