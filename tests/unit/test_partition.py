"""Partitioning with flwr-datasets: disjoint, covering, seeded; Dirichlet skews labels."""

from __future__ import annotations

from collections import Counter

import pytest

from smartfed.config import FedConfig
from smartfed.data.partition import partition_indices, split_rows
from smartfed.errors import DataError

LABELS = [str(i % 4) for i in range(400)]


def _fed(**kw: object) -> FedConfig:
    return FedConfig(**{"num_clients": 5, "sample_clients": 2, **kw})  # type: ignore[arg-type]


def test_iid_is_a_seeded_equal_partition() -> None:
    parts = partition_indices(LABELS, _fed(), seed=0)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(400)) and {len(p) for p in parts} == {80}
    assert parts == partition_indices(LABELS, _fed(), seed=0)
    assert parts != partition_indices(LABELS, _fed(), seed=1)
    assert parts[0] != list(range(80))  # shuffled, not contiguous file order


def test_dirichlet_skews_labels_and_is_seeded() -> None:
    fed = _fed(partitioner="dirichlet", dirichlet_alpha=0.1)
    parts = partition_indices(LABELS, fed, seed=3)
    assert sorted(i for p in parts for i in p) == list(range(400))
    assert parts == partition_indices(LABELS, fed, seed=3)
    top_share = [max(Counter(LABELS[i] for i in p).values()) / len(p) for p in parts if p]
    assert max(top_share) > 0.6  # IID would give ~0.25 per label


def test_split_holds_out_then_subsamples() -> None:
    split = split_rows(LABELS, _fed(data_fraction=0.1), seed=0, heldout=20)
    used = [i for p in split.partitions for i in p]
    assert len(split.heldout) == 20 and not set(split.heldout) & set(used)
    assert len(used) == 38  # 10 % of the 380 remaining rows
    assert split == split_rows(LABELS, _fed(data_fraction=0.1), seed=0, heldout=20)


def test_too_few_rows_is_a_data_error() -> None:
    with pytest.raises(DataError, match="num_clients"):
        split_rows(LABELS[:3], _fed(), seed=0)
