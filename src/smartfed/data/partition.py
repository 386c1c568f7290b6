"""Split training rows over clients with flwr-datasets partitioners (IID or Dirichlet), seeded.

The rows never leave the process: an in-memory ``datasets.Dataset`` holding only the row index and
the label column is handed to the partitioner (``partitioner.dataset = ds``), so no hub is needed.
Order of operations [D]: hold out ``heldout`` rows (server-side held-out loss), keep a
``data_fraction`` of the rest (the paper's 10 % data-efficiency runs), then partition.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from smartfed.config import FedConfig
from smartfed.errors import ConfigError, DataError

DIRICHLET_MIN_PARTITION = 1
"""[D] Smallest partition the Dirichlet partitioner must produce (every client can train)."""


@dataclass(frozen=True)
class Split:
    """Row indices of the held-out set and of every client's partition.

    Attributes:
        heldout: indices held out for the server's held-out loss.
        partitions: ``partitions[pid]`` = indices of client ``pid``'s rows.
    """

    heldout: list[int]
    partitions: list[list[int]]


def split_rows(labels: Sequence[str], fed: FedConfig, seed: int, heldout: int = 0) -> Split:
    """Hold out, subsample and partition ``len(labels)`` rows (all steps seeded by ``seed``).

    Args:
        labels: one label/category per row (only read by the Dirichlet partitioner).
        fed: ``num_clients``, ``partitioner``, ``dirichlet_alpha``, ``data_fraction``.
        seed: the run seed.
        heldout: rows held out before partitioning (capped at a quarter of the data).

    Returns:
        The split.

    Raises:
        DataError: fewer rows than clients, or a Dirichlet split leaving a client without rows.
    """
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    n_held = min(heldout, len(order) // 4)
    held, rest = sorted(order[:n_held]), order[n_held:]
    keep = max(fed.num_clients, round(len(rest) * fed.data_fraction))
    rest = sorted(rest[:keep])
    if len(rest) < fed.num_clients:
        raise DataError(
            f"{len(rest)} training rows for num_clients={fed.num_clients}; "
            "use more data or fewer clients"
        )
    parts = partition_indices([labels[i] for i in rest], fed, seed)
    return Split(held, [[rest[j] for j in part] for part in parts])


def partition_indices(labels: Sequence[str], fed: FedConfig, seed: int) -> list[list[int]]:
    """Return ``num_clients`` lists of positions into ``labels`` (sorted, disjoint, covering).

    IID: the rows are shuffled with ``seed`` and cut into equal contiguous shards
    (``IidPartitioner``). Dirichlet: ``DirichletPartitioner(partition_by="label", alpha, seed)``.

    Raises:
        ConfigError: unknown partitioner.
        DataError: the Dirichlet sampler could not give every client a row.
    """
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    ds = datasets.Dataset.from_dict({"row": list(range(len(labels))), "label": list(labels)})
    if fed.partitioner == "iid":
        partitioner = IidPartitioner(num_partitions=fed.num_clients)
        ds = ds.shuffle(seed=seed)
    elif fed.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=fed.num_clients,
            partition_by="label",
            alpha=fed.dirichlet_alpha,
            min_partition_size=DIRICHLET_MIN_PARTITION,
            seed=seed,
        )
    else:  # pragma: no cover - FedConfig validates the name
        raise ConfigError(f"partitioner={fed.partitioner!r}: choose iid or dirichlet")
    partitioner.dataset = ds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return [sorted(partitioner.load_partition(p)["row"]) for p in range(fed.num_clients)]
    except ValueError as err:
        raise DataError(
            f"Dirichlet partitioning of {len(labels)} rows over {fed.num_clients} clients failed "
            f"({err}); raise --dirichlet_alpha or lower --num_clients"
        ) from err
