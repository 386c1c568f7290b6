"""One prompt format for training and evaluation, and loss-on-response tokenisation.

The model's own chat template is used when the tokenizer has one (SmolLM2: ChatML with its default
system message); otherwise an Alpaca-style instruction template [D]. Training and evaluation call
the
same :func:`render_prompt`, so a model is scored on exactly the format it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from smartfed.data.example import Example

IGNORE_INDEX = -100
"""Label value ignored by the cross-entropy loss (HF convention)."""

INSTRUCTION_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
"""[D] Template for tokenizers without a chat template."""


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response and labels that mask the prompt.

    Attributes:
        input_ids: (seq,) token ids.
        labels: (seq,) ``IGNORE_INDEX`` on prompt tokens, the token id on response tokens.
    """

    input_ids: list[int]
    labels: list[int]


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """Return the text the model sees before its answer (ends where generation starts)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text)
    return INSTRUCTION_TEMPLATE.format(prompt=prompt)


def response_suffix(tokenizer: Any) -> str:
    """Return the text that ends an assistant turn (the EOS token), appended to training targets."""
    return str(tokenizer.eos_token or "")


def encode_for_training(tokenizer: Any, example: Example, max_len: int) -> EncodedExample:
    """Tokenise one example with the loss on the response tokens only.

    Prompt and response are tokenised separately and concatenated, so the boundary is exact. When
    too long, the prompt is cut from the left (the response is what is learned) and the whole is
    capped at ``max_len`` tokens.
    """
    prompt_ids = tokenizer(render_prompt(tokenizer, example.prompt), add_special_tokens=False)[
        "input_ids"
    ]
    resp_ids = tokenizer(example.response + response_suffix(tokenizer), add_special_tokens=False)[
        "input_ids"
    ]
    resp_ids = resp_ids[:max_len]
    keep_prompt = max(0, max_len - len(resp_ids))
    prompt_ids = prompt_ids[-keep_prompt:] if keep_prompt else []
    return EncodedExample(
        input_ids=list(prompt_ids) + list(resp_ids),
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(resp_ids),
    )


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch.

    Returns:
        ``input_ids`` (batch, seq), ``attention_mask`` (batch, seq), ``labels`` (batch, seq).
    """
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
