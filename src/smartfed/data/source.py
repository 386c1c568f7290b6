"""Where a run's training rows come from: a registered task, a local file or a hub dataset.

``--dataset`` (``smartfed train`` and ``smartfed pool train`` alike) names one of:

* a local ``.json`` / ``.jsonl`` / ``.parquet`` file (rows as in :mod:`smartfed.data.local`);
* a registered task (``smartfed eval --help`` lists them);
* a Hugging Face hub dataset id ``owner/name`` (optionally ``owner/name:split``, default
  ``train``), read with the ``datasets`` library when the hub is reachable (not in offline mode).

Without ``--dataset``, ``--task`` is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from smartfed.config import RunConfig
from smartfed.data.example import Example
from smartfed.data.local import LAYOUTS, is_local_file, load_local_examples, rows_to_examples
from smartfed.errors import ConfigError, DataError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<split>[\w.\[\]%:-]+))?$")
"""``owner/name`` or ``owner/name:split`` (split syntax of ``datasets``, e.g. ``train[:10%]``)."""


@dataclass(frozen=True)
class TrainingData:
    """The training rows of a run and the column the Dirichlet partitioner splits on.

    Attributes:
        examples: training rows in file order.
        label_key: ``Example.meta`` key used as the label ("" = none).
        source: the task name, file path or hub id (for logs and the run record).
    """

    examples: list[Example]
    label_key: str
    source: str


def load_training_data(cfg: RunConfig) -> TrainingData:
    """Load the training rows named by ``--dataset`` (file, task or hub id) or ``--task``.

    Raises:
        ConfigError: neither ``--dataset`` nor ``--task`` given.
        DataError: a missing/malformed file, an unknown task or an unreachable hub dataset.
    """
    source = cfg.data.dataset or cfg.data.task
    if not source:
        raise ConfigError("no training data: pass --dataset FILE.jsonl or --task NAME")
    examples, task_label = load_examples(source, cfg.data.data_dir)
    if cfg.data.max_train_examples:
        examples = examples[: cfg.data.max_train_examples]
    by = cfg.fed.partition_by
    if by and examples and not any(by in ex.meta for ex in examples):
        have = sorted({k for ex in examples[:100] for k in ex.meta})
        raise DataError(
            f"--partition_by {by!r}: no row of {source} has that column; choose one of {have}"
        )
    return TrainingData(examples, by or task_label, source)


def load_examples(source: str, data_dir: str = "") -> tuple[list[Example], str]:
    """The training rows of ``source`` and its default label column ("" for files and hub ids).

    Raises:
        DataError: a missing/malformed file, an unknown task or an unreachable hub dataset.
    """
    if is_local_file(source):
        return load_local_examples(source), ""
    task = _find_task(source)
    if task is not None:
        return list(task.train_examples(data_dir or None)), str(getattr(task, "label_key", ""))
    match = HUB_ID.match(source)
    if match:
        return load_hub_examples(match["repo"], match["split"] or "train"), ""
    raise DataError(
        f"--dataset {source!r}: unknown task, and not a data file or a hub id owner/name; "
        "`smartfed eval --help` lists the tasks"
    )


def load_hub_examples(repo: str, split: str = "train") -> list[Example]:
    """Read a hub dataset split with the ``datasets`` library (rows in one of the layouts).

    Raises:
        DataError: offline mode, the hub unreachable, or the dataset/split missing.
    """
    if os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_HUB_OFFLINE", "0"
    ).lower() in ("1", "true", "yes"):
        raise DataError(
            f"--dataset {repo}: hub datasets are off (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set); "
            "unset it, or save the rows to a .jsonl file and pass that (docs/data.md)"
        )
    import datasets

    try:
        ds = datasets.load_dataset(repo, split=split)
    except Exception as err:  # network, missing repo or split: datasets raises many types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"--dataset {repo}:{split}: cannot load it from the hub ({first}); "
            "check the id and split, or pass a local file (docs/data.md)"
        ) from err
    rows: list[dict[str, Any]] = list(ds)
    try:
        return rows_to_examples(rows, f"{repo}:{split}")
    except DataError as err:
        raise DataError(f"{err} (rows must have {LAYOUTS})") from err


def labels_of(data: TrainingData) -> list[str]:
    """One label string per row (``""`` everywhere when there is no label column)."""
    return [str(ex.meta.get(data.label_key, "")) if data.label_key else "" for ex in data.examples]


def _find_task(name: str) -> Any:
    """The registered task called ``name``, else None."""
    from smartfed.data.tasks import get_task, list_tasks

    if name not in list_tasks():
        return None
    return get_task(name)
