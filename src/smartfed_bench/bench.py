"""``smartfed bench``: every method on the same splits, seeds, evaluator and byte counter.

A bench is a grid of runs (task x variant x method x seed). Every run is an ordinary ``smartfed
train`` run directory under ``<output_dir>/<task>/<variant>/<method>/seed<k>``, started in its own
process (a fresh Flower simulation, no model cache shared between methods). A finished run is
reused and an interrupted one resumed, so an interrupted bench continues where it stopped. The
results JSON is rebuilt from the run directories after every run.

Variants [D] (docs/cpu-mini.md, :data:`VARIANTS`): ``main`` (the relevant pool), ``irrelevant`` (a
pool of irrelevant LoRAs), ``random`` (the relevant LoRAs' shapes and norms, random weights),
``data10`` (10% of the training rows [P: the paper's data-efficiency runs]), and run-config
variants (tuning attempts, cheaper router transfers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartfed.config import ModelConfig, RunConfig, Scalar
from smartfed.errors import ConfigError, SmartFedError
from smartfed.log import get_logger
from smartfed.model.dtype import resolve_model_config
from smartfed_bench.presets import (  # noqa: F401 - re-exported: the bench's grid
    ALL_ROUTED,
    COMMON,
    LR_GRID,
    METHOD_LR,
    ONE_ROUND,
    PRESETS,
    PRIMARY,
    ROUTER_METHODS,
    TRAINABLE,
    V2,
    V2_TASKS,
    VARIANTS,
    Cell,
    Preset,
    RunSpec,
    get_preset,
    lr_tag,
    v2_tasks,
)

log = get_logger(__name__)


def plan(
    preset: Preset,
    methods: Sequence[str] = (),
    tasks: Sequence[str] = (),
    seeds: int = 0,
    variants: Sequence[str] | None = None,
) -> list[RunSpec]:
    """The runs of a preset, optionally narrowed; seeds outermost so every cell gets seed 0 first
    (a preset with a learning-rate sweep: tasks outermost, then seeds, so each task's comparison
    is complete before the next task starts).

    ``tasks`` not in the preset get the cells of its primary task; ``seeds`` > 0 replaces every
    cell's seed count.

    Raises:
        ConfigError: an unknown method, task or variant.
    """
    from smartfed.methods import METHODS
    from smartfed_bench.cpu_mini import SUITE

    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: {m!r} is not a method; choose from {sorted(METHODS)}")
    for t in tasks:
        if t not in SUITE:
            raise ConfigError(
                f"--tasks: {t!r} is not a cpu-mini composite; choose from {sorted(SUITE)}"
            )
    for v in variants or ():
        if v not in VARIANTS:
            raise ConfigError(f"--variants: {v!r} is unknown; choose from {', '.join(VARIANTS)}")
    cells: list[Cell] = []
    for task in tasks or preset.tasks:
        own = [c for c in preset.cells if c.task == task]
        template = own or [c for c in preset.cells if c.task == preset.tasks[0]]
        cells += [dataclasses.replace(c, task=task) for c in template]
    cells = [c for c in cells if variants is None or c.variant in variants]
    out: list[RunSpec] = []
    for seed in range(max(seeds or c.seeds for c in cells) if cells else 0):
        for c in cells:
            if seed < (seeds or c.seeds):
                for m in c.methods:
                    if methods and m not in methods:
                        continue
                    if preset.sweeps(m) and seed == 0 and c.variant == "main":
                        out += [RunSpec(c.task, c.variant, m, 0, x) for x in preset.lr_grid]
                    else:
                        out.append(RunSpec(c.task, c.variant, m, seed))
    if preset.lr_grid:  # a tuned preset finishes one task (sweep, then seeds) before the next
        order = list(dict.fromkeys(c.task for c in cells))
        out.sort(key=lambda s: order.index(s.task))
    return out


def needed_skills(specs: Sequence[RunSpec]) -> list[str]:
    """The skill LoRAs the grid routes over (controls only if a control variant runs)."""
    from smartfed_bench.cpu_mini import SUITE

    out: list[str] = []
    for spec in specs:
        comp = SUITE[spec.task]
        for skill in comp.irrelevant if spec.variant == "irrelevant" else comp.skills:
            if skill not in out:
                out.append(skill)
    return out


def pool_sources(spec: RunSpec, skill_dirs: Mapping[str, Path], work: Path) -> list[str]:
    """The LoRA pool of a run: relevant skills, control skills, or random-like copies."""
    from smartfed_bench.cpu_mini import SUITE
    from smartfed_bench.synthetic import random_like_adapter

    comp = SUITE[spec.task]
    if spec.variant == "irrelevant":
        return [str(skill_dirs[s]) for s in comp.irrelevant]
    relevant = [skill_dirs[s] for s in comp.skills]
    if spec.variant == "random":
        return [
            str(
                random_like_adapter(
                    d,
                    work / "random_pools" / f"{d.name}-seed{spec.seed}",
                    seed=1000 + 17 * spec.seed + i,
                )
            )
            for i, d in enumerate(relevant)
        ]
    return [str(d) for d in relevant]


def run_config(
    spec: RunSpec,
    model_cfg: ModelConfig,
    pool: Sequence[str],
    run_dir: Path,
    overrides: Mapping[str, Scalar] = {},  # noqa: B006 - read only
    rate: float | None = None,
) -> RunConfig:
    """The ``smartfed train`` config of one grid cell (``rate``: the method's base learning rate,
    default :data:`METHOD_LR`; times the spec's sweep multiplier)."""
    base = METHOD_LR.get(spec.method, 2e-3) if rate is None else rate
    flat: dict[str, Scalar] = {
        **COMMON,
        "learning_rate": base * (spec.lr_mult or 1.0),
        **overrides,
        "model_name_or_path": model_cfg.model_name_or_path,
        "dtype": model_cfg.dtype,
        "cache_dir": model_cfg.cache_dir,
        "method": spec.method,
        "seed": spec.seed,
        "task": spec.task,
        "lora_pool": ",".join(pool),
        "output_dir": str(run_dir),
    }
    flat.update(VARIANTS[spec.variant])
    if spec.method in ONE_ROUND:
        flat["num_rounds"] = 1
    return RunConfig.from_flat(flat)


def run_one(cfg: RunConfig) -> None:
    """Run (or finish) one grid cell in a child process; a finished one is left as it is.

    Raises:
        SmartFedError: the child failed (its log is in ``<run_dir>.log``).
    """
    run_dir = Path(cfg.output_dir)
    state = run_state(run_dir, cfg.fed.num_rounds)
    if state != "empty":
        check_same_protocol(run_dir, cfg)
    if state == "done":
        return
    if state == "empty" and run_dir.exists():
        shutil.rmtree(run_dir)  # started, but no round checkpointed: nothing to keep
    cfg = dataclasses.replace(cfg, resume=state == "partial")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    request = run_dir.parent / f".{run_dir.name}.request.json"
    request.write_text(cfg.to_json(), encoding="utf-8")
    logfile = run_dir.parent / f"{run_dir.name}.log"
    with open(logfile, "a", encoding="utf-8") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "smartfed_bench.bench", str(request)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
            # [D] one torch thread per process unless the user set it: the simulation's clients
            # and the server share the cores, and oversubscribed OpenMP threads spin-wait
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
    if proc.returncode != 0 or run_state(run_dir, cfg.fed.num_rounds) != "done":
        raise SmartFedError(f"bench run {run_dir} failed (exit {proc.returncode}); see {logfile}")


RUNTIME_KEYS = frozenset(
    {
        "output_dir",
        "resume",
        "model.cache_dir",
        "model.device",
        "eval.eval_threads",
        "train.report_to",
        "fed.client_cpus",
        "fed.client_gpus",
        "fed.track_energy",
        "fed.country_iso_code",
        "pool.registry",
    }
)
"""Run-config keys that change where or how fast a run executes, not what it computes: a finished
run is reused whatever they were."""


def protocol_differences(stored: RunConfig, wanted: RunConfig) -> list[str]:
    """``key: stored -> wanted`` for every run-config key outside :data:`RUNTIME_KEYS` that
    differs; the pool compares by adapter folder names (their digests cover base model, dtype,
    recipe and seed), not by the cache folder they sit in."""
    a, b = stored.to_flat(), wanted.to_flat()
    out = []
    for key in sorted(a.keys() - RUNTIME_KEYS):
        x, y = a[key], b.get(key)
        if key == "pool.lora_pool":
            x, y = _pool_names(str(x)), _pool_names(str(y))
        if x != y:
            out.append(f"{key}: {x!r} -> {y!r}")
    return out


def _pool_names(sources: str) -> list[str]:
    return [Path(s).name for s in sources.split(",") if s]


def check_same_protocol(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to reuse or resume a run made with other settings than ``cfg``'s.

    Raises:
        ConfigError: its ``config.json`` differs in a key that changes the result.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        return
    stored = RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    diff = protocol_differences(stored, cfg)
    if diff:
        raise ConfigError(
            f"{run_dir} was run with other settings than this bench asks for "
            f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}): use another "
            "--output_dir, or remove that run to redo it"
        )


