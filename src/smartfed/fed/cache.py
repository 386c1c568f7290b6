"""The one process-level cache: frozen base model + MoRE experts + this process's data rows.

Clients (and the server, for held-out loss) keep the frozen base and the expert banks across rounds
[P: "clients cache experts"]; only routers and quotas change per round. The cache is one
``functools.cache``d function keyed by an immutable :class:`BundleSpec`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any

from smartfed.config import DataConfig, FedConfig, ModelConfig, PoolConfig, RunConfig
from smartfed.fed.accounting import EnergyMeter
from smartfed.log import get_logger

log = get_logger(__name__)


NOT_IN_BUNDLE: frozenset[str] = frozenset(
    {
        # The server's schedule, sampling, robustness and privacy: read from the run config each
        # round by the strategy, never by the loaders.
        "fed.sample_clients",
        "fed.num_rounds",
        "fed.min_replies",
        "fed.round_timeout_s",
        "fed.engine",
        "fed.max_update_norm",
        "fed.dp_noise_multiplier",
        "fed.dp_clipping_norm",
        "fed.aggregation",
        "fed.trim_fraction",
        # Transport and placement of the clients.
        "fed.client_cpus",
        "fed.client_gpus",
        "fed.superlink",
        "fed.root_certificates",
        "fed.wire_dtype",
        "fed.wire_delta",
        "fed.wire_error_feedback",
        # Local optimisation: ``client_round`` takes these from the run config of each message.
        "train.local_steps",
        "train.batch_size",
        "train.learning_rate",
        "train.weight_decay",
        "train.max_grad_norm",
        "train.gradient_checkpointing",
        "train.loss_chunk_tokens",
        "train.report_to",
        # LoRAHub's search: the server hands the full config to ``configure_search``.
        "train.lorahub_budget",
        "train.lorahub_l1",
        # EEQA: the server's quota schedule.
        "quota.enable_eeqa",
        "quota.total_budget",
        "quota.k_min",
        "quota.k_max",
        "quota.eeqa_warmup_rounds",
        # What is evaluated and when (the held-out rows, ``eval.heldout_examples``, are in it).
        "eval.eval_task",
        "eval.eval_every",
        "eval.eval_limit",
        "eval.max_new_tokens",
        "eval.eval_batch_size",
        "eval.tf_eval_every",
        "eval.val_examples",
        # Where the run writes.
        "output_dir",
        "resume",
    }
)
"""Config fields (flat keys) that do not change the cached model, pool, method or data [D].

