"""``smartfed demo`` (``make demo``): SmartFed, FedIT and a merge on one cpu-mini task, short.

The quickstart: two skill LoRAs (shipped with the package, see :mod:`smartfed_bench.packaged`;
trained and cached when the shipped ones do not match), then three short federated runs through
Flower's simulation, each in its own process, with one progress line per round. A finished run is
reused (and said so); an interrupted one resumes. The result is a small table with a legend,
written to ``<output_dir>/demo.md`` and ``demo.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.config import ModelConfig, RunConfig, Scalar
from smartfed.errors import SmartFedError
from smartfed.files import atomic_write_json, atomic_write_text
from smartfed.log import get_logger
from smartfed_bench.presets import (
    COMMON,
    DEMO_METHODS,
    DEMO_OVERRIDES,
    METHOD_LR,
    ONE_ROUND,
    PRIMARY,
)

log = get_logger(__name__)

TASK = PRIMARY
"""The demo's composite: Chinese instructions -> Python; digits 7-9 only in the Chinese LoRA."""
METHODS = DEMO_METHODS
RUN: dict[str, Scalar] = {**COMMON, **DEMO_OVERRIDES, "seed": 0}
"""[D] The bench's protocol, short (``smartfed bench --preset demo`` runs the same configs)."""
LEGEND = (
    "accuracy: execution accuracy of the generated programs on the eval rows after the last round "
    "(n rows; ±0.2 at n=25).",
    "held-out loss: response loss on held-out training rows after the last round.",
    "MB/round, MB total: bytes sent up and down, counted from the serialized Flower messages.",
    "rounds to FedIT loss: first round whose held-out loss is <= FedIT's final one "
    "(`never` if none; merge trains nothing and runs one round).",
    "The pool: the two skill LoRAs of the task (Chinese, code); only SmartFed routes over their "
    "rank-one experts, merge averages them, FedIT trains a new LoRA.",
)
"""Printed under the table: what every column means."""


@dataclass
class DemoRun:
    """One method's run of the demo."""

    method: str
    run_dir: Path
    reused: bool = False
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def demo_pool(model_cfg: ModelConfig, progress: bool = True) -> dict[str, Path]:
    """The task's skill LoRAs: cached ones in this dtype, else the shipped ones (built from the
    same recipe on the same base model, in any dtype: the bfloat16-trained LoRAs serve a float32
    base too), else trained."""
    from smartfed_bench.cpu_mini import SUITE
    from smartfed_bench.pools import ensure_cpu_mini_pool

    skills = SUITE[TASK].skills
    return ensure_cpu_mini_pool(
        model_cfg,
        cache_dir=model_cfg.cache_dir,
        skills=skills,
        progress=progress,
        shipped_any_dtype=True,
    )


def run_config(method: str, model_cfg: ModelConfig, pool: Sequence[Path], out: Path) -> RunConfig:
    """The ``smartfed train`` config of one demo run."""
    flat: dict[str, Scalar] = {
        **RUN,
        "learning_rate": METHOD_LR[method],
        "model_name_or_path": model_cfg.model_name_or_path,
        "dtype": model_cfg.dtype,
        "cache_dir": model_cfg.cache_dir,
        "method": method,
        "task": TASK,
        "lora_pool": ",".join(str(p) for p in pool),
        "output_dir": str(out / method),
    }
    if method in ONE_ROUND:
        flat["num_rounds"] = 1
    return RunConfig.from_flat(flat)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Complete ``metrics.jsonl`` rows (a line being appended is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def finished(cfg: RunConfig) -> bool:
    """The run directory holds a summary with every round."""
    path = Path(cfg.output_dir) / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text(encoding="utf-8"))
    return bool(summary.get("rounds", 0) >= cfg.fed.num_rounds)


def same_config(cfg: RunConfig) -> bool:
    """The run directory was made by this very config (``resume`` aside), so it may be reused."""
    path = Path(cfg.output_dir) / "config.json"
    try:
        old = RunConfig.load_json(path).to_flat()
    except SmartFedError:
        return False
    new = cfg.to_flat()
    return all(old.get(k) == v for k, v in new.items() if k != "resume")


