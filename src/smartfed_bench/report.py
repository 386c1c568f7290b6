"""A bench's results: JSON from the run directories, a Markdown table and PNG plots.

Layout of ``<suite>.json`` (``benchmarks/results/cpu-mini.json``)::

    {"suite", "preset", "meta": {machine, versions, git commit, date, seeds, command},
     "protocol": {the preset's run-config defaults, learning rate per method, "lr_grid", "tuned",
                  "pool_seed_of_run_seed", "metrics": what each metric key measures} (each
                  method's "config" holds what its runs actually used),
     "pool": {pool seed: {skill: {"path", "steps", "heldout_loss_after"}}},
     "tasks": {task: {"metric", "variants": {variant: {"methods": {method: {
         "seeds", "per_round": [{round, eval_loss / eval_tf_em / eval_tf_loss:
         {mean, std, n, ci95}, eval_<metric>, bytes_up, ...}],
         "bytes_total", "bytes_per_round", "wall_s", "energy_kwh": {mean, std, n, ci95},
         "final": {"eval_loss", "eval_tf_em", "eval_tf_loss", "val_tf_em", "<metric>":
         {mean, std, n, ci95, "per_seed"}}, "runs": [...]}}}}}},
     "sweep": {task: {variant: {method: {"grid": [{mult, lr, val_tf_em, val_tf_loss, run}],
               "chosen_mult", "chosen_lr"}}}},
     "derived": {task: {"to_target_loss", "to_target_<metric>", "to_target_eval_tf_em",
                 "delta_<metric>_vs_fedit", "paired": {key: {"smartfed - <other>": {mean, lo,
                 hi, n, per_seed}}}}},
     "failed": [...]}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartfed.files import atomic_write_json, atomic_write_text
from smartfed.io.rundir import RunDir
from smartfed.log import get_logger
from smartfed_bench import stats as st

if TYPE_CHECKING:
    from smartfed_bench.presets import RunSpec

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
    extra = {
        key: {
            **st.mean_std([_last(r, key) for _, r in seed_rows]),
            "per_seed": {str(s): _last(r, key) for s, r in seed_rows},
        }
        for key in FINAL_KEYS
        if any(_last(r, key) is not None for _, r in seed_rows)
    }
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
            **extra,
        },
        "runs": [str(d) for _, d in runs],
        "config": _run_config(runs[0][1]) if runs else {},
    }
    return entry


FINAL_KEYS = ("eval_tf_em", "eval_tf_loss", "val_tf_em", "val_tf_loss")
"""Teacher-forced metrics reported at a run's last round (when its runs logged them)."""
METRIC_NOTES = {
    "eval_tf_em": "teacher-forced exact match on the eval rows, every round: the argmax equals the "
    "canonical response at every response token incl. EOS (= greedy decoding reproduces it)",
    "eval_tf_loss": "response loss on the eval rows (the eval distribution), every round",
    "eval_loss": "response loss on training-distribution rows held out before partitioning",
    "val_tf_em": "teacher-forced exact match on the val split (keys disjoint from train and "
    "eval) after the last round: the learning-rate selection score",
    "eval_<metric>": "greedy generation scored by the task (execution accuracy runs the program, "
    "accuracy compares the answer) after the last round",
}
CONFIG_KEYS = (
    ("fed", ("num_clients", "sample_clients", "num_rounds", "data_fraction", "partitioner")),
    ("train", ("method", "local_steps", "batch_size", "learning_rate", "seed")),
    ("router", ("topk_experts", "output_scale_mode", "renormalize_topk")),
    ("quota", ("enable_eeqa",)),
    ("eval", ("eval_limit", "eval_every", "heldout_examples", "tf_eval_every", "val_examples")),
    ("model", ("model_name_or_path", "dtype")),
)


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The protocol keys of a run's resolved ``config.json`` plus its pool's adapter dir names."""
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text(encoding="utf-8"))
    out = {k: cfg[sec][k] for sec, keys in CONFIG_KEYS for k in keys if k in cfg.get(sec, {})}
    pool = cfg.get("pool", {}).get("lora_pool", "")
    out["lora_pool"] = [Path(p).name for p in pool.split(",") if p]
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
    pools: Mapping[int, Mapping[str, Path]],
) -> dict[str, Any]:
    """The results JSON (without derived figures) from the grid's run directories."""
    from smartfed.data.tasks import get_task
    from smartfed.meta import run_meta
    from smartfed_bench.presets import COMMON, METHOD_LR, VARIANTS, get_preset

    spec_preset = get_preset(preset)
    sweep, cells = select_swept(cells, spec_preset.lr_grid, spec_preset.rate)
    task_order = list(spec_preset.tasks)
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
    protocol: dict[str, Any] = {
        **COMMON,
        **spec_preset.overrides,
        "learning_rate": {m: spec_preset.rate(m) for m in METHOD_LR},
        "metrics": METRIC_NOTES,
        "pool_seed_of_run_seed": {str(s): spec_preset.pool_seed(s) for s in seeds},
    }
    if spec_preset.lr_grid:
        protocol |= {
            "lr_grid": list(spec_preset.lr_grid),
            "tuned": list(spec_preset.tuned),
            "lr_selection": "seed 0, every multiplier: highest val_tf_em after the last round, "
            "ties by lower val_tf_loss, then the smaller rate; seeds > 0 run at the chosen rate, "
            "seed 0's final run is the sweep's run at the chosen rate",
        }
    return {
        "suite": "cpu-mini",
        "preset": preset,
        "meta": run_meta(seeds=seeds, command=_command()),
        "protocol": protocol,
        "pool": {
            str(ps): {s: _pool_entry(p) for s, p in dirs.items()} for ps, dirs in pools.items()
        },
        "tasks": tasks,
        "sweep": sweep,
        "failed": [{"run": str(spec.subdir()), "error": err} for spec, err in failed],
    }


