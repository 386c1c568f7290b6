"""Read a run directory (metrics.jsonl, summary.json, config.json) for `smartfed report`.

Layout: docs/ARCHITECTURE.md "Run directory".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.errors import CheckpointError
from smartfed.log import get_logger

log = get_logger(__name__)

# Keys of a metrics row that are not evaluation metrics.
BOOKKEEPING = {
    "round",
    "clients",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "wall_s",
    "quotas",
    "usage",
}
# ``eval_*`` keys that are not task metrics (the held-out loss has its own plot, counts are counts).
NOT_METRICS = {"eval_loss", "eval_n", "eval_task"}
_MATRIX = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?([^.]+)$")


@dataclass(frozen=True)
class RunRecord:
    """What a report needs from one run directory.

    Attributes:
        run_dir: the directory read.
        rows: one ``metrics.jsonl`` object per round, sorted by ``round``.
        summary: ``summary.json`` (empty if the run has not finished).
        adapter_names: source LoRA names in pool order (from ``config.json``), may be empty.
        skipped_last_line: the last ``metrics.jsonl`` line was truncated and ignored.
    """

    run_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    adapter_names: list[str] = field(default_factory=list)
    skipped_last_line: bool = False

    @property
    def rounds(self) -> list[int]:
        """Round numbers in order."""
        return [int(r["round"]) for r in self.rows]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Return ``(rounds, values)`` for a numeric metric, skipping rounds without it."""
        xs, ys = [], []
        for row in self.rows:
            value = row.get(key)
            if _is_number(value):
                xs.append(int(row["round"]))
                ys.append(float(value))
        return xs, ys

    def eval_keys(self) -> list[str]:
        """Per-round task metrics: numeric ``eval_*`` keys except the held-out loss and counts
        (e.g. ``eval_execution_accuracy``; bytes, energy and timings are not metrics)."""
        keys = {
            k
            for row in self.rows
            for k, v in row.items()
            if _is_number(v) and k.startswith("eval_") and k not in NOT_METRICS
        }
        return sorted(keys - BOOKKEEPING)

    def final_metrics(self) -> dict[str, float]:
        """The last measured value of every task metric (``eval_execution_accuracy`` -> 0.9)."""
        out: dict[str, float] = {}
        for key in self.eval_keys():
            _, ys = self.series(key)
            if ys:
                out[key] = ys[-1]
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_matrix_name(name: str) -> tuple[int, str]:
    """Split ``model.layers.7.self_attn.q_proj`` into ``(7, "q_proj")``; no layer index -> -1."""
    match = _MATRIX.search(name)
    if match:
        return int(match.group(1)), match.group(2)
    return -1, name.rsplit(".", 1)[-1]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err}); rerun or remove it") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], bool]:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read ({err})") from err
    rows: list[dict[str, Any]] = []
    skipped = False
    for i, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):  # a crash can truncate only the line being appended
                log.warning("%s: ignoring truncated last line %d", path, i)
                skipped = True
                break
            raise CheckpointError(
                f"{path}:{i}: not valid JSON ({err.msg}); fix or remove it"
            ) from err
        if not isinstance(row, dict) or not _is_number(row.get("round")):
            raise CheckpointError(f"{path}:{i}: each line must be an object with a numeric 'round'")
        rows.append(row)
    return rows, skipped


def _adapter_names(run_dir: Path) -> list[str]:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        return []
    pool = _read_json(cfg_path).get("pool", {})
    sources = pool.get("lora_pool", "") if isinstance(pool, dict) else ""
    if not isinstance(sources, str):
        return []
    return [Path(s.strip().rstrip("/")).name or s.strip() for s in sources.split(",") if s.strip()]


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory.

    Raises:
        CheckpointError: the directory or ``metrics.jsonl`` is missing, empty or malformed.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise CheckpointError(f"run directory {root} does not exist; pass a run's --output_dir")
    metrics = root / "metrics.jsonl"
    if not metrics.is_file():
        raise CheckpointError(f"{metrics} is missing; is {root} a SmartFed run directory?")
    rows, skipped = _read_rows(metrics)
    if not rows:
        raise CheckpointError(f"{metrics} has no complete round yet; wait for round 1 to finish")
    rows.sort(key=lambda r: r["round"])
    summary_path = root / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    return RunRecord(root, rows, summary, _adapter_names(root), skipped)
