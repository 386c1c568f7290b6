"""Markdown tables and PNG plots of a bench's results JSON (see :mod:`smartfed_bench.report`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartfed.errors import SmartFedError
from smartfed.log import get_logger
from smartfed.report.plots import new_figure, plot_quota_heatmap, plot_usage, save_figure

if TYPE_CHECKING:
    from smartfed_bench.presets import RunSpec

log = get_logger(__name__)

VARIANT_TITLES = {
    "main": "the relevant pool",
    "irrelevant": "control: a pool of irrelevant LoRAs",
    "random": "control: random experts with the relevant LoRAs' shapes and norms",
    "data10": "10% of the training rows",
    "eeqa_warmup3": "EEQA from round 4 (3 warm-up rounds) instead of round 2",
    "topk_all": "no sparsity: K = all 16 experts per matrix",
    "scale_rank": "output scale c = source rank, no top-K renormalisation",
    "router_init0": "routers initialised at 0 (uniform gates) instead of N(0, 0.01)",
    "wire_bf16": "router transfer in bfloat16 (both directions)",
    "wire_int8": "int8 router updates up, bfloat16 down",
    "router_proj64": "router on a fixed seeded 64-dim projection of x (only M x 64 travels)",
}


def _ms(stat: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    mean, std = stat["mean"] * scale, (stat.get("std") or 0.0) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if stat.get("n", 0) > 1 else f"{mean:.{digits}f}"


def _reached(item: Mapping[str, Any] | None) -> str:
    """Round at which the target was reached (interpolated), ``never``, or ``—`` (no target)."""
    if not item:
        return "—"
    return f"{float(item['round']):.1f}" if item.get("reached") else "never"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def method_table(task: str, entry: Mapping[str, Any], derived: Mapping[str, Any]) -> list[str]:
    """One Markdown table per variant of a task: quality, bytes, time, energy, to-target."""
    metric = entry["metric"]
    lines: list[str] = []
    tt_loss = derived.get("to_target_loss", {})
    tt_acc = derived.get(f"to_target_{metric}", {})
    for variant, ventry in entry["variants"].items():
        lines += [f"**{task}** — {VARIANT_TITLES.get(variant, variant)}", ""]
        head = [
            "method",
            "seeds",
            f"{metric} (final)",
            "held-out loss (final)",
            "MB / round",
            "MB total",
            "wall s",
            "energy Wh",
        ]
        tf = any("eval_tf_em" in m["final"] for m in ventry["methods"].values())
        if tf:
            head[2:2] = ["lr", "TF exact match (final)", "eval-dist. loss (final)"]
        if variant == "main":
            head += ["rounds to FedIT loss", "MB to FedIT loss", f"rounds to FedIT {metric}"]
            if tf:
                head += ["rounds to FedIT TF-EM"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, m in ventry["methods"].items():
            cells = [
                f"`{name}`",
                str(len(m["seeds"])),
                _ms(m["final"][metric]),
                _ms(m["final"]["eval_loss"], 1.0, 4),
                _ms(m["bytes_per_round"], 1e-6, 3),
                _ms(m["bytes_total"], 1e-6, 2),
                _ms(m["wall_s"], 1.0, 0),
                _ms(m["energy_kwh"], 1e3, 2),
            ]
            if tf:
                lr = m.get("config", {}).get("learning_rate")
                cells[2:2] = [
                    "—" if lr is None else f"{lr:.2g}",
                    _ms(m["final"].get("eval_tf_em")),
                    _ms(m["final"].get("eval_tf_loss"), 1.0, 4),
                ]
            if variant == "main":
                lo, ac = tt_loss.get(name), tt_acc.get(name)
                cells += [
                    _reached(lo),
                    f"{lo['bytes'] * 1e-6:.1f}" if lo and lo.get("bytes") else "—",
                    _reached(ac),
                ]
                if tf:
                    cells.append(_reached(derived.get("to_target_eval_tf_em", {}).get(name)))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def ratio_lines(task: str, derived: Mapping[str, Any], metric: str) -> list[str]:
    """The paper's ratios (FedIT / method) to FedIT's final held-out loss and accuracy."""
    lines = [
        f"To-target ratios on **{task}** (FedIT's cost / the method's; > 1 = cheaper than FedIT):",
        "",
    ]
    lines += ["| method | target | rounds | bytes | energy | wall |", "|---|---|---|---|---|---|"]
    for key, label in (
        ("to_target_loss", "held-out loss"),
        (f"to_target_{metric}", metric),
        ("to_target_eval_tf_em", "TF exact match"),
    ):
        for name, item in derived.get(key, {}).items():
            if name == derived.get("reference"):
                continue
            lines.append(
                f"| `{name}` | FedIT's {label} {item['target']:.3g} | "
                f"{_ratio(item['ratio_rounds'])} | "
                f"{_ratio(item['ratio_bytes'])} | {_ratio(item['ratio_energy'])} | "
                f"{_ratio(item['ratio_wall'])} |"
            )
    return [*lines, ""]


def paired_lines(task: str, derived: Mapping[str, Any]) -> list[str]:
    """SmartFed minus each baseline, paired over seeds, with the 95% t interval."""
    pairs = derived.get("paired") or {}
    if not pairs:
        return []
    lines = [
        f"Paired differences on **{task}** (SmartFed minus the other method, same seeds; mean "
        "and 95% t interval; an interval that contains 0 is no measured difference):",
        "",
        "| final metric | comparison | mean | 95% CI | seeds |",
        "|---|---|---|---|---|",
    ]
    for key, comps in pairs.items():
        for name, c in comps.items():
            ci = "—" if c["lo"] is None else f"[{c['lo']:+.3f}, {c['hi']:+.3f}]"
            mean = "—" if c["mean"] is None else f"{c['mean']:+.3f}"
            lines.append(f"| {key} | {name} | {mean} | {ci} | {c['n']} |")
    return [*lines, ""]


def wire_lines(task: str, derived: Mapping[str, Any], metric: str) -> list[str]:
    """Router size and wire encoding: MB per round, quality, paired gap to the full router."""
    table = derived.get("wire") or {}
    if not table:
        return []
    lines = [
        f"Router size and wire encoding on **{task}** (SmartFed; `full_fp32` = the paper's router; "
        "MB = serialized bytes up + down per round; Δ = setting minus `full_fp32`, paired over "
        "seeds, 95% t interval; bytes to FedIT's TF-EM = FedIT's bytes / the setting's):",
        "",
        f"| setting | seeds | MB/round | FedIT/setting per round | TF-EM | Δ TF-EM | {metric} "
        f"| Δ {metric} | bytes to FedIT's TF-EM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        fin, pair = row["final"], row["paired_vs_full"]
        lines.append(
            f"| `{name}` | {len(row['seeds'])} | {_num(row['mb_per_round'], '.3f')} | "
            f"{_ratio(row['per_round_vs_fedit'])} | {_stat(fin.get('eval_tf_em'))} | "
            f"{_ci(pair.get('eval_tf_em'))} | {_stat(fin.get(metric))} | {_ci(pair.get(metric))} | "
            f"{_ratio((row.get('to_fedit_quality') or {}).get('ratio_bytes'))} |"
        )
    return [*lines, ""]


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _stat(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _ci(c: Mapping[str, Any] | None) -> str:
    if not c or c.get("mean") is None:
        return "—"
    if c.get("lo") is None:
        return f"{c['mean']:+.3f}"
    return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def sweep_lines(sweep: Mapping[str, Any]) -> list[str]:
    """The learning-rate sweep: validation score per multiplier and the chosen rate."""
    if not sweep:
        return []
    lines = [
        "Learning-rate sweep (seed 0; score: teacher-forced exact match on the val split, keys "
        "disjoint from eval; * = chosen):",
        "",
        "| task | method | lr: val TF-EM (eval TF-EM) |",
        "|---|---|---|",
    ]
    for task, variants in sweep.items():
        for variant, methods in variants.items():
            for method, rec in methods.items():
                cells = []
                for g in rec["grid"]:
                    star = "*" if g["mult"] == rec.get("chosen_mult") else ""
                    val = "—" if g["val_tf_em"] is None else f"{g['val_tf_em']:.3f}"
                    ev = "—" if g.get("eval_tf_em") is None else f"{g['eval_tf_em']:.3f}"
                    cells.append(f"{g['lr']:.2g}{star}: {val} ({ev})")
                label = task if variant == "main" else f"{task} ({variant})"
                lines.append(f"| {label} | `{method}` | {'; '.join(cells)} |")
    return [*lines, ""]


def render_markdown(results: Mapping[str, Any], images: Sequence[Path], json_path: Path) -> str:
    """The bench's Markdown report (the README's results section is generated from this)."""
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    lines = [
        f"# `{results['suite']}` bench, preset `{results['preset']}`",
        "",
        f"Generated from `{json_path.name}` on {meta.get('date', '?')} "
        f"(git {meta.get('git_commit', '?')}); "
        f"machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{machine.get('memory_gb', '?')} GB; seeds {meta.get('seeds')}. Mean ± std over seeds; "
        "95% t intervals in the curves' bands and the paired table.",
        "",
    ]
    for task, entry in results.get("tasks", {}).items():
        derived = results.get("derived", {}).get(task, {})
        lines += method_table(task, entry, derived)
        lines += ratio_lines(task, derived, entry["metric"])
        lines += paired_lines(task, derived)
        lines += wire_lines(task, derived, entry["metric"])
    lines += sweep_lines(results.get("sweep") or {})
    if results.get("failed"):
        lines += ["Failed runs:", ""] + [f"- `{f['run']}`: {f['error']}" for f in results["failed"]]
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def _curve(ax: Any, rounds: Sequence[Mapping[str, Any]], key: str, x_key: str, label: str) -> None:
    pts = [
        (r[x_key] if x_key != "round" else r["round"], r[key])
        for r in rounds
        if r.get(key) and r[key].get("mean") is not None
    ]
    if not pts:
        return
    xs = [p[0] * (1e-6 if x_key == "bytes_cum" else 1) for p in pts]
    mean = [p[1]["mean"] for p in pts]
    std = [p[1].get("ci95") or 0.0 for p in pts]  # 95% t half-width over seeds (0 for one seed)
    ax.plot(xs, mean, marker="o", markersize=3, label=label)
    ax.fill_between(
        xs,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        alpha=0.15,
    )


def plot_curves(task: str, entry: Mapping[str, Any], path: Path) -> Path | None:
    """Loss and accuracy vs round and vs cumulative MB, every method of ``main``, 95% CI bands.

    With teacher-forced metrics: held-out loss, eval-distribution loss and TF exact match (every
    round); otherwise held-out loss and the task metric (at its evaluation rounds).
    """
    methods = entry["variants"].get("main", {}).get("methods", {})
    if not methods:
        return None
    metric = entry["metric"]
    tf = any("eval_tf_em" in m["final"] for m in methods.values())
    keys = ("eval_loss", "eval_tf_loss", "eval_tf_em") if tf else ("eval_loss", f"eval_{metric}")
    fig = new_figure(13.0, 3.5 * len(keys))
    axes = fig.subplots(len(keys), 2)
    for row, key in enumerate(keys):
        for col, x_key in enumerate(("round", "bytes_cum")):
            ax = axes[row][col]
            for name, m in methods.items():
                _curve(ax, m["per_round"], key, x_key, name)
            ax.set(
                xlabel="round" if x_key == "round" else "MB sent and received (cumulative)",
                ylabel=key,
                title=f"{task}: {key}",
            )
            if x_key == "bytes_cum":
                ax.set_xscale("log")
            if key in ("eval_loss", "eval_tf_loss"):
                ax.set_yscale("log")
    axes[0][0].legend(fontsize="x-small")
    return save_figure(fig, path)


def render_plots(
    results: Mapping[str, Any], stem: Path, cells: Sequence[tuple[RunSpec, Path]]
) -> list[Path]:
    """Curves per task, plus the EEQA heatmap and expert usage of each task's first SmartFed run."""
    from smartfed.report.run import load_run

    images: list[Path] = []
    for task, entry in results.get("tasks", {}).items():
        short = task.removeprefix("cpu_mini.")
        if p := plot_curves(task, entry, Path(f"{stem}_{short}_curves.png")):
            images.append(p)
        reported = entry["variants"].get("main", {}).get("methods", {}).get("smartfed", {})
        runs = [Path(d) for d in reported.get("runs", []) if (Path(d) / "metrics.jsonl").is_file()]
        if runs:
            try:
                record = load_run(runs[0])
            except SmartFedError as err:  # a run dir the report cannot read: no run plots
                log.warning("no EEQA / usage plots for %s: %s", task, err)
                continue
            for fn, suffix in ((plot_quota_heatmap, "eeqa_quotas"), (plot_usage, "expert_usage")):
                if p := fn(record, Path(f"{stem}_{short}_{suffix}.png")):
                    images.append(p)
    return images


README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def splice_readme(readme: str, generated: str, rel_dir: str) -> str:
    """Return ``readme`` with the block between the results markers replaced by ``generated``.

    Image links of ``generated`` (PNG names beside its JSON) are made relative to the README via
    ``rel_dir``; its level-1 title becomes a level-3 heading.

    Raises:
        ValueError: the markers are missing.
    """
    if README_BEGIN not in readme or README_END not in readme:
        raise ValueError(f"README has no {README_BEGIN} ... {README_END} block")
    body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", rf"![\1]({rel_dir}/\2)", generated)
    body = re.sub(r"^# ", "### ", body.strip())
    head, _, rest = readme.partition(README_BEGIN)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_BEGIN}\n{body}\n{README_END}{tail}"
