"""LoRA baselines built with PEFT itself: ``fedit``, ``ffa_lora``, ``merge``, ``merge_fedit``,
``pool_fedit``.

Every baseline injects ONE PEFT LoRA (``peft.inject_adapter_in_model``, adapter ``default``) into
the frozen base model, on exactly the matrices the pool adapts (the union of the pool's targets, by
full module path) [D]. PEFT's ``lora_alpha`` is set equal to the rank on every matrix, so PEFT's
scaling is 1 and any source LoRA's own scaling ``s_n = alpha_n / r_n`` (or rsLoRA's) is folded into
``B`` [D]; the state is then a plain PEFT state dict (``get_peft_model_state_dict`` keys,
``<matrix>.lora_A.weight``: ``(r_m, d_in)``, ``<matrix>.lora_B.weight``: ``(d_out, r_m)``), which
is what travels and what PEFT loads (:func:`peft_adapter_config`).

Starts (per matrix ``m``; the pool's adapters that target ``m`` are ``n = 1..N_m``, the pool has
``N``):

- fresh: rank ``r_max`` (the largest rank in the pool) [D], PEFT's default init (A Kaiming-uniform,
  B = 0, so the start is the base model), seeded with ``cfg.train.seed``;
- concatenation with per-adapter weights ``w_n``: ``A = [A_1; ...; A_N_m]`` (``(sum r_n, d_in)``),
  ``B = [w_1 s_1 B_1, ..., w_N_m s_N_m B_N_m]`` (``(d_out, sum r_n)``), so that
  ``B A = sum_n w_n s_n B_n A_n`` exactly (no SVD). ``w_n = 1/N`` is the linear merge (the mean of
  the N delta weights; an adapter that does not target ``m`` contributes 0 there), ``w_n = 1`` the
  sum.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn

from smartfed.errors import CheckpointError
from smartfed.train.local import response_loss

if TYPE_CHECKING:
    from smartfed.config import RunConfig
    from smartfed.pool.pool import LoraPool

ADAPTER = "default"


def concat_factors(
    pool: LoraPool, weights: Sequence[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Concatenate the pool's LoRAs along the rank, per matrix, with weight ``w_n`` on adapter
    ``n``.

    Args:
        pool: the LoRA pool (``N`` adapters).
        weights: one weight per pool adapter, length ``N``.

    Returns:
        matrix -> ``(A (R_m, d_in), B (d_out, R_m))`` float32 with ``R_m = sum_n r_n`` over the
        adapters targeting the matrix and ``B A = sum_n w_n s_n B_n A_n``.
    """
    if len(weights) != len(pool.adapters):
        raise ValueError(f"{len(weights)} weights for a pool of {len(pool.adapters)} adapters")
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for matrix in pool.matrices():
        parts = [
            (a.modules[matrix], float(w))
            for a, w in zip(pool.adapters, weights, strict=True)
            if matrix in a.modules
        ]
        a_cat = torch.cat([mod.A.float() for mod, _ in parts], dim=0)
        b_cat = torch.cat([mod.B.float() * (w * mod.scaling) for mod, w in parts], dim=1)
        out[matrix] = (a_cat, b_cat)
    return out


def pool_ranks(pool: LoraPool) -> dict[str, int]:
    """``sum_n r_n`` of the adapters targeting each matrix (the rank of the concatenation)."""
    return {
        m: sum(a.modules[m].A.shape[0] for a in pool.adapters if m in a.modules)
        for m in pool.matrices()
    }


def peft_adapter_config(ranks: dict[str, int], base_model: str = "") -> LoraConfig:
    """A PEFT ``LoraConfig`` with rank ``ranks[m]`` and ``lora_alpha = rank`` (scaling 1) per
    matrix.
    """
    default = max(ranks.values())
    pattern = {re.escape(m): r for m, r in ranks.items() if r != default}
    return LoraConfig(
        r=default,
        lora_alpha=default,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        bias="none",
        base_model_name_or_path=base_model or None,
    )


def inject_lora(model: nn.Module, ranks: dict[str, int], seed: int) -> None:
    """Inject one PEFT LoRA (rank ``ranks[m]``, scaling 1) into ``model`` in place, seeded init."""
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_adapter_config(ranks), model, adapter_name=ADAPTER)
    model.requires_grad_(False)