def _command() -> str:
    """The command line of this process (program name without its directory)."""
    import shlex
    import sys

    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def select_swept(
    cells: Sequence[tuple[RunSpec, Path]],
    lr_grid: Sequence[float] = (),
    rate: Callable[[str], float] | None = None,
) -> tuple[dict[str, Any], list[tuple[RunSpec, Path]]]:
    """Split off the learning-rate sweeps: the sweep record, and the cells to report.

    For a method run at several multipliers, its seed-0 runs form the sweep; the reported runs
    are those at the chosen multiplier (seed 0's sweep run and the seeds > 0). A sweep still
    lacking a run of ``lr_grid`` or a score reports nothing for that method yet.
    """
    from smartfed_bench.presets import METHOD_LR, lr_tag

    groups: dict[tuple[str, str, str], list[tuple[RunSpec, Path]]] = {}
    keep: list[tuple[RunSpec, Path]] = []
    for spec, run_dir in cells:
        if spec.lr_mult is None or spec.variant != "main":  # only main sweeps
            keep.append((spec, run_dir))
        else:
            groups.setdefault((spec.task, spec.variant, spec.method), []).append((spec, run_dir))
    sweep: dict[str, Any] = {}
    for (task, variant, method), runs in groups.items():
        base = rate(method) if rate else METHOD_LR.get(method, 2e-3)
        grid = [
            {
                "mult": spec.lr_mult,
                "lr": _run_config(d).get("learning_rate", base * float(spec.lr_mult or 1.0)),
                "val_tf_em": _final_of(d, "val_tf_em"),
                "val_tf_loss": _final_of(d, "val_tf_loss"),
                "eval_tf_em": _final_of(d, "eval_tf_em"),
                "run": str(d),
            }
            for spec, d in sorted(runs, key=lambda c: float(c[0].lr_mult or 0))
            if spec.seed == 0
        ]
        have = {lr_tag(float(g["mult"])) for g in grid}
        grid += [
            {"mult": float(f"{m:.3g}"), "lr": base * m, "val_tf_em": None, "run": None}
            for m in lr_grid
            if lr_tag(m) not in have
        ]
        grid.sort(key=lambda g: float(g["mult"]))
        chosen = st.choose_rate(grid)
        sweep.setdefault(task, {}).setdefault(variant, {})[method] = {
            "grid": grid,
            "chosen_mult": chosen,
            "chosen_lr": next((g["lr"] for g in grid if g["mult"] == chosen), None),
        }
        keep += [(s, d) for s, d in runs if chosen is not None and s.lr_mult == chosen]
    return sweep, keep


