"""Evaluate a model (or a file of predictions) on a registered task and write records + summary.

Records (one JSON object per example): ``index, id, prompt, output, extracted, gold, correct``.
Summary: ``task, metric, value, ci95, n, correct, model, adapter, run, limit, seconds, date`` plus
the
generation settings and a provenance block. Both files are written atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from smartfed.data.example import Example
from smartfed.data.tasks import Task, get_task, resolve_data_dir
from smartfed.errors import ConfigError, DataError
from smartfed.eval.generate import generate
from smartfed.eval.metrics import summarize
from smartfed.eval.models import load_for_eval
from smartfed.files import atomic_write_json, atomic_write_text
from smartfed.log import get_logger
from smartfed.meta import run_meta

log = get_logger(__name__)


def select_examples(task: Task, data_dir: str | Path | None, limit: int = 0) -> list[Example]:
    """The first ``limit`` eval examples of ``task`` (all when ``limit`` is 0), in file order."""
    examples = task.eval_examples(data_dir)
    return examples[:limit] if limit > 0 else examples


def load_predictions(path: str | Path) -> dict[int, str]:
    """Read ``{"index": int, "prediction": str}`` JSON lines.

    Raises:
        DataError: missing file, malformed line, missing/mistyped field or duplicate index
        (file:line).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"predictions file {p} does not exist; "
            'pass a JSONL file of {"index", "prediction"} lines'
        )
    out: dict[int, str] = {}
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p}:{lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected an object with 'index' and 'prediction'")
            idx, pred = obj.get("index"), obj.get("prediction")
            if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                raise DataError(
                    f"{p}:{lineno}: 'index' must be a non-negative integer, got {idx!r}"
                )
            if not isinstance(pred, str):
                raise DataError(
                    f"{p}:{lineno}: 'prediction' must be a string, got {type(pred).__name__}"
                )
            if idx in out:
                raise DataError(f"{p}:{lineno}: duplicate index {idx}")
            out[idx] = pred
    if not out:
        raise DataError(f"{p}: no predictions found")
    return out


def score_outputs(
    task: Task, examples: Sequence[Example], outputs: Sequence[str]
) -> list[dict[str, Any]]:
    """Score each output against its example; returns one record per example."""
    records = []
    for ex, out in tqdm(
        list(zip(examples, outputs, strict=True)),
        desc="score",
        unit="ex",
        disable=len(examples) < 20,
    ):
        extracted, correct = task.judge(out, ex)
        records.append(
            {
                "index": ex.meta.get("index"),
                "id": ex.meta.get("task_id", ex.meta.get("id", ex.meta.get("line"))),
                "prompt": ex.prompt,
                "output": out,
                "extracted": extracted,
                "gold": ex.answer,
                "correct": correct,
            }
        )
    return records


def score_prediction_file(
    task: Task, examples: Sequence[Example], predictions: dict[int, str]
) -> list[dict[str, Any]]:
    """Score a predictions file: exactly the examples whose index appears in it.

    Raises:
        DataError: an index outside the eval split.
    """
    by_index = {int(ex.meta["index"]): ex for ex in examples}
    missing = sorted(i for i in predictions if i not in by_index)
    if missing:
        raise DataError(
            f"prediction index {missing[0]} is outside the {task.name} eval examples "
            f"(0..{len(examples) - 1}); "
            "fix the predictions file or raise --limit"
        )
    chosen = sorted(predictions)
    return score_outputs(task, [by_index[i] for i in chosen], [predictions[i] for i in chosen])


def generate_outputs(
    task: Task,
    model: Any,
    tok: Any,
    examples: Sequence[Example],
    *,
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy-decode every example's prompt with the task's stop strings."""
    return generate(
        model,
        tok,
        [ex.prompt for ex in examples],
        max_new_tokens=max_new_tokens,
        stop=task.stop,
        batch_size=batch_size,
    )


def build_summary(
    task: Task, records: Sequence[dict[str, Any]], seconds: float, **info: Any
) -> dict[str, Any]:
    """Summary JSON: the metric with its Wilson 95% interval, what was evaluated and provenance."""
    stats = summarize([float(r["correct"]) for r in records])
    meta = run_meta()
    return {
        "task": task.name,
        "metric": task.metric,
        "value": stats.value,
        "ci95": list(stats.ci95),
        "n": stats.n,
        "correct": stats.correct,
        "seconds": round(seconds, 2),
        "date": meta["date"],
        **info,
        "provenance": meta,
    }


def write_outputs(
    output_dir: str | Path,
    task_name: str,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``<task>.records.jsonl`` and ``<task>.summary.json`` atomically; return their paths."""
    out = Path(output_dir)
    rec_path = out / f"{task_name}.records.jsonl"
    sum_path = out / f"{task_name}.summary.json"
    atomic_write_text(
        rec_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    )
    atomic_write_json(sum_path, summary)
    return rec_path, sum_path


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        """Elapsed seconds."""
        return time.monotonic() - self.start


@dataclass(frozen=True)
class EvalRequest:
    """What ``smartfed eval`` was asked to do (flags of the same names; see ``smartfed eval
    --help``).
    """

    task: str
    model_name_or_path: str | None = None
    adapter: str = ""
    run: str = ""
    predictions: str = ""
    limit: int = 0
    output_dir: str = "eval_results"
    data_dir: str = ""
    batch_size: int = 8
    max_new_tokens: int = 0
    dtype: str = "auto"
    device: str = "cpu"
    overwrite: bool = False


def _check_request(req: EvalRequest) -> None:
    if req.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {req.limit}")
    if req.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {req.batch_size}")
    if req.max_new_tokens < 0:
        raise ConfigError(f"--max_new_tokens must be >= 0, got {req.max_new_tokens}")
    if sum(bool(x) for x in (req.adapter, req.run, req.predictions)) > 1:
        raise ConfigError("--adapter, --run and --predictions are exclusive: pass one of them")
    summary = Path(req.output_dir) / f"{req.task}.summary.json"
    if summary.exists() and not req.overwrite:
        raise ConfigError(
            f"{summary} already exists; pass another --output_dir or --overwrite to replace it"
        )


def run_eval(req: EvalRequest) -> tuple[dict[str, Any], tuple[Path, Path]]:
    """Evaluate as requested and write the records and summary.

    Raises:
        SmartFedError: unknown task, missing/malformed data, bad flags, unloadable
        model/adapter/run.
    """
    task = get_task(req.task)
    _check_request(req)
    timer = Timer()
    examples = select_examples(task, req.data_dir or None, req.limit)
    max_new = req.max_new_tokens or task.max_new_tokens
    info: dict[str, Any] = {
        "limit": req.limit,
        "data_dir": str(resolve_data_dir(req.data_dir or None)),
        "batch_size": req.batch_size,
        "max_new_tokens": max_new,
        "num_shots": task.num_shots,
    }
    if req.predictions:
        records = score_prediction_file(
            task,
            task.eval_examples(req.data_dir or None) if req.limit == 0 else examples,
            load_predictions(req.predictions),
        )
        info.update(model=None, adapter=None, run=None, predictions=str(req.predictions))
    else:
        model, tok, loaded = load_for_eval(
            req.model_name_or_path,
            adapter=req.adapter,
            run=req.run,
            dtype=req.dtype,
            device=req.device,
        )
        info.update(loaded)
        outputs = generate_outputs(
            task, model, tok, examples, batch_size=req.batch_size, max_new_tokens=max_new
        )
        records = score_outputs(task, examples, outputs)
    summary = build_summary(task, records, timer.seconds, **info)
    paths = write_outputs(req.output_dir, task.name, records, summary)
    log.info(
        "%s %s = %.4f (n=%d) -> %s",
        task.name,
        task.metric,
        summary["value"],
        summary["n"],
        paths[1],
    )
    return summary, paths
