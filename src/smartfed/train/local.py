"""Local training: one explicit AdamW loop over the method's trainable parameters.

Clients restart AdamW every round (optimizer state never travels), so a round depends only on the
global routers, the quotas, the partition and the seed: this is what makes ``--resume`` exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from smartfed.config import TrainConfig
from smartfed.data.formatting import IGNORE_INDEX, EncodedExample, collate
from smartfed.errors import ConfigError, DataError
from smartfed.log import get_logger
from smartfed.routing.balance import LoadBalance
from smartfed.train.memory import activation_checkpointing, chunked_lm_head_loss

log = get_logger(__name__)
LOSS_CHUNK_TOKENS = TrainConfig().loss_chunk_tokens


@dataclass
class TrainResult:
    """What one client's local training did.

    Attributes:
        steps: optimizer steps taken.
        loss: mean training loss over the steps.
        losses: loss per step.
        seconds: wall-clock time of the loop.
    """

    steps: int
    loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def round_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """The data-order generator of one client in one round (a pure function of its arguments)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + server_round) * 10_007 + partition_id)


def sample_batches(
    examples: Sequence[EncodedExample],
    batch_size: int,
    steps: int,
    pad_id: int,
    generator: torch.Generator,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``steps`` batches drawn without replacement, reshuffling once per pass [D].

    Yields:
        ``input_ids`` / ``attention_mask`` / ``labels``, each ``(min(batch_size, n), seq)``.

    Raises:
        DataError: no examples.
    """
    if not examples:
        raise DataError("this client's partition is empty; lower --num_clients or use more data")
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, len(examples)):
            order += torch.randperm(len(examples), generator=generator).tolist()
        take, order = order[:batch_size], order[batch_size:]
        yield collate([examples[i] for i in take], pad_id)


def response_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int = LOSS_CHUNK_TOKENS
) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens, projecting only those to the vocabulary.

    Same value as ``model(**batch).loss`` (HF shifts labels by one), but the ``(batch, seq, vocab)``
    logits are never formed: only the positions whose next token is a response token go through
    the LM head (SmolLM2: 49k vocab; this halves client memory at batch 16 x 256 tokens) [D], and
    those ``chunk_tokens`` at a time (:func:`smartfed.train.memory.chunked_lm_head_loss`).

    Args:
        model: a Hugging Face causal LM (``get_decoder()`` + ``get_output_embeddings()``).
        batch: ``input_ids`` / ``attention_mask`` / ``labels``, each ``(batch, seq)``.
        chunk_tokens: response positions per LM-head chunk; 0 = all at once
            (``train.loss_chunk_tokens``).

    Returns:
        A scalar float32 loss (NaN when the batch has no response token).
    """
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (batch, seq, d); no KV cache is built for a loss
    targets = batch["labels"][:, 1:]  # (batch, seq - 1)
    keep = targets != IGNORE_INDEX
    head = model.get_output_embeddings()  # weight: (vocab, d)
    return chunked_lm_head_loss(hidden[:, :-1][keep], head, targets[keep], chunk_tokens)


def local_train(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    params: list[nn.Parameter],
    train_cfg: TrainConfig,
    *,
    total: int | None = None,
    desc: str = "local steps",
    aux_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    load_balance_coef: float = 0.0,
) -> TrainResult:
    """Train ``params`` with a fresh AdamW on ``batches`` (one step per batch, response loss).

    The model stays in eval mode (no dropout, deterministic) [D]; only ``params`` get gradients.
    ``train_cfg.gradient_checkpointing`` and ``train_cfg.loss_chunk_tokens`` lower the memory of a
    step without changing the loss or the gradients (:mod:`smartfed.train.memory`).

    Args:
        model: a causal LM returning ``.loss`` when given ``labels``.
        batches: ``input_ids``/``attention_mask``/``labels`` dicts, each ``(batch, seq)``.
        params: the trainable parameters (e.g. router weights ``(M_m, d_in)``).
        train_cfg: learning rate, weight decay, gradient clipping and the memory options.
        total: number of batches (for the progress bar).
        desc: progress bar label.
        aux_loss: optional auxiliary loss of the batch (e.g. MoLE's gating balancing loss),
            called after the forward and added to the response loss before ``backward``; the
            reported losses stay the response loss alone.
        load_balance_coef: weight of the top-K routers' Switch balancing loss
            (``router.load_balance_coef``; 0 = off), see :func:`training_loss`.

    Returns:
        The step count and losses.

    Raises:
        DataError: a non-finite loss (diverged training or a corrupt batch).
        ConfigError: ``load_balance_coef > 0`` on a model without top-K routers.
    """
    balance = load_balance(model, load_balance_coef)
    opt = torch.optim.AdamW(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    device = params[0].device
    losses: list[float] = []
    start = time.perf_counter()
    with (
        activation_checkpointing(model, train_cfg.gradient_checkpointing),
        balance or nullcontext(),
    ):
        for batch in tqdm(batches, total=total, desc=desc, leave=False, mininterval=5.0):
            batch = {k: v.to(device) for k, v in batch.items()}
            objective, loss = training_loss(
                model, batch, balance, load_balance_coef, train_cfg.loss_chunk_tokens
            )
            if not torch.isfinite(loss):
                raise DataError(
                    f"local training loss is {loss.item()} at step {len(losses) + 1}; "
                    "lower --learning_rate"
                )
            opt.zero_grad(set_to_none=True)
            (objective if aux_loss is None else objective + aux_loss(batch)).backward()
            if train_cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    for p in params:
        p.grad = None
    mean = math.fsum(losses) / max(len(losses), 1)
    return TrainResult(len(losses), mean, losses, time.perf_counter() - start)


def load_balance(model: nn.Module, coef: float) -> LoadBalance | None:
    """The balancing-loss collector for ``coef > 0`` (``None`` when off).

    Raises:
        ConfigError: ``coef > 0`` but no MoRE layer has a top-K router (e.g. ``fedit``, ``mole``).
    """
    if coef <= 0:
        return None
    balance = LoadBalance(model)
    if balance.layers == 0:
        raise ConfigError(
            f"load_balance_coef={coef}: this method has no top-K router to balance (it applies "
            "to smartfed and smartfed_no_eeqa); set --load_balance_coef 0"
        )
    return balance


def training_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    balance: LoadBalance | None,
    coef: float,
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(objective, response loss)`` of one batch.

    ``objective = response loss + coef * L_balance`` (:mod:`smartfed.routing.balance`, Fedus et
    al. 2021) when ``balance`` is active and ``coef > 0``; otherwise the response loss itself.

    Args:
        model: the MoRE model (inside ``balance``'s context when given).
        batch: ``input_ids`` / ``attention_mask`` / ``labels``, each ``(batch, seq)``.
        balance: the entered :class:`LoadBalance` or ``None``.
        coef: ``router.load_balance_coef``.
        chunk_tokens: see :func:`response_loss`.
    """
    if balance is not None:
        balance.set_token_mask(batch["attention_mask"])
    loss = response_loss(model, batch, chunk_tokens)
    if balance is None:
        return loss, loss
    term = balance.pop()
    return (loss + coef * term.to(loss.dtype) if coef > 0 else loss), loss


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, examples: Sequence[EncodedExample], batch_size: int, pad_id: int
) -> float:
    """Token-weighted mean loss on ``examples`` (response tokens only), in fixed order."""
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if n == 0:
            continue
        total += float(response_loss(model, batch)) * n
        tokens += n
    return total / tokens if tokens else float("nan")
