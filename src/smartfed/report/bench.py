"""A bench's results: JSON from the run directories, a Markdown table and PNG plots.

Layout of ``<suite>.json`` (``benchmarks/results/cpu-mini.json``)::

    {"suite", "preset", "meta": {machine, versions, git commit, date, seeds},
     "protocol": {the preset's run-config defaults, learning rate per method} (each method's
                  "config" holds what its runs actually used),
     "pool": {skill: {"path", "steps", "heldout_loss_after"}},
     "tasks": {task: {"metric", "variants": {variant: {"methods": {method: {
         "seeds", "per_round": [{round, eval_loss: {mean, std, n}, eval_<metric>, bytes_up, ...}],
         "bytes_total", "bytes_per_round", "wall_s", "energy_kwh": {mean, std, n},
         "final": {"eval_loss", "<metric>": {mean, std, n, "per_seed"}}, "runs": [...]}}}}}},
     "derived": {task: {"to_target_loss", "to_target_<metric>", "delta_<metric>_vs_fedit"}},
     "failed": [...]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartfed.files import atomic_write_json, atomic_write_text
from smartfed.io.rundir import RunDir
from smartfed.log import get_logger
from smartfed.report import bench_stats as st

if TYPE_CHECKING:
    from smartfed.recipes.bench import RunSpec

log = get_logger(__name__)
REFERENCE = "fedit"


def method_entry(runs: Sequence[tuple[int, Path]], metric: str) -> dict[str, Any]:
    """Aggregate the complete runs (seed, run dir) of one method in one variant."""
    seed_rows = [(seed, RunDir(d).metrics()) for seed, d in runs]  # complete runs only
    seed_rows = [(s, r) for s, r in seed_rows if r]
    rounds = st.per_round([r for _, r in seed_rows], metric)
    finals = [(s, r[-1]) for s, r in seed_rows]
    n_rounds = [len(r) for _, r in seed_rows]
    totals = {
        "bytes_total": [sum(x["bytes_up"] + x["bytes_down"] for x in r) for _, r in seed_rows],
        "wall_s": [sum(x["wall_s"] for x in r) for _, r in seed_rows],
        "energy_kwh": [sum(st.row_energy(x) for x in r) for _, r in seed_rows],
    }
    last_acc = [(s, _last(r, f"eval_{metric}")) for s, r in seed_rows]
    entry: dict[str, Any] = {
        "seeds": [s for s, _ in seed_rows],
        "rounds": n_rounds,
        "per_round": rounds,
        **{k: st.mean_std(v) for k, v in totals.items()},
        "bytes_per_round": st.mean_std(
            [t / n for t, n in zip(totals["bytes_total"], n_rounds, strict=True) if n]
        ),
        "final": {
            "eval_loss": {
                **st.mean_std([f.get("eval_loss") for _, f in finals]),
                "per_seed": {str(s): f.get("eval_loss") for s, f in finals},
            },
            metric: {
                **st.mean_std([a for _, a in last_acc if a is not None]),
                "per_seed": {str(s): a for s, a in last_acc},
            },
        },
        "runs": [str(d) for _, d in runs],
        "config": _run_config(runs[0][1]) if runs else {},
    }
    return entry


CONFIG_KEYS = (
    ("fed", ("num_clients", "sample_clients", "num_rounds", "data_fraction", "partitioner")),
    ("train", ("method", "local_steps", "batch_size", "learning_rate")),
    ("router", ("topk_experts", "output_scale_mode", "renormalize_topk")),
    ("quota", ("enable_eeqa",)),
    ("eval", ("eval_limit", "eval_every", "heldout_examples")),
    ("model", ("model_name_or_path", "dtype")),
)


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The protocol keys of a run's resolved ``config.json`` plus its pool's adapter dir names."""
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text(encoding="utf-8"))
    out = {k: cfg[sec][k] for sec, keys in CONFIG_KEYS for k in keys if k in cfg.get(sec, {})}
    out["lora_pool"] = [Path(p).name for p in cfg["pool"]["lora_pool"].split(",") if p]
    return out


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        if row.get(key) is not None:
            return float(row[key])
    return None


