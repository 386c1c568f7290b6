"""Teacher-forced exact match and response loss: per-round accuracy at the cost of one forward.

For a task with one canonical output, greedy decoding reproduces the target exactly iff, fed the
target's own prefix, the model's argmax equals the target token at every response position, the
end-of-turn token (EOS) included: greedy's prefix is the target's prefix up to the first
disagreement, so both criteria fail at the same position [D]. One forward pass over
``prompt + response + EOS`` therefore gives the exact match that greedy generation would give
(token for token), and the same logits give the loss on the eval distribution.

Only the response positions go through the LM head (the decoder body runs on the whole row, the
``(n_response, vocab)`` logits are formed for the positions whose next token is a response token),
as in :func:`smartfed.train.local.response_loss`.

This is *token-sequence* exact match with the canonical response: a task scorer that accepts other
outputs (another program printing the same value, a differently worded answer) can only score
higher. Benchmarks say which metric is which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from smartfed.config import EvalConfig
from smartfed.data.example import Example
from smartfed.data.formatting import IGNORE_INDEX, EncodedExample, collate, encode_for_training
from smartfed.data.tasks import get_task
from smartfed.errors import ConfigError


@dataclass(frozen=True)
class TeacherForced:
    """Result of :func:`teacher_forced_eval` over a set of encoded rows.

    Attributes:
        exact: per row, whether the argmax equals the target at every response position.
        loss_sum: summed next-token cross-entropy over every response token (nats).
        tokens: number of response tokens.
    """

    exact: list[bool]
    loss_sum: float
    tokens: int

    @property
    def em(self) -> float:
        """Fraction of rows reproduced exactly (NaN without rows)."""
        return sum(self.exact) / len(self.exact) if self.exact else float("nan")

    @property
    def loss(self) -> float:
        """Token-weighted mean response loss (NaN without response tokens)."""
        return self.loss_sum / self.tokens if self.tokens else float("nan")


@torch.no_grad()
def teacher_forced_batch(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact match and loss of one right-padded batch.

    Args:
        model: a Hugging Face causal LM (``get_decoder()`` + ``get_output_embeddings()``).
        batch: ``input_ids`` / ``attention_mask`` / ``labels``, each ``(batch, seq)``; labels are
            ``IGNORE_INDEX`` outside the response.

    Returns:
        ``exact`` ``(batch,)`` bool (a row without response tokens counts as not exact),
        summed loss (scalar float32) and the number of response tokens.
    """
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (batch, seq, d)
    targets = batch["labels"][:, 1:]  # (batch, seq - 1): token predicted at each position
    keep = targets != IGNORE_INDEX  # (batch, seq - 1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (n_resp, vocab)
    gold = targets[keep]  # (n_resp,)
    loss = torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
    hit = logits.argmax(dim=-1) == gold  # (n_resp,)
    row = keep.nonzero()[:, 0]  # (n_resp,): which row each response position belongs to
    misses = torch.zeros(keep.shape[0], dtype=torch.long, device=hit.device)
    misses.index_add_(0, row, (~hit).long())
    exact = (misses == 0) & keep.any(dim=1)
    return exact, loss, int(keep.sum())


def teacher_forced_eval(
    model: nn.Module, rows: Sequence[EncodedExample], batch_size: int, pad_id: int
) -> TeacherForced:
    """Teacher-forced exact match and response loss of ``rows`` (fixed order, right padding).

    Args:
        model: any HF causal LM, base, PEFT or MoRE-injected (its current routing / quotas).
        rows: encoded ``prompt + response + EOS`` rows
            (:func:`smartfed.data.formatting.encode_for_training`).
        batch_size: rows per forward.
        pad_id: the tokenizer's pad id.
    """
    exact: list[bool] = []
    loss_sum, tokens = 0.0, 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[i : i + batch_size], pad_id).items()}
            ex, loss, n = teacher_forced_batch(model, batch)
            exact += [bool(x) for x in ex.tolist()]
            if n:
                loss_sum += float(loss)
                tokens += n
    finally:
        model.train(was_training)
    if not math.isfinite(loss_sum):
        loss_sum = float("nan")
    return TeacherForced(exact, loss_sum, tokens)


EVAL_MAX_LEN = 1024
"""[D] Token cap of an encoded eval row: long enough that no cpu-mini prompt is cut (greedy
generation sees the whole prompt too)."""


def split_rows(task: Any, split: str, limit: int, data_dir: str | None) -> list[Example]:
    """The first ``limit`` rows of a task's ``eval`` or ``val`` split (all when ``limit`` is 0).

    Raises:
        ConfigError: ``val`` asked of a task without a validation split.
    """
    rows = task.eval_examples(data_dir) if split == "eval" else task.validation_examples(data_dir)
    if split == "val" and not rows:
        raise ConfigError(
            f"--val_examples: task {task.name!r} has no validation split; set --val_examples 0"
        )
    return rows[:limit] if limit > 0 else rows


def round_metrics(
    model: nn.Module,
    tok: Any,
    eval_cfg: EvalConfig,
    task_name: str,
    data_dir: str | None,
    *,
    final: bool,
    rnd: int,
    cache: dict[str, list[EncodedExample]],
) -> dict[str, Any]:
    """The server's teacher-forced metrics of one round (``eval_tf_*`` / ``val_tf_*`` keys).

    ``eval_tf_em`` / ``eval_tf_loss`` every ``tf_eval_every`` rounds and after the last round on
    the first ``eval_limit`` eval rows; ``val_tf_em`` / ``val_tf_loss`` after the last round on
    ``val_examples`` rows of the ``val`` split. ``cache`` keeps the encoded rows between rounds.
    """

    def encoded(split: str, limit: int) -> list[EncodedExample]:
        if split not in cache:
            examples = split_rows(get_task(task_name), split, limit, data_dir)
            cache[split] = [encode_for_training(tok, ex, EVAL_MAX_LEN) for ex in examples]
        return cache[split]

    if eval_cfg.val_examples > 0:
        encoded("val", eval_cfg.val_examples)  # a task without val rows fails at round 1
    every = eval_cfg.tf_eval_every
    todo: list[tuple[str, int]] = []
    if every > 0 and (final or rnd % every == 0):
        todo.append(("eval", eval_cfg.eval_limit))
    if final and eval_cfg.val_examples > 0:
        todo.append(("val", eval_cfg.val_examples))
    out: dict[str, Any] = {}
    for split, limit in todo:
        rows = encoded(split, limit)
        res = teacher_forced_eval(model, rows, eval_cfg.eval_batch_size, tok.pad_token_id)
        out |= {
            f"{split}_tf_em": res.em,
            f"{split}_tf_loss": res.loss,
            f"{split}_tf_n": len(res.exact),
        }
    return out