def discover(output_dir: Path) -> list[tuple[RunSpec, Path]]:
    """Every run directory under a bench output dir (``<task>/<variant>/<method>/seed<k>``, and
    ``<task>/<variant>/<method>/lr-x<mult>/seed<k>`` for a swept method).

    The results are rebuilt from all of them, so benches run separately into one output dir
    (e.g. more seeds later) add up in one results JSON.
    """
    found: list[tuple[RunSpec, Path]] = []
    root = Path(output_dir)
    for pattern in ("*/*/*/seed*/config.json", "*/*/*/lr-x*/seed*/config.json"):
        for cfg in sorted(root.glob(pattern)):
            run_dir = cfg.parent
            parts = run_dir.relative_to(root).parts
            task, variant, method = parts[:3]
            mult = float(parts[3].removeprefix("lr-x")) if len(parts) == 5 else None
            seed = run_dir.name.removeprefix("seed")
            if variant in VARIANTS and seed.isdigit():
                found.append((RunSpec(task, variant, method, int(seed), mult), run_dir))
    return found


def sweep_scores(output_dir: Path, spec: RunSpec, grid: Sequence[float]) -> list[dict[str, Any]]:
    """The seed-0 sweep of ``spec``'s method and cell: one dict per multiplier.

    Each: ``mult``, ``val_tf_em`` / ``val_tf_loss`` (the selection score, after the last round;
    ``None`` while the run is not complete) and ``run`` (its directory).
    """
    out = []
    for mult in grid:
        run_dir = Path(output_dir) / dataclasses.replace(spec, seed=0, lr_mult=mult).subdir()
        last = _last_row(run_dir)
        out.append(
            {
                "mult": mult,
                "val_tf_em": last.get("val_tf_em"),
                "val_tf_loss": last.get("val_tf_loss"),
                "run": str(run_dir),
            }
        )
    return out


