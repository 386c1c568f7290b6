"""Exactness check of MoRE against PEFT (docs/method.md §2, ``smartfed pool verify``).

For every pool adapter ``n``, every MoRE layer is forced to *unit routing*: weight 1 on all of
adapter ``n``'s experts, 0 elsewhere, output scale ``c = 1``. The MoRE update of a matrix is then
``sum_{i in n} s_n B[:, i] (A[i] . x) = s_n B_n A_n x``, PEFT's LoRA update, and matrices that
``n`` does not adapt get no update. The whole model's logits must equal those of PEFT's own
``PeftModel`` with adapter ``n`` active, on a few fixed prompts.

Error measure: ``max |logits_MoRE - logits_PEFT| / max |logits_PEFT|`` over the non-padding
positions of the prompts. We also report the adapter's effect, ``max |logits_PEFT - logits_base| /
max |logits_base|``: a check passes trivially for an adapter whose effect is 0 (e.g. B = 0).

Tolerance [D]. float32 (the default of ``pool verify``): 5e-5 (measured: <= 5.6e-6 on SmolLM2-135M
with random r=8 adapters that change the logits by up to 109%). In bfloat16/float16 a fixed bound
is meaningless: bf16 alone moves SmolLM2's logits by 4% against float32, and a strong adapter
amplifies that to 40% *inside PEFT itself*. So a low-precision check also runs PEFT on a float32
copy and passes when MoRE's error against that float32 reference is at most
``max(tolerance, 2 x PEFT's own low-precision error)`` (tolerance 3e-2): "as exact as PEFT in
this dtype".
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from smartfed.config import RouterConfig
from smartfed.model.inject import inject_more
from smartfed.model.state import more_layers
from smartfed.pool.pool import LoraPool
from smartfed.pool.validate import validate_pool
from smartfed.routing.router import FixedRouter

TOLERANCES = {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 3e-2}
FLOOR_FACTOR = 2.0
DEFAULT_PROMPTS = (
    "What is 47 plus 38?",
    "def add(a, b):\n    return a + b",
    "小明有3个苹果，又买了5个，一共有几个？",
    "Write the number eighty-five in French.",
)


@dataclass(frozen=True)
class AdapterCheck:
    """The result of one adapter's exactness check."""

    name: str
    max_rel_error: float
    """Against PEFT in the same dtype."""
    effect: float
    tolerance: float
    error_vs_fp32: float | None = None
    """Low precision only: MoRE against PEFT on a float32 copy."""
    peft_error_vs_fp32: float | None = None
    """Low precision only: PEFT in the model dtype against PEFT on a float32 copy (the floor)."""

    @property
    def bound(self) -> float:
        """The error bound this check is held to."""
        if self.peft_error_vs_fp32 is None:
            return self.tolerance
        return max(self.tolerance, FLOOR_FACTOR * self.peft_error_vs_fp32)

    @property
    def passed(self) -> bool:
        """True when the error is within its bound (and finite)."""
        err = self.max_rel_error if self.error_vs_fp32 is None else self.error_vs_fp32
        return bool(err <= self.bound)


def default_tolerance(dtype: torch.dtype) -> float:
    """Tolerance of the max relative logit error for a model dtype [D]."""
    return TOLERANCES.get(dtype, 3e-2)


@contextmanager
def unit_routing(model: nn.Module, adapter_index: int) -> Iterator[None]:
    """Force every MoRE layer to weight 1 on adapter ``adapter_index``'s experts, c = 1.

    Restores each layer's router and output scale on exit.
    """
    saved = []
    for layer in more_layers(model).values():
        saved.append((layer, layer.router, layer.output_scale_mode, layer.constant_scale))
        idx = layer.bank.experts_of(adapter_index)
        fixed = FixedRouter(idx, torch.ones(idx.numel())).to(layer.bank.A.device)
        layer.router = fixed
        layer.output_scale_mode, layer.constant_scale = "constant", 1.0
    try:
        yield
    finally:
        for layer, router, mode, const in saved:
            layer.router, layer.output_scale_mode, layer.constant_scale = router, mode, const


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    diff = (a - b)[mask].abs().max()
    return float(diff / b[mask].abs().max().clamp_min(1e-30))


def verify_pool(
    model: nn.Module, tokenizer: Any, pool: LoraPool, prompts: Sequence[str] = DEFAULT_PROMPTS,
    tolerance: float | None = None, seed: int = 0,
) -> list[AdapterCheck]:
    """Build MoRE on ``model`` and compare unit routing with PEFT for every adapter.

    Args:
        model: the frozen base model; MoRE is injected into it in place (a deep copy serves PEFT).
        tokenizer: the model's tokenizer (pads the prompts).
        pool: the adapters (their ``path`` is a local PEFT directory).
        prompts: fixed prompts; logits of every non-padding token are compared.
        tolerance: max relative error allowed; ``None`` = :func:`default_tolerance` of the dtype.
        seed: router init seed (routers are not used under unit routing).

    Returns:
        One :class:`AdapterCheck` per adapter, in pool order.

    Raises:
        PoolCompatibilityError: the pool does not fit the model.
    """
    validate_pool(pool, model)  # before PEFT sees the adapters: our errors, not PEFT's
    dtype = next(model.parameters()).dtype
    tol = default_tolerance(dtype) if tolerance is None else tolerance
    device = next(model.parameters()).device
    batch = dict(tokenizer(list(prompts), return_tensors="pt", padding=True))
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["attention_mask"].bool()
    reference = copy.deepcopy(model)
    base_logits = _logits(reference, batch)
    peft = _peft_model(reference, pool)
    peft32 = None if dtype == torch.float32 else _peft_model(copy.deepcopy(model).float(), pool)
    inject_more(model, pool, RouterConfig(topk_experts=1), seed=seed)
    checks = []
    for i, adapter in enumerate(pool.adapters):
        peft.set_adapter(f"a{i}")
        want = _logits(peft, batch)
        with unit_routing(model, i):
            got = _logits(model, batch)
        extra: dict[str, float] = {}
        if peft32 is not None:
            peft32.set_adapter(f"a{i}")
            want32 = _logits(peft32, batch)
            extra = {"error_vs_fp32": _rel(got, want32, mask),
                     "peft_error_vs_fp32": _rel(want, want32, mask)}
        checks.append(AdapterCheck(
            adapter.name, _rel(got, want, mask), _rel(want, base_logits, mask), tol, **extra
        ))
    return checks


def _peft_model(model: nn.Module, pool: LoraPool) -> Any:
    """PEFT's own model with every pool adapter loaded as ``a{index}``."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, str(pool.adapters[0].path), adapter_name="a0")
    for i, adapter in enumerate(pool.adapters[1:], start=1):
        peft.load_adapter(str(adapter.path), adapter_name=f"a{i}")
    return peft.eval()
