"""PNG plots of one run: loss/metrics per round, EEQA quota heatmaps, expert usage per source LoRA.

Figures are built with the object-oriented matplotlib API on an Agg canvas (no pyplot, no global
backend state), and every PNG is written atomically.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from smartfed.files import atomic_write
from smartfed.report.run import RunRecord, parse_matrix_name

# matrix type -> {layer: {round: K_m}}
QuotaGrid = dict[str, dict[int, dict[int, int]]]


def new_figure(width: float, height: float) -> Any:
    """Return a Figure bound to a fresh Agg canvas (the backend is chosen here, per figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; return ``path``."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_metrics(record: RunRecord, path: Path) -> Path | None:
    """Loss (train, held-out), task accuracy and MB sent per round; ``None`` without any of them.

    One panel per quantity so no axis mixes units (accuracy in [0, 1], losses, megabytes).
    """
    losses = {k: record.series(k) for k in ("train_loss", "eval_loss")}
    losses = {k: v for k, v in losses.items() if v[0]}
    evals = {k: record.series(k) for k in record.eval_keys()}
    evals = {k: v for k, v in evals.items() if v[0]}
    sent = [
        (int(r["round"]), (r.get("bytes_up", 0) + r.get("bytes_down", 0)) / 1e6)
        for r in record.rows
        if isinstance(r.get("bytes_up"), int | float)
    ]
    panels = [p for p in (losses, evals, sent) if p]
    if not losses and not evals:
        return None
    fig = new_figure(4.6 * len(panels), 3.6)
    axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    if losses:
        ax = axes.pop(0)
        for key, (xs, ys) in losses.items():
            ax.plot(xs, ys, marker="o", label={"train_loss": "train", "eval_loss": "held-out"}[key])
        ax.set(title="loss", xlabel="round", ylabel="loss (response tokens)")
        ax.legend(fontsize="small")
    if evals:
        ax = axes.pop(0)
        for key, (xs, ys) in evals.items():
            ax.plot(xs, ys, marker="o", label=key.removeprefix("eval_"))
        ax.set(title="task accuracy", xlabel="round", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize="small")
    if sent:
        ax = axes.pop(0)
        ax.bar([x for x, _ in sent], [y for _, y in sent])
        ax.set(title="communication", xlabel="round", ylabel="MB sent (up + down)")
    return save_figure(fig, path)


def quota_grid(record: RunRecord) -> QuotaGrid:
    """Collect K_m by matrix type, layer and round from the rows' ``quotas``."""
    grid: QuotaGrid = defaultdict(lambda: defaultdict(dict))
    for row in record.rows:
        quotas = row.get("quotas")
        if not isinstance(quotas, dict):
            continue
        for name, k in quotas.items():
            layer, kind = parse_matrix_name(name)
            grid[kind][layer][int(row["round"])] = int(k)
    return {kind: dict(layers) for kind, layers in sorted(grid.items())}


def plot_quota_heatmap(record: RunRecord, path: Path) -> Path | None:
    """Heatmap of K_m: one panel per matrix type, layers x rounds; ``None`` without quotas."""
    grid = quota_grid(record)
    if not grid:
        return None
    rounds = record.rounds
    vmax = max(k for layers in grid.values() for per in layers.values() for k in per.values())
    fig = new_figure(1.0 + 3.2 * len(grid), 1.6 + 0.22 * max(len(v) for v in grid.values()))
    axes = fig.subplots(1, len(grid), squeeze=False)[0]
    image = None
    for ax, (kind, layers) in zip(axes, grid.items(), strict=True):
        order = sorted(layers)
        data = [[layers[layer].get(r, float("nan")) for r in rounds] for layer in order]
        image = ax.imshow(
            data,
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
            origin="lower",
        )
        ax.set(title=kind, xlabel="round", ylabel="layer")
        ax.set_xticks(range(len(rounds)), [str(r) for r in rounds], fontsize="x-small")
        ax.set_yticks(range(len(order)), [str(i) for i in order], fontsize="x-small")
    fig.colorbar(image, ax=list(axes), label="K_m (experts per token)")
    return save_figure(fig, path)


def usage_table(record: RunRecord) -> dict[str, dict[int, list[int]]]:
    """Sum ``usage`` (selections per source adapter) over rounds, by matrix type and layer."""
    table: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for row in record.rows:
        usage = row.get("usage")
        if not isinstance(usage, dict):
            continue
        for name, counts in usage.items():
            layer, kind = parse_matrix_name(name)
            acc = table[kind].setdefault(layer, [0] * len(counts))
            acc.extend([0] * (len(counts) - len(acc)))
            for i, c in enumerate(counts):
                acc[i] += int(c)
    return {kind: dict(sorted(layers.items())) for kind, layers in sorted(table.items())}


def adapter_labels(record: RunRecord, n: int) -> list[str]:
    """Source LoRA names from the run config when they match ``n``, else ``adapter i``."""
    if len(record.adapter_names) == n:
        return list(record.adapter_names)
    return [f"adapter {i}" for i in range(n)]


def plot_usage(record: RunRecord, path: Path) -> Path | None:
    """Stacked bars: share of expert selections per source LoRA, per layer, one panel per type."""
    table = usage_table(record)
    if not table:
        return None
    n = max(len(c) for layers in table.values() for c in layers.values())
    labels = adapter_labels(record, n)
    fig = new_figure(1.0 + 3.6 * len(table), 3.8)
    axes = fig.subplots(1, len(table), squeeze=False)[0]
    for ax, (kind, layers) in zip(axes, table.items(), strict=True):
        order = list(layers)
        bottom = [0.0] * len(order)
        for a in range(n):
            share = [
                (layers[lay][a] if a < len(layers[lay]) else 0) / max(sum(layers[lay]), 1)
                for lay in order
            ]
            ax.bar([str(x) for x in order], share, bottom=bottom, label=labels[a])
            bottom = [b + s for b, s in zip(bottom, share, strict=True)]
        ax.set(title=f"{kind}: expert selections", xlabel="layer", ylabel="share", ylim=(0, 1))
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)
