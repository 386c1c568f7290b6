"""Memory-lean local training: activation checkpointing and a chunked response-only LM loss.

Two switches, both exact (the same loss and gradients up to float rounding, tested on the tiny
model), documented in docs/gpu.md:

* :func:`activation_checkpointing` - Hugging Face's per-decoder-layer activation checkpointing
  (``activation_checkpointing_enable`` with ``use_reentrant=False``) for the duration of a local
  round. Only each decoder layer's input is kept; the layer is recomputed in backward. Non-reentrant
  checkpointing gives the trainable parameters inside a layer (MoRE routers, LoRA factors) their
  gradients although the frozen base's hidden states do not require grad, so no
  ``enable_input_require_grads`` hook is needed (it would only add backward work in layer 0).
  MoRE observers (EEQA importance, expert usage) are paused while a layer is recomputed, so every
  token is counted once.
* :func:`chunked_lm_head_loss` - the next-token cross-entropy over the response positions only,
  projected to the vocabulary ``chunk_tokens`` rows at a time: the ``(n, vocab)`` float32 logits
  are never held at once, and the gradient of each chunk is formed in the forward pass (the LM head
  is frozen), so backward does no recomputation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from smartfed.log import get_logger
from smartfed.model.state import more_layers

log = get_logger(__name__)


def _pretrained(model: nn.Module) -> Any:
    """The outermost Hugging Face ``PreTrainedModel`` in ``model`` (itself or a wrapped one)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    return None


def _checkpoint_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks Hugging Face can checkpoint (``GradientCheckpointingLayer``)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextmanager
def _observers_paused(model: nn.Module) -> Iterator[None]:
    """Pause every MoRE layer's observers (a checkpointed layer being recomputed in backward)."""
    with ExitStack() as stack:
        for layer in more_layers(model).values():
            stack.enter_context(layer.observers_paused())
        yield


@contextmanager
def activation_checkpointing(
    model: nn.Module, enabled: bool = True, every_n_layers: int = 1
) -> Iterator[bool]:
    """Checkpoint every ``every_n_layers``-th decoder layer of ``model`` inside the block.

    The model stays in eval mode (no dropout) [D]: Hugging Face checkpoints a layer only when that
    layer's own ``training`` flag is set, so the flag is set on the decoder blocks alone (their
    attention/MLP submodules keep ``training=False``) and restored on exit, together with the
    checkpointing switch.

    Args:
        model: a Hugging Face causal LM (MoRE layers or PEFT LoRA layers injected, or none).
        enabled: ``False`` = a no-op block.
        every_n_layers: 1 = every layer (least memory); 2 = every other layer, and so on.

    Yields:
        Whether checkpointing is active (``False`` when disabled or the model does not support it;
        the latter is logged once).
    """
    hf = _pretrained(model) if enabled else None
    layers = _checkpoint_layers(model) if hf is not None else []
    if not enabled:
        yield False
        return
    if hf is None or not getattr(hf, "supports_gradient_checkpointing", False) or not layers:
        log.warning(
            "%s does not support activation checkpointing; training without it",
            type(model).__name__,
        )
        yield False
        return

    def contexts() -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
        return nullcontext(), _observers_paused(model)

    hf.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": contexts},
        every_n_layers=every_n_layers,
    )
    hf.disable_input_require_grads()  # non-reentrant checkpointing does not need it
    flags = [m.training for m in layers]
    for m in layers:
        m.training = True  # only the block itself: its children stay in eval mode
    try:
        yield True
    finally:
        for m, flag in zip(layers, flags, strict=True):
            m.training = flag
        hf.activation_checkpointing_disable()


class _ChunkedLMHeadCE(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight^T`` against ``targets``, ``chunk`` rows at a time.

    Forward computes, per chunk, the logits in the weight's dtype (as ``nn.Linear`` does), the
    float32 log-softmax (in place: about ``6 x chunk x vocab`` bytes alive per chunk) and loss,
    and - when gradients are needed - the gradient of the mean loss w.r.t. the chunk's hidden
    states (``(softmax - onehot) / n``, cast to the logits' dtype, times ``weight``: the same
    operations autograd runs through ``lm_head(h).float()``). Backward only scales the stored
    gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        n = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk]  # (c, d)
            t = targets[start : start + chunk]  # (c,)
            logp = nn.functional.linear(h, weight).float()  # (c, vocab) logits
            logp -= torch.logsumexp(logp, dim=-1, keepdim=True)  # log-softmax in place
            total -= logp.gather(1, t[:, None]).sum()
            if not (need_h or need_w):
                continue
            g = logp.exp_()  # softmax, in place: (c, vocab)
            g[torch.arange(t.shape[0], device=g.device), t] -= 1.0
            g = g.div_(n).to(weight.dtype)
            if grad_h is not None:
                grad_h[start : start + chunk] = g @ weight
            if grad_w is not None:
                grad_w += (g.t() @ h).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        has_h, has_w = ctx.has
        grad_h = grad_w = None
        if has_h:
            stored = saved.pop(0)
            grad_h = stored * grad_out.to(stored.dtype)
        if has_w:
            grad_w = (saved.pop(0) * grad_out).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def chunked_lm_head_loss(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Mean next-token cross-entropy of the selected positions, ``chunk_tokens`` rows at a time.

    Args:
        hidden: final hidden states of the positions that carry a loss, shape ``(n, d)``.
        head: the LM head (``get_output_embeddings()``), ``weight: (vocab, d)``.
        targets: the next token of each position, shape ``(n,)``, int64.
        chunk_tokens: rows per chunk; 0 = all at once through plain autograd.

    Returns:
        A scalar float32 loss (NaN when ``n == 0``). Same value and gradients as
        ``cross_entropy(head(hidden).float(), targets)`` up to float rounding.
    """
    plain = (
        chunk_tokens <= 0
        or hidden.shape[0] == 0
        or type(head) is not nn.Linear
        or head.bias is not None
    )
    if plain:
        return nn.functional.cross_entropy(head(hidden).float(), targets)
    loss: torch.Tensor = _ChunkedLMHeadCE.apply(hidden, head.weight, targets, chunk_tokens)
    return loss
