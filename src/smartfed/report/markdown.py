"""``report.md`` for one run: summary, per-round table, EEQA budget check, expert usage, plots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.files import atomic_write_text
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


def _round_table(record: RunRecord) -> list[str]:
    cols = ["train_loss", "bytes_up", "bytes_down", "wall_s", *record.eval_keys()]
    cols = [c for c in cols if record.series(c)[0]]
    rows = [[row["round"], *[row.get(c, "") for c in cols]] for row in record.rows]
    return _table(["round", *cols], rows)


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
        lines += _table(["key", "value"], [[k, v] for k, v in sorted(record.summary.items())])
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
