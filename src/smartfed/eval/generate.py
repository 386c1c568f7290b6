"""Batched greedy decoding with KV cache, stop strings and a length cap, for any HF causal LM.

The model is opaque: a plain base model, a PEFT model or one whose linear layers were replaced by
MoRE layers all go through ``model.generate`` (greedy, ``use_cache=True``). Prompts are rendered
with :func:`smartfed.data.formatting.render_prompt` (the one format shared with training), sorted
by length so each left-padded batch wastes little, and returned in the input order.

Stop strings are checked on the generated text only ([D]; HF's ``stop_strings`` also match across
the prompt boundary, so a chat prompt ending in a newline stopped ``"\n\n"`` after one token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from smartfed.data.formatting import render_prompt
from smartfed.log import get_logger

log = get_logger(__name__)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop string is removed)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class NewTextStop:
    """Stopping criterion: a row is done once its *generated* text contains a stop string.

    Args:
        tok: the tokenizer (decodes the new tokens of each row).
        prompt_len: columns of the (left-padded) prompt in ``input_ids``.
        stop: stop strings (empty ones ignored).
    """

    def __init__(self, tok: Any, prompt_len: int, stop: Sequence[str]) -> None:
        self.tok, self.prompt_len, self.stop = tok, prompt_len, [s for s in stop if s]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """``input_ids: (batch, prompt_len + new)`` -> ``(batch,)`` bool, True = stop this row."""
        texts = self.tok.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=False)
        done = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.no_grad()
def _generate_batch(
    model: Any, tok: Any, texts: list[str], max_new_tokens: int, stop: Sequence[str]
) -> list[str]:
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)  # (batch, prompt_len), left-padded
    attention = enc["attention_mask"].to(device)  # (batch, prompt_len)
    kwargs: dict[str, Any] = {}
    stop_strings = [s for s in stop if s and s != tok.eos_token]
    if stop_strings:
        from transformers import StoppingCriteriaList

        criterion = NewTextStop(tok, input_ids.shape[1], stop_strings)
        kwargs["stopping_criteria"] = StoppingCriteriaList([criterion])
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
        **kwargs,
    )  # (batch, prompt_len + new)
    new = out[:, input_ids.shape[1] :]
    decoded = tok.batch_decode(new, skip_special_tokens=True)
    return [truncate_at_stop(t, stop) for t in decoded]


def generate(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    *,
    render: bool = True,
    progress: bool = True,
) -> list[str]:
    """Greedy-decode a continuation for each prompt.

    Args:
        model: any HF causal LM (``model.generate``), base, PEFT or MoRE-injected.
        tok: its tokenizer; padding is set to the left for the duration of the call.
        prompts: user turns (``render=True``, chat template applied) or final model inputs.
        max_new_tokens: cap on generated tokens per prompt.
        stop: strings that end a generation; the output is cut before the first one.
        batch_size: prompts decoded together (left padding, KV cache).
        render: apply :func:`render_prompt` to each prompt.
        progress: show a tqdm bar.

    Returns:
        One decoded continuation per prompt, in input order, special tokens removed.
    """
    from tqdm.auto import tqdm

    texts = [render_prompt(tok, p) if render else p for p in prompts]
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    results: list[str] = [""] * len(texts)
    old_side = tok.padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    try:
        with tqdm(total=len(texts), desc="generate", unit="ex", disable=not progress) as bar:
            for idx in _batches(order, max(1, batch_size)):
                outs = _generate_batch(model, tok, [texts[i] for i in idx], max_new_tokens, stop)
                for i, o in zip(idx, outs, strict=False):
                    results[i] = o
                bar.update(len(idx))
    finally:
        tok.padding_side = old_side
    return results