def collect(
    preset: str,
    cells: Sequence[tuple[RunSpec, Path]],
    failed: Sequence[tuple[RunSpec, str]],
    skill_dirs: Mapping[str, Path],
) -> dict[str, Any]:
    """The results JSON (without derived figures) from the grid's run directories."""
    from smartfed.data.tasks import get_task
    from smartfed.meta import run_meta
    from smartfed.recipes.bench import COMMON, METHOD_LR, VARIANTS, get_preset

    task_order = list(get_preset(preset).tasks)
    variant_order = list(VARIANTS)
    cells = sorted(
        cells,
        key=lambda c: (
            task_order.index(c[0].task) if c[0].task in task_order else len(task_order),
            c[0].task,
            variant_order.index(c[0].variant),
            c[0].seed,
        ),
    )
    grouped: dict[str, dict[str, dict[str, list[tuple[int, Path]]]]] = {}
    for spec, run_dir in cells:
        if (run_dir / "summary.json").is_file():
            grouped.setdefault(spec.task, {}).setdefault(spec.variant, {}).setdefault(
                spec.method, []
            ).append((spec.seed, run_dir))
    tasks: dict[str, Any] = {}
    for task, variants in grouped.items():
        metric = get_task(task).metric
        tasks[task] = {
            "metric": metric,
            "variants": {
                v: {"methods": {m: method_entry(ms[m], metric) for m in _method_order(ms)}}
                for v, ms in variants.items()
            },
        }
    seeds = sorted({spec.seed for spec, _ in cells})
    return {
        "suite": "cpu-mini",
        "preset": preset,
        "meta": run_meta(seeds=seeds),
        "protocol": {**COMMON, **get_preset(preset).overrides, "learning_rate": METHOD_LR},
        "pool": {s: _pool_entry(p) for s, p in skill_dirs.items()},
        "tasks": tasks,
        "failed": [{"run": str(spec.subdir()), "error": err} for spec, err in failed],
    }


def _method_order(names: Mapping[str, Any]) -> list[str]:
    """Registry order (smartfed first, then the baselines), unknown names last."""
    from smartfed.methods import METHODS

    order = list(METHODS)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _pool_entry(path: Path) -> dict[str, Any]:
    rec_path = path / "training_record.json"
    rec = json.loads(rec_path.read_text(encoding="utf-8")) if rec_path.is_file() else {}
    keep = ("steps", "rows", "seconds", "seconds_per_step", "initial_heldout_loss", "heldout_loss")
    return {"path": path.name, **{k: rec[k] for k in keep if k in rec}}


def derive(results: Mapping[str, Any]) -> dict[str, Any]:
    """To-target figures and accuracy deltas vs FedIT for the ``main`` variant of every task."""
    out: dict[str, Any] = {}
    for task, entry in results.get("tasks", {}).items():
        methods = entry["variants"].get("main", {}).get("methods", {})
        metric = entry["metric"]
        out[task] = {
            "reference": REFERENCE,
            "to_target_loss": st.to_target(methods, REFERENCE, "eval_loss"),
            f"to_target_{metric}": st.to_target(methods, REFERENCE, f"eval_{metric}"),
            f"delta_{metric}_vs_{REFERENCE}": st.deltas(methods, f"eval_{metric}", REFERENCE),
            f"delta_eval_loss_vs_{REFERENCE}": st.deltas(methods, "eval_loss", REFERENCE),
        }
    return out


def write_bench_outputs(
    results_path: Path,
    preset: str,
    cells: Sequence[tuple[RunSpec, Path]],
    failed: Sequence[tuple[RunSpec, str]],
    skill_dirs: Mapping[str, Path],
) -> dict[str, Any]:
    """Write ``<results>.json``, ``<results>.md`` and the PNGs beside it; return the JSON."""
    from smartfed.report.bench_render import render_markdown, render_plots

    results = collect(preset, cells, failed, skill_dirs)
    results["derived"] = derive(results)
    atomic_write_json(results_path, results)
    images = render_plots(results, results_path.parent / results_path.stem, cells)
    atomic_write_text(
        results_path.with_suffix(".md"), render_markdown(results, images, results_path)
    )
    return results