def _final_of(run_dir: Path, key: str) -> float | None:
    if not (run_dir / "summary.json").is_file():
        return None
    return _last(RunDir(run_dir).metrics(), key)


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
        if any("eval_tf_em" in m["final"] for m in methods.values()):
            out[task]["to_target_eval_tf_em"] = st.to_target(methods, REFERENCE, "eval_tf_em")
            out[task]["to_target_eval_tf_loss"] = st.to_target(methods, REFERENCE, "eval_tf_loss")
        out[task]["paired"] = paired(methods, (metric, *FINAL_KEYS[:2], "eval_loss"))
        wire = wire_table(entry["variants"], metric)
        if wire:
            out[task]["wire"] = wire
    return out


FULL_ROUTER = "full_fp32"
"""The name of the reference setting (the ``main`` variant's ``smartfed``: the paper's router)."""


def wire_table(variants: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Router-size / wire-encoding settings of one task: cost and quality against the full router.

    Per setting (``full_fp32`` = the ``main`` variant's ``smartfed``, then every ``wire_<name>``
    variant that has ``smartfed`` runs): ``mb_per_round`` (serialized MB up + down per round, mean
    over seeds), ``per_round_vs_fedit`` (FedIT's bytes per round / the setting's), the final
    ``eval_tf_em`` / ``<metric>`` / ``eval_tf_loss`` with their CIs, ``paired_vs_full`` (setting
    minus the full router, paired over seeds, 95% t CI), and ``to_fedit_quality``: the bytes
    ratio to reach FedIT's final teacher-forced exact match (FedIT's bytes / the setting's).
    """
    main = variants.get("main", {}).get("methods", {})
    full = main.get("smartfed")
    if not full:
        return {}
    settings = {FULL_ROUTER: full} | {
        v.removeprefix("wire_"): e["methods"]["smartfed"]
        for v, e in variants.items()
        if v.startswith("wire_") and "smartfed" in e.get("methods", {})
    }
    if len(settings) == 1:
        return {}
    fedit = main.get(REFERENCE)
    keys = ("eval_tf_em", metric, "eval_tf_loss")
    reach = st.to_target({**settings, REFERENCE: fedit}, REFERENCE, "eval_tf_em") if fedit else {}
    fedit_mb = (fedit or {}).get("bytes_per_round", {}).get("mean")
    out: dict[str, Any] = {}
    for name, m in settings.items():
        mb = m["bytes_per_round"]["mean"]
        out[name] = {
            "seeds": m["seeds"],
            "mb_per_round": mb * 1e-6 if mb else None,
            "per_round_vs_fedit": fedit_mb / mb if fedit_mb and mb else None,
            "final": {k: m["final"][k] for k in keys if k in m["final"]},
            "paired_vs_full": {
                k: st.paired_ci(m["final"][k]["per_seed"], full["final"][k]["per_seed"])
                for k in keys
                if name != FULL_ROUTER and k in m["final"] and k in full["final"]
            },
            "to_fedit_quality": reach.get(name),
        }
    return out


PAIRED_AGAINST = ("smartfed_no_eeqa", "mole", "pool_fedit", "fedit")
"""[D] The comparisons with a paired 95% CI: SmartFed minus each of these, per task."""


def paired(methods: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``{key: {"smartfed - <other>": paired t CI over seeds}}`` of the final values."""
    ours = methods.get("smartfed")
    if not ours:
        return {}
    out: dict[str, Any] = {}
    for key in keys:
        if key not in ours["final"]:
            continue
        for other in PAIRED_AGAINST:
            if other in methods and key in methods[other]["final"]:
                out.setdefault(key, {})[f"smartfed - {other}"] = st.paired_ci(
                    ours["final"][key]["per_seed"], methods[other]["final"][key]["per_seed"]
                )
    return out


def write_bench_outputs(
    results_path: Path,
    preset: str,
    cells: Sequence[tuple[RunSpec, Path]],
    failed: Sequence[tuple[RunSpec, str]],
    pools: Mapping[int, Mapping[str, Path]],
) -> dict[str, Any]:
    """Write ``<results>.json``, ``<results>.md`` and the PNGs beside it; return the JSON."""
    from smartfed_bench.render import render_markdown, render_plots

    results = collect(preset, cells, failed, pools)
    results["derived"] = derive(results)
    atomic_write_json(results_path, results)
    images = render_plots(results, results_path.parent / results_path.stem, cells)
    atomic_write_text(
        results_path.with_suffix(".md"), render_markdown(results, images, results_path)
    )
    return results
