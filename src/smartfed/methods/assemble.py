"""The composition root: base model + LoRA pool + method, and the run's training rows.

Every place that needs "the model a run trains" builds it here: the federated runtime's cached
bundle (:func:`smartfed.fed.cache.get_bundle`, behind ``smartfed train``, the ClientApp and the
ServerApp), ``smartfed export`` (:mod:`smartfed.io.export`) and ``smartfed eval --run``
(:mod:`smartfed.eval.models`). One function means one loading order and one seeding: the same
config gives the same routers (and the same data split) everywhere [D].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smartfed.data.partition import Split, split_rows
from smartfed.data.source import TrainingData, labels_of, load_training_data
from smartfed.methods.base import Method, get_method
from smartfed.model.base import load_base_model
from smartfed.pool.pool import LoraPool, resolve_pool

if TYPE_CHECKING:
    from torch import nn

    from smartfed.config import ModelConfig, RunConfig


@dataclass
class Assembled:
    """A base model prepared by a run's method over the run's pool.

    Attributes:
        model: the base model, modified in place by ``method.prepare`` (frozen apart from what
            ``method.trainable_parameters`` returns).
        tokenizer: the base model's tokenizer.
        pool: the resolved LoRA pool.
        method: the registered method named by ``train.method``.
        experts_per_matrix: M_m per routed matrix, as ``method.prepare`` returned it (empty for
            methods without routed matrices).
    """

    model: nn.Module
    tokenizer: Any
    pool: LoraPool
    method: Method
    experts_per_matrix: dict[str, int]


def apply_method(model: nn.Module, cfg: RunConfig) -> tuple[LoraPool, Method, dict[str, int]]:
    """Resolve ``cfg``'s pool and let ``cfg``'s method prepare ``model`` (in place).

    Routers (and any other seeded init) are drawn from ``cfg.train.seed``.

    Returns:
        ``(pool, method, experts_per_matrix)``.

    Raises:
        ConfigError / AdapterFileError / PoolCompatibilityError: unknown method, unusable pool.
    """
    method = get_method(cfg.train.method)
    pool = resolve_pool(cfg.pool.sources, cfg.pool.registry)
    experts = method.prepare(model, pool, cfg)
    return pool, method, experts


def assemble(cfg: RunConfig, model_cfg: ModelConfig | None = None) -> Assembled:
    """Load the base model and apply the run's method over its pool.

    Args:
        cfg: the run config (method, pool, router, seed).
        model_cfg: how to load the base model; default ``cfg.model`` (export and eval load the
            run's model in another dtype or on another device).

    Raises:
        SmartFedError: any model / pool / method problem (see the loaders).
    """
    model, tok = load_base_model(model_cfg or cfg.model)
    pool, method, experts = apply_method(model, cfg)
    return Assembled(model, tok, pool, method, experts)


def training_split(cfg: RunConfig) -> tuple[TrainingData, Split]:
    """The run's training rows and their seeded split: ``eval.heldout_examples`` held out, the
    rest subsampled (``fed.data_fraction``) and partitioned over ``fed.num_clients``.

    Raises:
        ConfigError / DataError: no or unreadable data, too few rows for the clients.
    """
    data = load_training_data(cfg)
    split = split_rows(labels_of(data), cfg.fed, cfg.train.seed, heldout=cfg.eval.heldout_examples)
    return data, split
