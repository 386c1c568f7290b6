"""``smartfed bench`` on the tiny model: the grid runs through the real runtime, the results JSON
aggregates it, a rerun reuses finished runs, and bad flags fail with one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from smartfed.cli.main import main
from smartfed.config import ModelConfig
from smartfed_bench.bench import PRESETS, RunSpec, needed_skills, plan

TINY_RUN = {
    "num_clients": 2,
    "num_rounds": 2,
    "local_steps": 1,
    "batch_size": 2,
    "heldout_examples": 4,
    "eval_every": 1,
    "eval_limit": 3,
    "max_new_tokens": 4,
    "track_energy": False,
}


def test_plan_orders_seeds_outermost_and_narrows() -> None:
    quick = PRESETS["quick"]
    specs = plan(quick)
    assert [s.seed for s in specs] == sorted(s.seed for s in specs)
    for cell in quick.cells:
        runs = [s for s in specs if (s.task, s.variant) == (cell.task, cell.variant)]
        assert len(runs) == cell.seeds * len(cell.methods)
    main = next(c for c in quick.cells if c.variant == "main")
    assert {s.seed for s in specs if s.variant == "main" and s.task == main.task} == {0, 1, 2}
    assert {"smartfed", "smartfed_no_eeqa", "fedit", "pool_fedit"} <= set(main.methods)
    assert {s.variant for s in specs} == {"main", "irrelevant", "random", "data10"}
    only = plan(
        quick,
        methods=["fedit"],
        seeds=1,
        variants=["main", "data10"],
        tasks=["cpu_mini.zh_code_gap"],
    )
    assert only == [RunSpec("cpu_mini.zh_code_gap", v, "fedit", 0) for v in ("main", "data10")]
    assert needed_skills(only) == ["cpu_mini.skill.zh", "cpu_mini.skill.code"]
    other = plan(quick, tasks=["cpu_mini.zh_math"], seeds=1, variants=["main"])
    assert {s.method for s in other} == set(main.methods) and {s.task for s in other} == {
        "cpu_mini.zh_math"
    }
    assert set(needed_skills(specs)) >= {"cpu_mini.skill.reverse", "cpu_mini.skill.sort"}


def test_bench_runs_grid_writes_results_and_reuses_runs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from smartfed_bench.bench import run_bench

    model = ModelConfig(
        model_name_or_path=str(tiny_model_dir), dtype="float32", cache_dir=str(tmp_path / "cache")
    )
    results = tmp_path / "res" / "cpu-mini.json"
    kwargs = {
        "methods": ["smartfed", "fedit"],
        "tasks": ["cpu_mini.zh_code_gap"],
        "seeds": 1,
        "variants": ["main", "random"],
        "overrides": TINY_RUN,
        "progress": False,
    }
    out = run_bench("quick", tmp_path / "runs", results, model, **kwargs)
    assert not out.failed, out.failed
    data = json.loads(results.read_text())
    task = data["tasks"]["cpu_mini.zh_code_gap"]
    assert task["metric"] == "execution_accuracy"
    main_methods = task["variants"]["main"]["methods"]
    assert set(main_methods) == {"smartfed", "fedit"}
    assert set(task["variants"]["random"]["methods"]) == {"smartfed"}
    for m in main_methods.values():
        assert [r["round"] for r in m["per_round"]] == [1, 2]
        assert m["bytes_total"]["mean"] > 0 and m["per_round"][1]["eval_loss"]["mean"] > 0
        assert m["final"]["execution_accuracy"]["n"] == 1
    # smartfed sends routers, fedit a LoRA: counted, and different
    assert (
        main_methods["smartfed"]["bytes_per_round"]["mean"]
        != main_methods["fedit"]["bytes_per_round"]["mean"]
    )
    assert data["derived"]["cpu_mini.zh_code_gap"]["to_target_loss"]["fedit"]["reached"]
    assert data["meta"]["seeds"] == [0] and "git_commit" in data["meta"]
    md = results.with_suffix(".md").read_text()
    assert "| `smartfed` |" in md and "random experts" in md
    assert (results.parent / "cpu-mini_zh_code_gap_curves.png").is_file()
    # a random-expert pool is not the relevant pool
    cfg_main = json.loads(
        (tmp_path / "runs/cpu_mini.zh_code_gap/main/smartfed/seed0/config.json").read_text()
    )
    cfg_rand = json.loads(
        (tmp_path / "runs/cpu_mini.zh_code_gap/random/smartfed/seed0/config.json").read_text()
    )
    assert cfg_main["pool"]["lora_pool"] != cfg_rand["pool"]["lora_pool"]
    summary = tmp_path / "runs/cpu_mini.zh_code_gap/main/fedit/seed0/summary.json"
    stamp = summary.stat().st_mtime_ns
    again = run_bench("quick", tmp_path / "runs", results, model, **kwargs)
    assert not again.failed and summary.stat().st_mtime_ns == stamp  # reused, not rerun


def _fake_run(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"rounds": len(rows)}))


def test_v2_sweeps_seed0_then_runs_the_chosen_rate(tmp_path: Path) -> None:
    from smartfed_bench.bench import discover, lr_tag, resolve_rate
    from smartfed_bench.report import select_swept

    v2 = PRESETS["v2"]
    specs = plan(v2, tasks=["cpu_mini.zh_code_gap"])
    seed0 = [s for s in specs if s.seed == 0]
    for m in ("smartfed", "smartfed_no_eeqa", "fedit", "pool_fedit", "mole"):
        assert sorted(s.lr_mult for s in seed0 if s.method == m) == sorted(v2.lr_grid)
        assert [s.lr_mult for s in specs if s.method == m and s.seed > 0] == [None, None]
    assert [s.lr_mult for s in seed0 if s.method == "merge"] == [None]  # nothing to tune
    assert len(v2.lr_grid) >= 3 and max(s.seed for s in specs) == 2
    assert {v2.pool_seed(k) for k in (0, 1, 2)} == {0, 1}  # two pools
    assert all(v2.pool_seed(k) != k for k in (0, 1, 2))  # pool seed != run seed
    assert v2.overrides["tf_eval_every"] == 1 and int(v2.overrides["eval_limit"]) >= 200
    full = plan(v2)
    tasks = [s.task for s in full]
    assert tasks == sorted(tasks, key=list(dict.fromkeys(tasks)).index)  # one task at a time
    later = next(s for s in specs if s.method == "fedit" and s.seed == 1)
    assert resolve_rate(later, v2, tmp_path) is None  # sweep not run yet
    for mult, em in zip(v2.lr_grid, (0.2, 0.6, 0.4), strict=True):
        rows = [{"round": 1, "eval_tf_em": em / 2}, {"round": 2, "val_tf_em": em}]
        _fake_run(tmp_path / RunSpec(later.task, "main", "fedit", 0, mult).subdir(), rows)
    chosen = resolve_rate(later, v2, tmp_path)
    assert chosen == RunSpec(later.task, "main", "fedit", 1, v2.lr_grid[1])
    assert lr_tag(v2.lr_grid[1]) in str(chosen.subdir())
    _fake_run(tmp_path / chosen.subdir(), [{"round": 1}, {"round": 2, "val_tf_em": 0.1}])
    sweep, keep = select_swept(discover(tmp_path))
    rec = sweep[later.task]["main"]["fedit"]
    assert rec["chosen_mult"] == v2.lr_grid[1] and math.isclose(rec["chosen_lr"], 2e-3)
    assert [g["val_tf_em"] for g in rec["grid"]] == [0.2, 0.6, 0.4]
    assert sorted(s.seed for s, _ in keep) == [0, 1]  # seed 0's final run is the sweep's


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bench", "--methods", "nope"], "not a method"),
        (["bench", "--tasks", "gsm8k"], "not a cpu-mini composite"),
        (["bench", "--variants", "main,odd"], "unknown"),
        (["bench", "--set", "num_rounds"], "KEY=VALUE"),
        (["bench", "--set", "no_such_key=1"], "unknown config key"),
    ],
)
def test_bench_bad_flags_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-q", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smartfed: error:") and fragment in err[0]