Every other field of :class:`~smartfed.config.RunConfig` is part of :class:`BundleSpec` by
construction, so a new config field changes the cache key (and the worker key,
:mod:`smartfed.fed.worker_key`) unless it is added here; a test checks both directions."""

_NEUTRAL = RunConfig(fed=FedConfig(num_clients=1, sample_clients=1, min_replies=1))
"""The values the excluded fields take in a spec (valid for every ``num_clients``)."""


@dataclass(frozen=True)
class BundleSpec:
    """Everything that determines the cached model and data rows (hashable).

    Attributes:
        config: the run config with every :data:`NOT_IN_BUNDLE` field at its neutral value, so
            two runs that differ only there share one bundle.
    """

    config: RunConfig

    @classmethod
    def from_config(cls, cfg: RunConfig, dataset: str = "") -> BundleSpec:
        """The spec of ``cfg``; ``dataset`` overrides ``--dataset`` (a SuperNode's own file)."""
        kept = {k: v for k, v in cfg.to_flat().items() if k not in NOT_IN_BUNDLE}
        if dataset:  # a node with its own file trains on all of it (one partition, none held out)
            kept.update({"data.dataset": dataset, "fed.num_clients": 1, "eval.heldout_examples": 0})
        return cls(RunConfig.from_flat(kept, base=_NEUTRAL))

    @property
    def model(self) -> ModelConfig:
        """The base model's config."""
        return self.config.model

    @property
    def pool(self) -> PoolConfig:
        """The pool's config."""
        return self.config.pool

    @property
    def data(self) -> DataConfig:
        """The training data's config (a node's own ``dataset`` applied)."""
        return self.config.data

    def run_config(self) -> RunConfig:
        """The RunConfig the loaders get (excluded fields at their neutral values)."""
        return self.config

    def resolved(self) -> BundleSpec:
        """This spec with ``model.dtype`` concrete (``auto`` resolved for ``model.device`` on this
        machine; the spec itself when it already is). Imports torch only for ``auto``."""
        if self.model.dtype != "auto":
            return self
        from smartfed.model.dtype import resolve_model_config

        model = resolve_model_config(self.model)
        return BundleSpec(dataclasses.replace(self.config, model=model))


@dataclass
class Bundle:
    """A loaded MoRE model with its data split; partitions are encoded on first use."""

    spec: BundleSpec
    model: Any
    tokenizer: Any
    pool: Any
    method: Any
    experts_per_matrix: dict[str, int]
    split: Any
    data: Any
    meter: EnergyMeter | None
    load_s: float
    initial_state: dict[str, Any] = field(default_factory=dict)
    """The method's trainable state right after ``prepare`` (seeded init; the model itself is
    reused across runs in one process, so round 1 must not start from whatever it holds now)."""
    _encoded: dict[int, list[Any]] = field(default_factory=dict)

    def rows(self, indices: list[int]) -> list[Any]:
        """Encode the given training rows (prompt masked, ``max_seq_len`` tokens)."""
        from smartfed.data.formatting import encode_for_training

        n = self.spec.model.max_seq_len
        return [encode_for_training(self.tokenizer, self.data.examples[i], n) for i in indices]

    def partition(self, pid: int) -> list[Any]:
        """Client ``pid``'s encoded rows (cached)."""
        if pid not in self._encoded:
            self._encoded[pid] = self.rows(self.split.partitions[pid])
        return self._encoded[pid]

    def heldout(self) -> list[Any]:
        """The held-out encoded rows (cached under key -1)."""
        if -1 not in self._encoded:
            self._encoded[-1] = self.rows(self.split.heldout)
        return self._encoded[-1]


def get_bundle(spec: BundleSpec) -> Bundle:
    """Load (once per process) the base model, the pool, the method's layers and the data split.

    The cache is keyed by the spec with a concrete ``model.dtype`` (:meth:`BundleSpec.resolved`):
    a run resolved ``auto`` already (``smartfed train``, the ``flwr run`` ServerApp); a bare
    ``flwr run`` ClientApp resolves it here, for its own device. The torch-free worker key of
    such a node (:mod:`smartfed.fed.worker_key`) holds ``auto`` itself, which on one node with
    one ``CUDA_VISIBLE_DEVICES`` (in that key) always resolves the same.

    Raises:
        SmartFedError: any model/pool/data problem (see the loaders).
    """
    return _load_bundle(spec.resolved())


@functools.cache
def _load_bundle(spec: BundleSpec) -> Bundle:
    """:func:`get_bundle` of a spec whose dtype is concrete (the cached function)."""
    from smartfed.methods.assemble import assemble, training_split  # torch: not for the key

    t0 = time.perf_counter()
    cfg = spec.run_config()
    built = assemble(cfg)
    data, split = training_split(cfg)
    f = cfg.fed
    meter = EnergyMeter(f.country_iso_code) if f.track_energy else None
    load_s = time.perf_counter() - t0
    log.info("bundle loaded in %.1f s (%d matrices)", load_s, len(built.experts_per_matrix))
    initial = {k: v.numpy().copy() for k, v in built.method.trainable_state(built.model).items()}
    return Bundle(
        spec,
        built.model,
        built.tokenizer,
        built.pool,
        built.method,
        built.experts_per_matrix,
        split,
        data,
        meter,
        load_s,
        initial,
    )
