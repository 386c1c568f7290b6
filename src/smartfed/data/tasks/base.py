"""The ``Task`` contract, data-folder resolution and strict line-numbered file readers.

A task names its train and eval sources (files in a data folder, see docs/data.md, upstream file
names), how a row becomes an :class:`~smartfed.data.example.Example`, how an answer is extracted
from
a model output and how it is scored.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from smartfed.data.example import Example
from smartfed.errors import DataError

DATA_ENV = "SMARTFED_DATA"
"""Environment variable naming the data folder when ``--data_dir`` is not given."""

DEFAULT_DATA_DIR = "data"
"""[D] Last resort: ``./data`` in the current working directory."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder: ``data_dir`` if given, else ``$SMARTFED_DATA``, else ``./data``.

    The order is explicit and documented (docs/data.md); there is no hidden machine-specific
    default.
    """
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "")
    return Path(env).expanduser() if env else Path(DEFAULT_DATA_DIR)


def require_file(data_dir: str | os.PathLike[str] | None, rel: str, task: str) -> Path:
    """Return ``<data_dir>/<rel>`` or raise a DataError saying what to put where.

    Raises:
        DataError: the file does not exist.
    """
    root = resolve_data_dir(data_dir)
    path = root / rel
    if not path.is_file():
        raise DataError(
            f"task {task!r} needs {path} (upstream file {Path(rel).name}) which does not exist: "
            f"put it at <data_dir>/{rel} and pass --data_dir <data_dir> (or set ${DATA_ENV}); "
            "see docs/data.md for where each file comes from"
        )
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-empty line of a JSONL file.

    Raises:
        DataError: a line that is not a JSON object (names file and line).
    """
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: invalid JSON ({err.msg}); fix or remove the line"
                ) from err
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def read_json_array(path: Path) -> list[dict[str, Any]]:
    """Read a JSON file holding an array of objects.

    Raises:
        DataError: invalid JSON or not an array of objects (names file and element/line).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); fix the file") from err
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: element {i}: expected an object, got {type(obj).__name__}")
    return data


def read_tsv(path: Path, columns: int) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for a header-less TSV (no quoting, as MGSM is written).

    Raises:
        DataError: a line with a different number of columns.
    """
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row:
                continue
            if len(row) != columns:
                raise DataError(
                    f"{path}:{lineno}: expected {columns} tab-separated columns, got {len(row)}"
                )
            yield lineno, row


def field(obj: dict[str, Any], key: str, path: Path, lineno: int | str, kind: type = str) -> Any:
    """Return ``obj[key]`` checked to be of ``kind``.

    Raises:
        DataError: missing key or wrong type (names file, line and field).
    """
    if key not in obj:
        raise DataError(f"{path}:{lineno}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(
            f"{path}:{lineno}: field {key!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


class Task:
    """A benchmark or a training skill set. Subclasses override the loaders and the scorer.

    Attributes:
        name: registry key (``mgsm_zh``, ``gsm_hard``, ...).
        description: one line for ``--help`` and docs.
        metric: ``accuracy`` | ``execution_accuracy`` | ``pass@1`` | ``none`` (train-only skill
        sets).
        label_key: ``Example.meta`` key holding a coarse category for Dirichlet partitioning.
        stop: strings at which a generation is cut (the first occurrence and everything after it).
        max_new_tokens: default generation budget [D].
        num_shots: few-shot exemplars baked into each eval prompt (0 = zero-shot).
    """

    name: str = ""
    description: str = ""
    metric: str = "accuracy"
    label_key: str = "category"
    stop: Sequence[str] = ()
    max_new_tokens: int = 256
    num_shots: int = 0

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Return the training split.

        Raises:
            DataError: the task has no training split, or a file is missing/malformed.
        """
        raise DataError(
            f"task {self.name!r} has no training split; train on another task (see docs/data.md)"
        )

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Return the evaluation split (prompts include any few-shot exemplars).

        Raises:
            DataError: the task has no eval split, or a file is missing/malformed.
        """
        raise DataError(
            f"task {self.name!r} has no eval split (it is a training skill set); "
            "evaluate on a benchmark task"
        )

    def validation_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Return the validation split (tuning only; keys disjoint from train and eval), or [].

        The default is ``[]``: a task without a validation split (only the generated cpu-mini
        tasks have one).
        """
        return []

    def extract(self, prediction: str, example: Example) -> str | None:
        """Return the answer extracted from a model output, or None when there is none."""
        return prediction

    def score(self, prediction: str, example: Example) -> bool | float:
        """Return whether ``prediction`` is correct for ``example`` (1.0/0.0 or a fraction)."""
        raise NotImplementedError(f"task {self.name!r} has no scorer")

    def judge(self, prediction: str, example: Example) -> tuple[str | None, bool | float]:
        """Return ``(extracted answer, score)`` in one pass (code tasks run the sandbox once)."""
        return self.extract(prediction, example), self.score(prediction, example)

    def __repr__(self) -> str:
        return f"<Task {self.name} metric={self.metric}>"