def round_line(row: Mapping[str, Any], num_rounds: int) -> str:
    """``round 2/3: train loss 0.412, held-out 0.388, 2.97 MB, 41 s``."""
    loss = row.get("train_loss")
    held = row.get("eval_loss")
    parts = [f"round {row.get('round')}/{num_rounds}:"]
    parts.append(f"train loss {loss:.3f}," if isinstance(loss, int | float) else "train loss -,")
    if isinstance(held, int | float):
        parts.append(f"held-out {held:.3f},")
    mb = (row.get("bytes_up", 0) + row.get("bytes_down", 0)) / 1e6
    parts.append(f"{mb:.2f} MB, {row.get('wall_s', 0):.0f} s")
    return " ".join(parts)


def run_one(cfg: RunConfig, say: Callable[[str], None], poll_s: float = 2.0) -> float:
    """Run (or resume) one demo run in a child process, reporting each round; return seconds.

    Raises:
        SmartFedError: the child failed (its log is ``<run_dir>.log``).
    """
    run_dir = Path(cfg.output_dir)
    resume = (run_dir / "checkpoint").is_dir()
    if run_dir.exists() and not resume:
        import shutil

        shutil.rmtree(run_dir)  # started, but no round checkpointed: nothing to keep
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    request = run_dir.parent / f".{run_dir.name}.request.json"
    atomic_write_text(request, RunConfig.from_flat({"resume": resume}, base=cfg).to_json())
    logfile = run_dir.parent / f"{run_dir.name}.log"
    t0 = time.perf_counter()
    seen = len(read_rows(run_dir))
    with open(logfile, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smartfed_bench.demo", str(request)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
        while True:
            code = proc.poll()
            rows = read_rows(run_dir)
            for row in rows[seen:]:
                say("    " + round_line(row, cfg.fed.num_rounds))
            seen = len(rows)
            if code is not None:
                break
            time.sleep(poll_s)
    if code != 0 or not finished(cfg):
        raise SmartFedError(f"demo run {run_dir} failed (exit {code}); see {logfile}")
    return time.perf_counter() - t0


def run_demo(
    output_dir: str | Path,
    model_cfg: ModelConfig | None = None,
    say: Callable[[str], None] = lambda _line: None,
) -> list[DemoRun]:
    """Build or reuse the pool, run every method (reusing finished runs), write the table.

    ``model_cfg.dtype auto`` is resolved once here (float32 on a CPU without bf16 matrix
    instructions; :mod:`smartfed.model.dtype`), so the runs' configs, their reuse check and the
    pool lookup all see the concrete dtype; the shipped skill LoRAs serve any dtype.

    Raises:
        SmartFedError: bad model/pool input or a run that failed.
    """
    from smartfed.model.dtype import resolve_model_config  # torch

    model_cfg = resolve_model_config(model_cfg or ModelConfig())
    out = Path(output_dir)
    t0 = time.perf_counter()
    pool = demo_pool(model_cfg)
    say(f"pool: {', '.join(p.name for p in pool.values())} ({time.perf_counter() - t0:.0f} s)")
    runs = []
    for i, method in enumerate(METHODS, 1):
        cfg = run_config(method, model_cfg, list(pool.values()), out)
        run = DemoRun(method, Path(cfg.output_dir))
        if run.run_dir.exists() and not same_config(cfg):
            import shutil

            say(f"[{i}/{len(METHODS)}] {method}: {run.run_dir} was made with another config: rerun")
            shutil.rmtree(run.run_dir)
        if finished(cfg):
            run.reused = True
            say(f"[{i}/{len(METHODS)}] {method}: reused the finished run in {run.run_dir}")
        else:
            say(f"[{i}/{len(METHODS)}] {method}: {cfg.fed.num_rounds} rounds ...")
            run.seconds = run_one(cfg, say)
        run.rows = read_rows(run.run_dir)
        run.summary = json.loads((run.run_dir / "summary.json").read_text(encoding="utf-8"))
        runs.append(run)
    table = render_table(runs)
    atomic_write_text(out / "demo.md", table + "\n")
    atomic_write_json(out / "demo.json", {"task": TASK, "runs": [_record(r) for r in runs]})
    return runs


def _record(run: DemoRun) -> dict[str, Any]:
    return {
        "method": run.method,
        "run_dir": str(run.run_dir),
        "reused": run.reused,
        "seconds": round(run.seconds, 1),
        "summary": {k: v for k, v in run.summary.items() if k != "final_quotas"},
    }


def accuracy_of(summary: Mapping[str, Any]) -> tuple[float | None, Any]:
    """The run's final task accuracy and its n (``summary.json``'s ``final_<metric>``)."""
    for key, value in summary.items():
        if key.startswith("final_") and key.endswith("accuracy") and isinstance(value, int | float):
            return float(value), summary.get("final_eval_n")
    return None, None


def rounds_to(rows: Sequence[Mapping[str, Any]], target: float | None) -> str:
    """First round whose held-out loss is <= ``target``; ``never`` / ``-`` otherwise."""
    if target is None:
        return "-"
    for row in rows:
        loss = row.get("eval_loss")
        if isinstance(loss, int | float) and loss <= target:
            return str(row["round"])
    return "never"


def render_table(runs: Sequence[DemoRun]) -> str:
    """The Markdown table of the demo and its legend."""
    fedit = next((r for r in runs if r.method == "fedit"), None)
    target = fedit.summary.get("final_eval_loss") if fedit else None
    lines = [
        f"### smartfed demo: `{TASK}` ({RUN['num_rounds']} rounds, seed {RUN['seed']})",
        "",
        "| method | accuracy (n) | held-out loss | MB/round | MB total | wall s "
        "| rounds to FedIT loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run.summary
        acc, n = accuracy_of(s)
        rounds = max(int(s.get("rounds", 0)), 1)
        held = s.get("final_eval_loss")
        mb = s.get("bytes_total", 0) / 1e6
        lines.append(
            f"| `{run.method}` | {'-' if acc is None else f'{acc:.2f} ({n})'} | "
            f"{'-' if held is None else f'{held:.4f}'} | {mb / rounds:.2f} | {mb:.2f} | "
            f"{s.get('wall_s', 0):.0f} | {rounds_to(run.rows, target)} |"
        )
    lines += ["", *(f"- {line}" for line in LEGEND)]
    reused = [r.method for r in runs if r.reused]
    if reused:
        lines.append(
            f"- Reused finished runs: {', '.join(reused)} (delete the output folder to rerun)."
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - the child process of run_one
    from smartfed.recipes.train import run_request

    sys.exit(run_request(sys.argv[1]))


PACKAGE_COMMAND = "smartfed pool package"
"""The one command that rebuilds the LoRAs shipped with the package (README, "Set-up")."""


def package_pool(
    model_cfg: ModelConfig | None = None,
    skills: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    root: Path | None = None,
) -> list[Path]:
    """Build (or take from the cache) the demo's skill LoRAs and copy them into the package.

    Each is recorded in ``packaged_pools/cpu-mini/manifest.json`` with its recipe, recipe hash,
    sha256, base model, concrete dtype (``auto`` is resolved here), seed, versions, date and this
    command with ``--dtype`` set to the dtype they were trained in (they serve every dtype of the
    base model, but another dtype trains other LoRAs).

    Raises:
        ConfigError: an unknown skill.
    """
    from smartfed.meta import run_meta
    from smartfed.model.base import cache_root
    from smartfed.model.dtype import resolve_model_config
    from smartfed.train.skill_lora import RECORD_FILE, train_skill_lora
    from smartfed_bench.cpu_mini import SUITE
    from smartfed_bench.packaged import PACKAGED_ROOT, package_adapter
    from smartfed_bench.pools import cpu_mini_recipe, recipe_hash

    model_cfg = resolve_model_config(model_cfg or ModelConfig())
    meta = run_meta(engine="none")
    out = []
    for skill in skills or SUITE[TASK].skills:
        recipe = cpu_mini_recipe(skill, seed)
        digest = recipe_hash(model_cfg, recipe)
        built = cache_root(model_cfg.cache_dir) / "pools" / "cpu-mini"
        built = built / f"{skill.removeprefix('cpu_mini.')}-{digest}"
        if not (built / RECORD_FILE).is_file():
            train_skill_lora(model_cfg, recipe, built, resume=True, progress=progress)
        record = json.loads((built / RECORD_FILE).read_text(encoding="utf-8"))
        provenance = {
            "model": model_cfg.model_name_or_path,
            "dtype": model_cfg.dtype,
            "seed": seed,
            "command": f"{PACKAGE_COMMAND} --dtype {model_cfg.dtype}"
            + (f" --seed {seed}" if seed else ""),
            "heldout_loss": record.get("heldout_loss"),
            "initial_heldout_loss": record.get("initial_heldout_loss"),
            "train_seconds": record.get("seconds"),
            "built": {k: meta[k] for k in ("date", "machine", "versions") if k in meta},
        }
        out.append(
            package_adapter(
                "cpu-mini", skill, built, recipe.key(), digest, provenance, root or PACKAGED_ROOT
            )
        )
    return out
