"""One client's round, transport-free: load global routers and quotas, train, measure importance."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from smartfed.config import RunConfig
from smartfed.data.formatting import EncodedExample
from smartfed.methods.base import AuxiliaryLoss, LocalUpdate
from smartfed.model.state import set_quotas
from smartfed.quota.importance import ImportanceTracker
from smartfed.train.local import local_train, round_generator, sample_batches
from smartfed.update import ClientUpdate


def client_round(
    bundle: Any,
    examples: Sequence[EncodedExample],
    cfg: RunConfig,
    *,
    partition_id: int,
    server_round: int,
    routers: Mapping[str, torch.Tensor],
    quotas: Mapping[str, int],
    local_steps: int,
    batch_size: int,
    learning_rate: float,
) -> ClientUpdate:
    """Train the method's parameters of the cached model on one partition for one round.

    Args:
        bundle: the cached client bundle (``model``, ``tokenizer``, ``method``).
        examples: this partition's encoded rows.
        cfg: the run config (seed, weight decay, clipping).
        partition_id: this client's partition.
        server_round: the round being trained (seeds the data order with ``cfg.train.seed``).
        routers: global trainable state, key -> tensor.
        quotas: matrix -> K_m for this round.
        local_steps: optimizer steps [P: 10].
        batch_size: rows per step [P: 16].
        learning_rate: AdamW lr [P: 5e-4].

    Returns:
        The client's update.
    """
    model, method = bundle.model, bundle.method
    if isinstance(method, LocalUpdate):  # methods that do not train by SGD (merge, lorahub)
        return _local_update(
            bundle, examples, cfg, partition_id, server_round, routers, local_steps, batch_size
        )
    method.load_trainable_state(model, dict(routers))
    set_quotas(model, quotas)
    params = method.trainable_parameters(model)
    gen = round_generator(cfg.train.seed, server_round, partition_id)
    pad = bundle.tokenizer.pad_token_id
    batches = sample_batches(examples, batch_size, local_steps, pad, gen)
    train_cfg = replace(cfg.train, learning_rate=learning_rate)
    aux_loss = None
    if isinstance(method, AuxiliaryLoss):  # e.g. MoLE's gating balancing loss
        aux_loss = functools.partial(method.auxiliary_loss, model)
    importance: dict[str, list[float]] = {}
    usage: dict[str, list[int]] = {}
    if method.uses_eeqa and cfg.quota.enable_eeqa:
        with ImportanceTracker(model) as tracker:
            result = local_train(
                model,
                _masked(batches, tracker),
                params,
                train_cfg,
                total=local_steps,
                aux_loss=aux_loss,
                load_balance_coef=cfg.router.load_balance_coef,
            )
            importance, usage = tracker.scores(), tracker.usage()
    else:
        result = local_train(
            model,
            batches,
            params,
            train_cfg,
            total=local_steps,
            aux_loss=aux_loss,
            load_balance_coef=cfg.router.load_balance_coef,
        )
    state = method.trainable_state(model)
    return ClientUpdate(
        partition_id=partition_id,
        num_examples=len(examples),
        train_loss=result.loss,
        routers={k: v.numpy() for k, v in state.items()},
        importance=importance,
        usage=usage,
        steps=result.steps,
        train_s=result.seconds,
        step_losses=list(result.losses) if cfg.train.report_to != "none" else [],
    )


def _local_update(
    bundle: Any,
    examples: Sequence[EncodedExample],
    cfg: RunConfig,
    partition_id: int,
    server_round: int,
    payload: Mapping[str, torch.Tensor],
    local_steps: int,
    batch_size: int,
) -> ClientUpdate:
    """Call ``method.local_update(model, batches, cfg, payload) -> (state, {loss, steps})`` instead
    of SGD.

    Same seeded batches as training; ``payload`` is whatever the server sent (e.g. LoRAHub
    candidates).
    """
    gen = round_generator(cfg.train.seed, server_round, partition_id)
    batches = list(
        sample_batches(examples, batch_size, local_steps, bundle.tokenizer.pad_token_id, gen)
    )
    start = time.perf_counter()
    state, metrics = bundle.method.local_update(bundle.model, batches, cfg, dict(payload))
    return ClientUpdate(
        partition_id=partition_id,
        num_examples=len(examples),
        train_loss=float(metrics["loss"]),
        routers={k: v.numpy() for k, v in state.items()},
        steps=int(metrics.get("steps", 0)),
        train_s=time.perf_counter() - start,
    )


def _masked(
    batches: Iterator[dict[str, torch.Tensor]], tracker: Any
) -> Iterator[dict[str, torch.Tensor]]:
    """Tell the importance tracker which tokens are real (not padding) before each step."""
    for batch in batches:
        tracker.set_token_mask(batch["attention_mask"])
        yield batch