def set_lora_factors(
    model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Write ``(A (r_m, d_in), B (d_out, r_m))`` per matrix with PEFT's
    ``set_peft_model_state_dict``.
    """
    sd = {}
    for m, (a, b) in factors.items():
        sd[f"{m}.lora_A.weight"], sd[f"{m}.lora_B.weight"] = a, b
    result = set_peft_model_state_dict(model, sd, adapter_name=ADAPTER)
    bad = [k for k in result.unexpected_keys if "lora_" in k]
    if bad:
        raise CheckpointError(f"LoRA state does not fit the model: unexpected {bad[:1]}")


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """PEFT LoRA parameters by state key (``<matrix>.lora_A.weight`` / ``.lora_B.weight``), model
    order.
    """
    tag = f".{ADAPTER}.weight"
    return {
        n.replace(tag, ".weight"): p
        for n, p in model.named_parameters()
        if (".lora_A." in n or ".lora_B." in n) and n.endswith(tag)
    }


class PeftLoRA:
    """A PEFT LoRA on the pool's matrices, trained and averaged with FedAvg (FedIT, Zhang et al.
    2024).

    Subclasses choose the start (:attr:`start`: ``fresh`` / ``mean`` / ``sum``) and which factors
    are trained and sent (:attr:`sends`). Per round each sampled client receives and returns the
    tensors named by :attr:`sends` (float32): ``sum_m |sends| * r_m * (d_in or d_out)`` values.
    """

    name = "peft_lora"
    uses_eeqa = False
    start = "fresh"
    sends: tuple[str, ...] = ("lora_A", "lora_B")

    def ranks(self, pool: LoraPool) -> dict[str, int]:
        """Rank per matrix: ``r_max`` for a fresh LoRA [D], ``sum_n r_n`` for a pool start."""
        if self.start == "fresh":
            r = max(a.rank for a in pool.adapters)
            return dict.fromkeys(pool.matrices(), r)
        return pool_ranks(pool)

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Inject the LoRA and set its start; returns ``{}`` (no routed matrices)."""
        inject_lora(model, self.ranks(pool), cfg.train.seed)
        if self.start != "fresh":
            w = 1.0 / len(pool.adapters) if self.start == "mean" else 1.0
            set_lora_factors(model, concat_factors(pool, [w] * len(pool.adapters)))
        return {}

    def _sent(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {
            k: p
            for k, p in lora_parameters(model).items()
            if any(f".{s}." in k for s in self.sends)
        }

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The sent LoRA factors (everything else, including unsent factors, stays frozen)."""
        params = list(self._sent(model).values())
        for p in params:
            p.requires_grad_(True)
        return params

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The sent factors, float32 CPU copies (``A``: ``(r_m, d_in)``, ``B``: ``(d_out,
        r_m)``).
        """
        return {
            k: p.detach().to("cpu", torch.float32).clone() for k, p in self._sent(model).items()
        }

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy the sent factors into the model (keys and shapes must match).

        Raises:
            CheckpointError: missing/unexpected keys or another shape.
        """
        params = self._sent(model)
        if set(state) != set(params):
            extra, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
            raise CheckpointError(
                f"{self.name} state does not fit: missing {missing[:1]}, "
                f"unexpected {extra[:1]}; use a state from the same method and pool"
            )
        with torch.no_grad():
            for k, p in params.items():
                if tuple(state[k].shape) != tuple(p.shape):
                    raise CheckpointError(f"{k}: shape {tuple(state[k].shape)} != {tuple(p.shape)}")
                p.copy_(state[k])


class FedIT(PeftLoRA):
    """``fedit`` [P baseline]: a fresh LoRA (rank ``r_max``, PEFT init B = 0); sends A and B."""

    name = "fedit"


class FFALoRA(PeftLoRA):
    """``ffa_lora`` (Sun et al., ICLR 2024): A frozen at its seeded init; sends and averages only
    B.
    """

    name = "ffa_lora"
    sends = ("lora_B",)


class MergeFedIT(PeftLoRA):
    """``merge_fedit``: FedIT from the linear merge (weights 1/N, exact concatenation); sends A and
    B.
    """

    name = "merge_fedit"
    start = "mean"


class PoolFedIT(PeftLoRA):
    """``pool_fedit``: FedIT warm-started from the SUM of the pool's LoRAs (concatenated); sends A
    and B.

    Sum, not mean [D]: it is what the CPU prototype's strongest baseline did (A and B concatenated,
    each LoRA applied at full strength, our CPU-scale prototype), every source skill starts intact,
    and
    the mean start is already covered by ``merge_fedit``.
    """

    name = "pool_fedit"
    start = "sum"


class Merge(PeftLoRA):
    """``merge``: the linear merge of the pool (mean of the delta weights), no training.

    Nothing is trained and nothing travels (``trainable_state`` is empty): each round clients only
    report their local loss (:meth:`local_update`), the server evaluates the merged model.
    """

    name = "merge"
    start = "mean"
    sends = ()

    def local_update(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, torch.Tensor]],
        cfg: RunConfig,
        payload: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Evaluate the merged model on the round's local batches; send no tensor (0 steps)."""
        with torch.no_grad():
            losses = [float(response_loss(model, b)) for b in batches]
        return {}, {"loss": sum(losses) / max(len(losses), 1), "steps": 0}
