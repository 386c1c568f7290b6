"""The one process-level cache: frozen base model + MoRE experts + this process's data rows.

Clients (and the server, for held-out loss) keep the frozen base and the expert banks across rounds
[P: "clients cache experts"]; only routers and quotas change per round. The cache is one
``functools.cache``d function keyed by an immutable :class:`BundleSpec`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

from smartfed.config import DataConfig, ModelConfig, PoolConfig, RouterConfig, RunConfig
from smartfed.fed.accounting import EnergyMeter
from smartfed.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class BundleSpec:
    """Everything that determines the cached model and data rows (hashable)."""

    model: ModelConfig
    pool: PoolConfig
    router: RouterConfig
    data: DataConfig
    method: str
    seed: int
    num_clients: int
    partitioner: str
    dirichlet_alpha: float
    partition_by: str
    data_fraction: float
    heldout: int
    track_energy: bool
    country_iso_code: str

    @classmethod
    def from_config(cls, cfg: RunConfig, dataset: str = "") -> BundleSpec:
        """The spec of ``cfg``; ``dataset`` overrides ``--dataset`` (a SuperNode's own file)."""
        data = cfg.data if not dataset else DataConfig(**{**cfg.data.__dict__, "dataset": dataset})
        f = cfg.fed
        # A node with its own file trains on all of it (one partition, nothing held out).
        clients, heldout = (1, 0) if dataset else (f.num_clients, cfg.eval.heldout_examples)
        return cls(
            cfg.model,
            cfg.pool,
            cfg.router,
            data,
            cfg.train.method,
            cfg.train.seed,
            clients,
            f.partitioner,
            f.dirichlet_alpha,
            f.partition_by,
            f.data_fraction,
            heldout,
            f.track_energy,
            f.country_iso_code,
        )

    def run_config(self) -> RunConfig:
        """A RunConfig carrying this spec's fields (for the loaders)."""
        from smartfed.config import FedConfig, TrainConfig

        fed = FedConfig(
            num_clients=self.num_clients,
            sample_clients=1,
            min_replies=1,
            partitioner=self.partitioner,  # type: ignore[arg-type]
            dirichlet_alpha=self.dirichlet_alpha,
            partition_by=self.partition_by,
            data_fraction=self.data_fraction,
        )
        return RunConfig(
            model=self.model,
            pool=self.pool,
            router=self.router,
            data=self.data,
            fed=fed,
            train=TrainConfig(method=self.method, seed=self.seed),
        )


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


@functools.cache
def get_bundle(spec: BundleSpec) -> Bundle:
    """Load (once per process) the base model, the pool, the method's layers and the data split.

    Raises:
        SmartFedError: any model/pool/data problem (see the loaders).
    """
    from smartfed.data.partition import split_rows
    from smartfed.data.source import labels_of, load_training_data
    from smartfed.methods import get_method
    from smartfed.model.base import load_base_model
    from smartfed.pool.pool import resolve_pool

    t0 = time.perf_counter()
    cfg = spec.run_config()
    method = get_method(spec.method)
    model, tok = load_base_model(spec.model)
    pool = resolve_pool(spec.pool.sources, spec.pool.registry)
    experts = method.prepare(model, pool, cfg)
    data = load_training_data(cfg)
    split = split_rows(labels_of(data), cfg.fed, spec.seed, heldout=spec.heldout)
    meter = EnergyMeter(spec.country_iso_code) if spec.track_energy else None
    load_s = time.perf_counter() - t0
    log.info("bundle loaded in %.1f s (%d matrices)", load_s, len(experts))
    initial = {k: v.numpy().copy() for k, v in method.trainable_state(model).items()}
    return Bundle(spec, model, tok, pool, method, experts, split, data, meter, load_s, initial)
