"""``MoRELinear``: a frozen ``nn.Linear`` plus a routed mixture of rank-one experts (method.md §2).

``forward(x) = W0 x + c * sum_{i in topK(x)} g_i(x) * s_i * B[:, i] (A[i] . x)``

Routing (:meth:`MoRELinear.route`) is kept apart from applying experts
(:meth:`MoRELinear.apply_experts`) so that any routing, e.g. weight 1 on all experts of one adapter,
can be applied: that is how exactness against PEFT is checked.

Formulation [D]: ``z = x @ A^T`` for all ``M`` experts once (``(..., M)``); the ``K`` kept
gates are scattered into a dense ``(..., M)`` coefficient (``w_i * s_i * c``, zero elsewhere) and
one matmul with ``B`` gives the output. No Python loop over experts. The alternative, gathering the
``K`` selected columns of ``B`` per token, materialises a ``(..., K, d_out)`` tensor and a batched
per-token product: with ``M`` in the tens (the paper's 2 x r=32 = 64) the dense GEMM is one
well-shaped kernel and measured 3-14x faster (router fwd+bwd, 1024 tokens, M=64, K=32; see
docs/method.md, "Cost").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from smartfed.errors import ConfigError
from smartfed.experts.bank import ExpertBank
from smartfed.experts.decompose import recompose
from smartfed.routing.router import RoutingOutput, SoftmaxTopKRouter

OUTPUT_SCALE_MODES = ("rank", "topk", "quota", "constant")


@dataclass(frozen=True)
class MoREForwardInfo:
    """What observers see of one forward pass of one MoRE layer (all detached).

    Attributes:
        x: layer input, shape ``(..., d_in)``.
        base_out: frozen output ``W0 x``, shape ``(..., d_out)``.
        z: expert projections ``A x`` (without scaling), shape ``(..., M)``.
        routing: the routing used, weights and indices ``(..., K)``.
    """

    x: torch.Tensor
    base_out: torch.Tensor
    z: torch.Tensor
    routing: RoutingOutput


Observer = Callable[[MoREForwardInfo], None]
RoutingHook = Callable[[torch.Tensor, RoutingOutput], None]


class MoRELinear(nn.Module):
    """Wrap a frozen ``nn.Linear`` with a router over the frozen experts of one matrix.

    Args:
        base_layer: the frozen linear layer ``W0`` (kept as is, not copied).
        bank: the experts of this matrix.
        router: a module with ``forward(x, k) -> RoutingOutput`` (a ``TopKRouter``).
        k: experts applied per token, ``1 <= k <= M``; also the ``K`` of ``topk`` mode's scale.
        output_scale_mode: ``rank`` (c = mean rank of the source LoRAs of this matrix),
            ``topk`` (c = the ``k`` the layer was built with, fixed when :meth:`set_quota` moves
            K_m) [D], ``quota`` (c = the current K_m: EEQA's sparsity also moves the layer's
            gain; kept for ablations) or ``constant`` (c = ``output_scale``).
        output_scale: the constant c for ``constant`` mode.
        name: module path, used in error messages.

    Raises:
        ConfigError: an impossible ``k`` or an unknown ``output_scale_mode``.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        bank: ExpertBank,
        router: nn.Module,
        k: int,
        output_scale_mode: str = "rank",
        output_scale: float = 1.0,
        name: str = "",
    ) -> None:
        super().__init__()
        if (base_layer.in_features, base_layer.out_features) != (bank.d_in, bank.d_out):
            raise ValueError(
                f"{name}: base layer {base_layer.in_features}->{base_layer.out_features} vs "
                f"experts {bank.d_in}->{bank.d_out}"
            )
        if output_scale_mode not in OUTPUT_SCALE_MODES:
            raise ConfigError(
                f"output_scale_mode={output_scale_mode!r}: choose one of {OUTPUT_SCALE_MODES}"
            )
        self.base_layer = base_layer
        self.bank = bank
        self.router = router
        self.name = name
        self.output_scale_mode = output_scale_mode
        self.constant_scale = float(output_scale)
        self._observers: OrderedDict[int, Observer] = OrderedDict()
        self._routing_hooks: OrderedDict[int, RoutingHook] = OrderedDict()
        self.k = 0
        self.set_quota(k)
        self.scale_k = self.k
        """The K of ``topk`` mode's scale: the uniform K the layer was built with [D]."""

    @classmethod
    def from_linear(
        cls,
        base: nn.Linear,
        bank: ExpertBank,
        router: nn.Module,
        k: int,
        output_scale_mode: str = "rank",
        output_scale: float = 1.0,
        name: str = "",
    ) -> MoRELinear:
        """Build the layer around ``base`` (see the class docstring for the arguments)."""
        return cls(base, bank, router, k, output_scale_mode, output_scale, name)

    @property
    def num_experts(self) -> int:
        """M."""
        return self.bank.num_experts

    @property
    def in_features(self) -> int:
        """Input features (as ``nn.Linear``)."""
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        """Output features (as ``nn.Linear``)."""
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight ``W0``, shape ``(d_out, d_in)`` (for code that inspects it)."""
        return self.base_layer.weight

    @property
    def output_scale(self) -> float:
        """The mixture scale c of the current mode ([D], docs/method.md §2)."""
        if self.output_scale_mode == "rank":
            ranks = self.bank.source_ranks
            return sum(ranks) / len(ranks)
        if self.output_scale_mode == "topk":
            return float(self.scale_k)
        if self.output_scale_mode == "quota":
            return float(self.k)
        return self.constant_scale

    def set_quota(self, k: int) -> None:
        """Set K_m, the experts applied per token.

        Raises:
            ConfigError: ``k`` outside ``[1, M]`` (an impossible top-K).
        """
        m = self.num_experts
        if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= m:
            raise ConfigError(
                f"impossible top-K: K={k} for {self.name or 'a MoRE layer'}, which has M={m} "
                f"experts; choose 1 <= K <= {m} (lower --topk_experts or the quota)"
            )
        self.k = int(k)

    def route(self, x: torch.Tensor) -> RoutingOutput:
        """Route ``x`` ``(..., d_in)`` to its top-K experts: weights/indices ``(..., K)``.

        With routing hooks registered and a softmax top-K router
        (:class:`~smartfed.routing.router.SoftmaxTopKRouter`), the full softmax ``(..., M)`` is
        passed to the hooks, graph attached.
        """
        if self._routing_hooks and isinstance(self.router, SoftmaxTopKRouter):
            probs = self.router.probs(x)
            out: RoutingOutput = self.router.select(probs, self.k)
            for fn in list(self._routing_hooks.values()):
                fn(probs, out)
            return out
        out = self.router(x, self.k)
        return out

    def apply_experts(
        self, x: torch.Tensor, routing: RoutingOutput, output_scale: float | None = None
    ) -> torch.Tensor:
        """Return ``c * sum_j w_j s_{i_j} B[:, i_j] (A[i_j] . x)`` for any routing.

        Args:
            x: shape ``(..., d_in)``.
            routing: weights and indices ``(..., K)`` (any ``K`` in ``[0, M]``; repeated
                indices add).
            output_scale: c; ``None`` = the layer's :attr:`output_scale`.

        Returns:
            The expert update, shape ``(..., d_out)``, in ``x.dtype``.
        """
        c = self.output_scale if output_scale is None else float(output_scale)
        return self._mix(self.bank.project(x), routing, c)

    def _mix(self, z: torch.Tensor, routing: RoutingOutput, c: float) -> torch.Tensor:
        """Mix expert projections ``z`` (``(..., M)``) by a routing: one GEMM with ``B``."""
        idx = routing.indices.expand(*z.shape[:-1], -1)
        gates = torch.zeros_like(z).scatter_add(-1, idx, routing.weights.to(z.dtype).expand_as(idx))
        coef = gates * (self.bank.scaling * c).to(z.dtype)  # (..., M): w_i * s_i * c
        return nn.functional.linear(z * coef, self.bank.B.to(z.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``W0 x + apply_experts(x, route(x))``, shape ``(..., d_out)``."""
        base_out = self.base_layer(x)
        routing = self.route(x)
        z = self.bank.project(x)
        out = base_out + self._mix(z, routing, self.output_scale)
        if self._observers:
            self._notify(x, base_out, z, routing)
        return out

    def _notify(
        self, x: torch.Tensor, base_out: torch.Tensor, z: torch.Tensor, routing: RoutingOutput
    ) -> None:
        info = MoREForwardInfo(x.detach(), base_out.detach(), z.detach(), routing.detach())
        with torch.no_grad():
            for fn in list(self._observers.values()):
                fn(info)

    def add_observer(self, fn: Observer) -> RemovableHandle:
        """Call ``fn(MoREForwardInfo)`` after every forward until ``handle.remove()``.

        Observers cost nothing when none is registered.
        """
        handle = RemovableHandle(self._observers)
        self._observers[handle.id] = fn
        return handle

    @contextmanager
    def observers_paused(self) -> Iterator[None]:
        """Skip the observers and routing hooks inside the block (activation checkpointing
        recomputing this layer in backward: each token is observed once). Observers and hooks
        added inside the block are dropped."""
        saved, self._observers = self._observers, OrderedDict()
        hooks, self._routing_hooks = self._routing_hooks, OrderedDict()
        try:
            yield
        finally:
            self._observers, self._routing_hooks = saved, hooks

    def add_routing_hook(self, fn: RoutingHook) -> RemovableHandle:
        """Call ``fn(probs, routing)`` on every routing until ``handle.remove()``.

        ``probs`` is the router's softmax over all experts, shape ``(..., M)``, *not* detached
        (auxiliary losses such as :class:`smartfed.routing.balance.LoadBalance` train through
        it); ``routing`` is the top-K kept. Routers without ``probs``/``select`` are skipped.
        """
        handle = RemovableHandle(self._routing_hooks)
        self._routing_hooks[handle.id] = fn
        return handle

    @property
    def has_topk_router(self) -> bool:
        """Whether routing hooks can see this layer's softmax (a softmax top-K router)."""
        return isinstance(self.router, SoftmaxTopKRouter)

    def get_delta_weight(self, routing_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``c * sum_i w_i s_i B[:, i] A[i]`` for a dense routing (merging / export).

        Args:
            routing_weights: one weight per expert, shape ``(M,)``; ``None`` = all ones.

        Returns:
            ``delta_W``, shape ``(d_out, d_in)``, float32.
        """
        w = torch.ones(self.num_experts) if routing_weights is None else routing_weights
        if w.shape != (self.num_experts,):
            raise ValueError(
                f"routing_weights must have shape ({self.num_experts},), got {tuple(w.shape)}"
            )
        factors = self.bank.factors()
        f32 = type(factors)(factors.a.float(), factors.b.float(), factors.scale.float())
        return self.output_scale * recompose(f32, w.to(factors.scale.device).float())

    def extra_repr(self) -> str:  # noqa: D102
        c = f"{self.output_scale:g} ({self.output_scale_mode})"
        return f"K={self.k}, M={self.num_experts}, c={c}"
