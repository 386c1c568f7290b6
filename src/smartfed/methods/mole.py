"""``mole``: Mixture of LoRA Experts (Wu, Huang, Wei, ICLR 2024, arXiv 2404.13628), gates only.

MoLE keeps every pool LoRA frozen and learns, in each adapted layer, a gating function over the
OUTPUTS of the LoRAs [P]. Per adapted matrix ``m`` with ``N_m >= 2`` pool LoRAs, for each token:

- ``E_n(x) = s_n B_n A_n x``, shape ``(..., d_out)``: the output of LoRA ``n`` [P].
- ``eps = [LN(E_1(x)), ..., LN(E_N(x))]``, shape ``(..., N_m * d_out)``: the normalised,
  concatenated LoRA outputs [P]; ``LN`` is a layer norm over ``d_out`` without affine parameters
  (nothing else trains) [D].
- ``G(x) = softmax(e eps / tau)``, shape ``(..., N_m)``, ``e: (N_m, N_m * d_out)`` and a learnable
  temperature ``tau > 0`` per gate [P]; kept as ``log tau`` so it stays positive [D].
- ``h = W0 x + sum_n G_n(x) E_n(x)`` [P].

Training adds MoLE's gating balancing loss ``L_balance = -sum_n log q_n`` (``-log prod_n q_n``)
with weight ``beta`` (``router.mole_balance_coef``) to the task loss [P]; ``q_n`` is the mean gate
of pool LoRA ``n`` over the batch's real tokens and over every gate that contains ``n`` [D: the
averaging for heterogeneous pools, where LoRAs target different matrices].

Choices [D]: the gate is per token (MoLE flattens a whole sequence, which would let a token's gate
see later tokens and break autoregressive decoding); ``e = 0`` at the start, so the first round
starts exactly at the per-matrix mean merge; a matrix adapted by one LoRA has the constant gate 1
(nothing to learn; a one-value placeholder travels so the wire has a key per MoRE layer).
:func:`set_lora_mask` is MoLE's inference-time masking of LoRAs [P]: masked LoRAs get gate 0 and
the others are renormalised.

Mapping onto MoRE: a whole LoRA is the group of its rank-one experts in the matrix's
:class:`~smartfed.experts.bank.ExpertBank`; :class:`MoLEGate` is the layer's router and gives every
expert its LoRA's gate (dense, output scale ``c = 1``), so the MoRE mixture is exactly
``sum_n G_n E_n(x)``.

Sent per round (each direction, per sampled client): per matrix with ``N_m >= 2``,
``<matrix>.router.weight`` ``(N_m, N_m * d_out)`` and ``<matrix>.router.log_temperature`` ``(1,)``;
per matrix with ``N_m = 1``, the placeholder ``<matrix>.router.weight`` ``(1, 1)``; float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from smartfed.errors import CheckpointError, ConfigError
from smartfed.methods.smartfed import SmartFed
from smartfed.model.inject import inject_more
from smartfed.model.state import more_layers
from smartfed.routing.router import RoutingOutput

if TYPE_CHECKING:
    from smartfed.config import RunConfig
    from smartfed.experts.bank import ExpertBank
    from smartfed.pool.pool import LoraPool


class MoLEGate(nn.Module):
    """MoLE's gating function of one matrix, computed from the outputs of its LoRAs.

    Args:
        bank: the matrix's experts (rank-one pieces of the ``N`` LoRAs that target it, each LoRA's
            experts contiguous, in pool order).
        temperature: initial ``tau`` (> 0).

    Attributes:
        weight: ``e``, shape ``(N, N * d_out)``, float32, zero at init (``N = 1``: an unused
            ``(1, 1)`` placeholder, 4 bytes on the wire).
        log_temperature: ``log tau``, shape ``(1,)`` (only when ``N >= 2``).
        pool_index: pool position of each of the ``N`` LoRAs, ``(N,)``.
        groups: LoRA (``0..N-1``) of each expert, ``(M,)``.
        mask: LoRAs in use, ``(N,)`` bool (all by default; see :func:`set_lora_mask`).
        last_probs: the gates ``(..., N)`` of the last forward run with gradients (for the
            balancing loss), else ``None``.
    """

    def __init__(self, bank: ExpertBank, temperature: float) -> None:
        super().__init__()
        pool_index, groups = torch.unique(bank.adapter_index.cpu(), return_inverse=True)
        n = int(pool_index.numel())
        self.num_loras, self.d_out = n, bank.d_out
        self.spans = _spans(groups, n)
        self.__dict__["bank"] = bank  # shared with the layer, not a second submodule
        if n > 1:
            self.weight = nn.Parameter(torch.zeros(n, n * bank.d_out))
            self.log_temperature = nn.Parameter(torch.tensor([math.log(temperature)]))
        else:  # constant gate 1; a 1-value placeholder keeps one ``.router.weight`` key (and
            # one quota on the wire) per MoRE layer, as for every routed method; never used
            self.weight = nn.Parameter(torch.zeros(1, 1))
        device = bank.A.device
        self.register_buffer("pool_index", pool_index.to(device), persistent=False)
        self.register_buffer("groups", groups.long().to(device), persistent=False)
        self.register_buffer(
            "experts", torch.arange(groups.numel(), device=device), persistent=False
        )
        self.register_buffer(
            "mask", torch.ones(n, dtype=torch.bool, device=device), persistent=False
        )
        self.last_probs: torch.Tensor | None = None

    def lora_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``E_n(x) = s_n B_n A_n x`` of every LoRA, shape ``(..., N, d_out)``, in ``x.dtype``."""
        bank = self.bank
        zs = bank.project(x) * bank.scaling.to(x.dtype)  # (..., M)
        b = bank.B.to(x.dtype)
        outs = [nn.functional.linear(zs[..., i:j], b[:, i:j]) for i, j in self.spans]
        return torch.stack(outs, dim=-2)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Gates ``G(x)`` of the ``N`` LoRAs, shape ``(..., N)``, float32 (masked LoRAs: 0)."""
        lead = x.shape[:-1]
        if not bool(self.mask.any()):
            return torch.zeros(*lead, self.num_loras, device=x.device)
        if self.num_loras == 1:
            return torch.ones(*lead, 1, device=x.device)
        outs = self.lora_outputs(x).float()  # (..., N, d_out)
        eps = nn.functional.layer_norm(outs, (self.d_out,)).flatten(-2)  # (..., N * d_out)
        logits = nn.functional.linear(eps, self.weight) / self.log_temperature.exp()
        logits = logits.masked_fill(~self.mask, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, k: int) -> RoutingOutput:  # noqa: ARG002
        """Dense routing: weights ``(..., M)`` = the gate of each expert's LoRA; ``k`` ignored."""
        p = self.probs(x)
        self.last_probs = p if torch.is_grad_enabled() and self.num_loras > 1 else None
        weights = p[..., self.groups]
        return RoutingOutput(weights, self.experts.expand(weights.shape))

    def extra_repr(self) -> str:  # noqa: D102
        return f"N={self.num_loras}, d_out={self.d_out}, pool_index={self.pool_index.tolist()}"


