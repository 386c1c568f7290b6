"""``report.md`` for one run: summary, per-round table, EEQA budget check, expert usage, plots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.files import atomic_write_text
from smartfed.quota.allocate import describe_quotas
from smartfed.report.plots import (
    adapter_labels,
    plot_metrics,
    plot_quota_heatmap,
    plot_usage,
    usage_table,
)
from smartfed.report.run import RunRecord, load_run

PLOTS = {
    "metrics.png": plot_metrics,
    "quotas.png": plot_quota_heatmap,
    "expert_usage.png": plot_usage,
}


@dataclass(frozen=True)
class ReportResult:
    """Files written by :func:`write_report`."""

    markdown: Path
    images: list[Path] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


ROUND_COLUMNS = {
    "train_loss": "train loss",
    "eval_loss": "held-out loss",
    "bytes_up": "MB up",
    "bytes_down": "MB down",
    "wall_s": "wall s",
}


def _round_table(record: RunRecord) -> list[str]:
    cols = [c for c in [*ROUND_COLUMNS, *record.eval_keys()] if record.series(c)[0]]
    header = [ROUND_COLUMNS.get(c, c.removeprefix("eval_")) for c in cols]
    rows = [[row["round"], *[_cell(c, row.get(c, "")) for c in cols]] for row in record.rows]
    return _table(["round", *header], rows)


def _cell(key: str, value: Any) -> Any:
    if key.startswith("bytes_") and isinstance(value, int | float):
        return f"{value / 1e6:.3f}"
    return value


def _summary_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """Scalar entries as they are; quotas as one line; other nested values by their size."""
    rows: list[list[Any]] = []
    for key, value in sorted(summary.items()):
        if key == "final_quotas" and isinstance(value, dict):
            rows.append([key, describe_quotas(value)])
        elif isinstance(value, dict):
            inner = ", ".join(
                f"{k} {_fmt(v)}" for k, v in value.items() if not isinstance(v, dict | list)
            )
            rows.append([key, inner or f"{len(value)} entries (summary.json)"])
        elif isinstance(value, list):
            rows.append([key, f"{len(value)} entries (summary.json)"])
        elif value is not None:
            rows.append([key, value])
    return rows


def _quota_section(record: RunRecord) -> list[str]:
    rows, prev = [], None
    for row in record.rows:
        quotas = row.get("quotas")
        if not isinstance(quotas, dict) or not quotas:
            continue
        ks = [int(k) for k in quotas.values()]
        moved = "" if prev is None else sum(1 for m, k in quotas.items() if prev.get(m) != k)
        rows.append([row["round"], len(ks), sum(ks), min(ks), max(ks), moved])
        prev = quotas
    if not rows:
        return ["No `quotas` in metrics.jsonl."]
    budgets = {r[2] for r in rows}
    verdict = (
        f"The total budget is {budgets.pop()} in every round."
        if len(budgets) == 1
        else f"The total budget changes between rounds: {sorted(budgets)}."
    )
    header = ["round", "matrices", "sum K_m", "min K_m", "max K_m", "matrices changed"]
    return [verdict, "", *_table(header, rows)]


def _usage_section(record: RunRecord) -> list[str]:
    table = usage_table(record)
    if not table:
        return ["No `usage` in metrics.jsonl."]
    n = max(len(c) for layers in table.values() for c in layers.values())
    labels = adapter_labels(record, n)
    lines = ["Share of expert selections per source LoRA, summed over rounds.", ""]
    rows = []
    for kind, layers in table.items():
        totals = [sum(c[a] for c in layers.values() if a < len(c)) for a in range(n)]
        grand = max(sum(totals), 1)
        rows.append([kind, *[f"{100 * t / grand:.1f}%" for t in totals]])
    return lines + _table(["matrix type", *labels], rows)


def render_markdown(record: RunRecord, images: list[Path]) -> str:
    """Return the Markdown text of the report (images are referenced by file name)."""
    lines = [f"# SmartFed run report: `{record.run_dir.name}`", ""]
    if record.summary:
        lines += ["## Summary", ""]
        lines += _table(["key", "value"], _summary_rows(record.summary))
    else:
        lines += ["_No summary.json: the run has not finished._"]
    if record.skipped_last_line:
        lines += ["", "_The last line of metrics.jsonl was truncated and ignored._"]
    lines += ["", "## Rounds", "", *_round_table(record), ""]
    lines += ["## EEQA quotas", "", *_quota_section(record), ""]
    lines += ["## Expert usage", "", *_usage_section(record), ""]
    if images:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> ReportResult:
    """Write ``report.md`` and the PNG plots of a run (atomically) into ``out_dir`` (= run dir).

    Raises:
        CheckpointError: a missing or malformed run directory (see :func:`load_run`).
    """
    record = load_run(run_dir)
    dest = Path(out_dir) if out_dir is not None else record.run_dir
    images = [p for name, plot in PLOTS.items() if (p := plot(record, dest / name)) is not None]
    md = atomic_write_text(dest / "report.md", render_markdown(record, images))
    return ReportResult(md, images)