def _last_row(run_dir: Path) -> dict[str, Any]:
    from smartfed.io.rundir import RunDir

    if not (run_dir / "summary.json").is_file():
        return {}
    rows = RunDir(run_dir).metrics()
    return dict(rows[-1]) if rows else {}


def resolve_rate(spec: RunSpec, preset: Preset, output_dir: Path) -> RunSpec | None:
    """``spec`` with its learning-rate multiplier: the ``main`` variant's sweep choice for a swept
    method's seed > 0 and for its other variants, ``None`` while that sweep is incomplete; any
    other spec unchanged."""
    from smartfed_bench.stats import choose_rate

    if spec.lr_mult is not None or not preset.sweeps(spec.method):
        return spec
    main = dataclasses.replace(spec, variant="main")  # other variants reuse main's choice
    chosen = choose_rate(sweep_scores(output_dir, main, preset.lr_grid))
    return None if chosen is None else dataclasses.replace(spec, lr_mult=chosen)


def run_state(run_dir: Path, num_rounds: int) -> str:
    """``done`` (summary with every round), ``partial`` (a checkpoint to resume) or ``empty``."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        rounds = json.loads(summary.read_text(encoding="utf-8")).get("rounds", 0)
        if rounds >= num_rounds:
            return "done"
    if (run_dir / "checkpoint" / "latest.json").is_file():
        return "partial"
    return "empty"


@dataclass
class BenchResult:
    """What :func:`run_bench` did."""

    results_path: Path
    ran: list[RunSpec]
    failed: list[tuple[RunSpec, str]]
    seconds: float


def run_bench(
    preset_name: str,
    output_dir: str | Path,
    results_path: str | Path,
    model_cfg: ModelConfig | None = None,
    *,
    methods: Sequence[str] = (),
    tasks: Sequence[str] = (),
    seeds: int = 0,
    variants: Sequence[str] | None = None,
    overrides: Mapping[str, Scalar] | None = None,
    on_run: Callable[[int, int, RunSpec], None] | None = None,
    progress: bool = True,
) -> BenchResult:
    """Build the pool (cached), run every grid cell, write the results JSON, table and plots.

    A failed run is logged and recorded (``failed`` in the JSON); the others go on.

    Raises:
        ConfigError: unknown preset, method, task or variant.
    """
    from smartfed_bench.pools import ensure_cpu_mini_pool
    from smartfed_bench.report import write_bench_outputs

    preset = get_preset(preset_name)
    model_cfg = resolve_model_config(model_cfg or ModelConfig(dtype=preset.dtype))  # type: ignore[arg-type]
    over = {**preset.overrides, **(overrides or {})}
    specs = plan(preset, methods, tasks, seeds, variants)
    out = Path(output_dir)
    t0 = time.perf_counter()
    pools = {
        ps: ensure_cpu_mini_pool(
            model_cfg,
            cache_dir=model_cfg.cache_dir,
            skills=needed_skills(specs),
            seed=ps,
            progress=progress,
        )
        for ps in sorted({preset.pool_seed(s.seed) for s in specs})
    }
    failed: list[tuple[RunSpec, str]] = []
    for i, planned in enumerate(specs):
        if on_run:
            on_run(i, len(specs), planned)
        spec = resolve_rate(planned, preset, out)
        if spec is None:
            failed.append((planned, "its learning-rate sweep (seed 0) is incomplete"))
            continue
        run_dir = out / spec.subdir()
        skill_dirs = pools[preset.pool_seed(spec.seed)]
        sources = pool_sources(spec, skill_dirs, out)
        cfg = run_config(spec, model_cfg, sources, run_dir, over, preset.rate(spec.method))
        try:
            run_one(cfg)
        except ConfigError:
            raise  # a run made with other settings: the user's choice, not a failed run
        except SmartFedError as err:
            log.error("%s", err)
            failed.append((spec, str(err)))
        try:
            write_bench_outputs(Path(results_path), preset_name, discover(out), failed, pools)
        except Exception:  # noqa: BLE001 - a report bug must not stop hours of runs
            log.exception("could not write the bench results; rebuild them with --report_only")
    return BenchResult(Path(results_path), specs, failed, time.perf_counter() - t0)


def rebuild_results(
    preset_name: str, output_dir: str | Path, results_path: str | Path, model_cfg: ModelConfig
) -> Path:
    """Rewrite the results JSON, table and plots from the run dirs already in ``output_dir``.

    Raises:
        ConfigError: unknown preset, or no run directory under ``output_dir``.
    """
    from smartfed_bench.pools import ensure_cpu_mini_pool
    from smartfed_bench.report import write_bench_outputs

    preset = get_preset(preset_name)
    model_cfg = resolve_model_config(model_cfg)
    cells = discover(Path(output_dir))
    if not cells:
        raise ConfigError(f"--output_dir {output_dir}: no bench run directories to report on")
    skills = needed_skills([spec for spec, _ in cells])
    pools = {
        ps: ensure_cpu_mini_pool(model_cfg, cache_dir=model_cfg.cache_dir, skills=skills, seed=ps)
        for ps in sorted({preset.pool_seed(spec.seed) for spec, _ in cells})
    }
    write_bench_outputs(Path(results_path), preset_name, cells, [], pools)
    return Path(results_path)


if __name__ == "__main__":  # pragma: no cover - the child process of run_one
    from smartfed.recipes.train import run_request

    sys.exit(run_request(sys.argv[1]))