def _spans(groups: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of each LoRA's experts in the bank (they are contiguous)."""
    spans = []
    for g in range(n):
        idx = torch.nonzero(groups == g).flatten()
        start, stop = int(idx[0]), int(idx[-1]) + 1
        if stop - start != idx.numel():
            raise ValueError(f"the experts of LoRA {g} are not contiguous in the bank")
        spans.append((start, stop))
    return spans


def mole_gates(model: nn.Module) -> dict[str, MoLEGate]:
    """Every :class:`MoLEGate` of ``model`` by matrix (module path), in model order."""
    return {
        name: layer.router
        for name, layer in more_layers(model).items()
        if isinstance(layer.router, MoLEGate)
    }


def set_lora_mask(model: nn.Module, keep: Iterable[int] | None = None) -> None:
    """MoLE's inference-time masking [P]: only pool LoRAs in ``keep`` get a gate (renormalised).

    Args:
        model: a model prepared by :class:`MoLE`.
        keep: pool positions of the LoRAs to keep; ``None`` = all. A matrix none of whose LoRAs is
            kept gets no LoRA at all.
    """
    kept = None if keep is None else {int(i) for i in keep}
    for gate in mole_gates(model).values():
        values = [kept is None or int(i) in kept for i in gate.pool_index.tolist()]
        gate.mask.copy_(torch.tensor(values, dtype=torch.bool))


def balancing_loss(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """MoLE's gating balancing loss ``-sum_n log q_n`` of the last forward [P].

    ``q_n``: mean gate of pool LoRA ``n`` over the real tokens (``attention_mask``, ``(batch,
    seq)``) and over every gate with ``N >= 2`` that contains ``n`` [D]; masked LoRAs are left out.
    When every gate holds the same ``N`` LoRAs the minimum is ``N log N`` (every ``q_n = 1/N``);
    in a heterogeneous pool the balance point is not "uniform in every gate".

    Returns:
        A float32 scalar with gradient (0 when no gate recorded probabilities).
    """
    per_lora: dict[int, list[torch.Tensor]] = {}
    for gate in mole_gates(model).values():
        p = gate.last_probs
        if p is None:
            continue
        w = attention_mask.to(p.device, torch.float32).reshape(-1, 1)  # (tokens, 1)
        q = (p.reshape(-1, gate.num_loras) * w).sum(0) / w.sum().clamp_min(1.0)  # (N,)
        for j, n in enumerate(gate.pool_index.tolist()):
            if bool(gate.mask[j]):
                per_lora.setdefault(n, []).append(q[j])
    if not per_lora:
        return torch.zeros(())
    q_n = torch.stack([torch.stack(v).mean() for v in per_lora.values()])
    return -torch.log(q_n.clamp_min(1e-12)).sum()


class MoLE(SmartFed):
    """MoLE: a gate per matrix over the outputs of its frozen LoRAs; gates (and ``tau``) travel."""

    name = "mole"
    uses_eeqa = False
    balance_coef = 0.0
    """``beta`` of the balancing loss; :meth:`prepare` sets ``router.mole_balance_coef``."""

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Inject MoRE layers (dense, ``c = 1``), each with a :class:`MoLEGate` as its router.

        Raises:
            ConfigError: a projected or low-rank router was asked for (MoLE's gates have none).
        """
        for flag in ("router_proj_dim", "router_rank"):
            if getattr(cfg.router, flag, 0):
                raise ConfigError(
                    f"{flag}={getattr(cfg.router, flag)}: mole's gates have no such variant; use "
                    f"{flag} 0 with --method mole"
                )
        self.balance_coef = cfg.router.mole_balance_coef
        router_cfg = dataclasses.replace(
            cfg.router, topk_experts=1, output_scale_mode="constant", output_scale=1.0
        )
        inject_more(model, pool, router_cfg, seed=cfg.train.seed)
        out: dict[str, int] = {}
        for name, layer in more_layers(model).items():
            layer.router = MoLEGate(layer.bank, cfg.router.mole_temperature)
            layer.set_quota(layer.num_experts)
            out[name] = layer.num_experts
        return out

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """``e`` and ``log tau`` of every gate (and the ``N_m = 1`` placeholders, which get no
        gradient), in model order."""
        params = [p for gate in mole_gates(model).values() for p in gate.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``<matrix>.router.weight`` ``(N_m, N_m d_out)`` and ``<matrix>.router.log_temperature``
        ``(1,)``, float32 CPU copies: exactly what is sent."""
        return {
            f"{name}.router.{pname}": p.detach().to("cpu", torch.float32).clone()
            for name, gate in mole_gates(model).items()
            for pname, p in gate.named_parameters()
        }

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Copy gate parameters into the model.

        Raises:
            CheckpointError: other keys or shapes (another pool or base model).
        """
        params = {
            f"{name}.router.{pname}": p
            for name, gate in mole_gates(model).items()
            for pname, p in gate.named_parameters()
        }
        bad = sorted(set(params) ^ set(state)) or [
            k for k, p in params.items() if tuple(state[k].shape) != tuple(p.shape)
        ]
        if bad:
            raise CheckpointError(
                f"mole state does not fit this model (e.g. {bad[0]}); use gates trained with the "
                "same base model and pool"
            )
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(state[key])

    def auxiliary_loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``beta * L_balance`` of the batch just forwarded (``router.mole_balance_coef``) [P]."""
        loss = balancing_loss(model, batch["attention_mask"])
        for gate in mole_gates(model).values():
            gate.last_probs = None
        return self.balance_coef * loss
