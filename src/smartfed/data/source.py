"""Where a run's training and evaluation rows come from: a registered task or a local file.

``--dataset`` names a registered task or a local JSON/JSONL file (Alpaca fields
``instruction``/``input``/``output`` or chat ``messages``); without it, ``--task`` is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartfed.config import RunConfig
from smartfed.data.example import Example
from smartfed.errors import ConfigError, DataError

LOCAL_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class TrainingData:
    """The training rows of a run and the column the Dirichlet partitioner splits on.

    Attributes:
        examples: training rows in file order.
        label_key: ``Example.meta`` key used as the label ("" = none).
        source: the task name or file path (for logs and the run record).
    """

    examples: list[Example]
    label_key: str
    source: str


def load_training_data(cfg: RunConfig) -> TrainingData:
    """Load the training rows named by ``--dataset`` (task or file) or ``--task``.

    Raises:
        ConfigError: neither ``--dataset`` nor ``--task`` given.
        DataError: a missing/malformed file or an unknown task.
    """
    source = cfg.data.dataset or cfg.data.task
    if not source:
        raise ConfigError("no training data: pass --dataset FILE.jsonl or --task NAME")
    if source.endswith(LOCAL_SUFFIXES) or Path(source).is_file():
        examples = read_local_file(Path(source))
        label_key = cfg.fed.partition_by
    else:
        task = _get_task(source)
        examples = list(task.train_examples(cfg.data.data_dir or None))
        label_key = cfg.fed.partition_by or str(getattr(task, "label_key", "") or "")
    if cfg.data.max_train_examples:
        examples = examples[: cfg.data.max_train_examples]
    return TrainingData(examples, label_key, source)


def labels_of(data: TrainingData) -> list[str]:
    """One label string per row (``""`` everywhere when there is no label column)."""
    return [str(ex.meta.get(data.label_key, "")) if data.label_key else "" for ex in data.examples]


def _get_task(name: str) -> Any:
    try:
        from smartfed.data.tasks import get_task
    except ImportError as err:  # the task registry is a separate component
        raise DataError(
            f"task {name!r}: the task registry is not installed; pass --dataset FILE"
        ) from err
    return get_task(name)


def read_local_file(path: Path) -> list[Example]:
    """Read Alpaca-style (``instruction``/``input``/``output``) or chat (``messages``) rows.

    Raises:
        DataError: missing file, invalid JSON, or a row with neither layout (file and line named).
    """
    if not path.is_file():
        raise DataError(f"--dataset {path} does not exist; pass a JSON/JSONL file or a task name")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [
                (i, json.loads(line)) for i, line in enumerate(text.splitlines(), 1) if line.strip()
            ]
        else:
            rows = list(enumerate(json.loads(text), 1))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: invalid JSON ({err.msg} at line {err.lineno}); fix the file"
        ) from err
    examples = [_row_to_example(obj, path, i) for i, obj in rows]
    if not examples:
        raise DataError(f"{path} has no rows")
    return examples


def _row_to_example(obj: Any, path: Path, lineno: int) -> Example:
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        msgs = obj["messages"]
        user = [
            m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"
        ]
        bot = [
            m.get("content", "")
            for m in msgs
            if isinstance(m, dict) and m.get("role") == "assistant"
        ]
        if user and bot:
            return Example(prompt=str(user[0]), response=str(bot[-1]), meta=_meta(obj))
    if isinstance(obj, dict) and isinstance(obj.get("instruction"), str) and "output" in obj:
        prompt = obj["instruction"] + (f"\n\n{obj['input']}" if obj.get("input") else "")
        return Example(prompt=prompt, response=str(obj["output"]), meta=_meta(obj))
    raise DataError(
        f"{path}:{lineno}: row needs instruction/input/output or messages (user + assistant)"
    )


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    skip = {"messages", "instruction", "input", "output"}
    return {k: v for k, v in obj.items() if k not in skip and isinstance(v, str | int | float)}
