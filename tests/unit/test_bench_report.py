"""A v2 results JSON from run directories: the sweep's choice, the reported runs at the chosen
rate, paired intervals, teacher-forced to-target figures, and the Markdown and curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from smartfed.config import RunConfig
from smartfed_bench.bench import LR_GRID, RunSpec, discover, plan, resolve_rate
from smartfed_bench.presets import get_preset
from smartfed_bench.report import write_bench_outputs

TASK = "cpu_mini.zh_code_gap"
ROUNDS = 4


def _write_run(root: Path, spec: RunSpec, level: float, val: float, nbytes: int = 1000) -> None:
    run_dir = root / spec.subdir()
    run_dir.mkdir(parents=True)
    rows = []
    for r in range(1, ROUNDS + 1):
        em = level * r / ROUNDS
        row = {
            "round": r,
            "bytes_up": nbytes,
            "bytes_down": nbytes,
            "wall_s": 2.0,
            "energy_kwh_clients": 1e-5,
            "energy_kwh_server": 1e-6,
            "train_loss": 1.0 / r,
            "eval_loss": 1.0 / r,
            "eval_tf_em": em,
            "eval_tf_loss": 2.0 - em,
        }
        if r == ROUNDS:
            row |= {"eval_execution_accuracy": min(1.0, em + 0.05), "val_tf_em": val}
            row |= {"val_tf_loss": 1.0}
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (run_dir / "summary.json").write_text(json.dumps({"rounds": ROUNDS}))
    cfg = RunConfig.from_flat(
        {
            "method": spec.method,
            "seed": spec.seed,
            "task": TASK,
            "learning_rate": 2e-3 * (spec.lr_mult or 1.0),
            "lora_pool": "pools/zh-1,pools/code-1",
        }
    )
    (run_dir / "config.json").write_text(cfg.to_json())


def test_v2_results_from_run_dirs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # seed 0 sweep: the middle rate wins on val (0.6) though x3 is best on eval (no eval peeking)
    for method, levels in (("smartfed", (0.5, 0.8, 0.9)), ("fedit", (0.2, 0.4, 0.45))):
        for mult, level, val in zip(LR_GRID, levels, (0.3, 0.6, 0.5), strict=True):
            _write_run(root, RunSpec(TASK, "main", method, 0, mult), level, val)
        for seed, shift in ((1, -0.05), (2, 0.02)):
            _write_run(root, RunSpec(TASK, "main", method, seed, 1.0), levels[1] + shift, 0.5)
    for seed in range(3):
        _write_run(root, RunSpec(TASK, "main", "merge", seed), 0.1, 0.1)
    for mult in LR_GRID[:2]:  # mole's sweep is missing its x3 run: no choice, nothing reported
        _write_run(root, RunSpec(TASK, "main", "mole", 0, mult), 0.9, 0.9)
    out = tmp_path / "res" / "v2.json"
    data = write_bench_outputs(out, "v2", discover(root), [], {})
    assert json.loads(out.read_text())["preset"] == "v2"
    sweep = data["sweep"][TASK]["main"]
    assert sweep["smartfed"]["chosen_mult"] == 1.0 and sweep["fedit"]["chosen_mult"] == 1.0
    assert math.isclose(sweep["fedit"]["grid"][0]["lr"], 2e-3 / 3)  # the rate the run used
    assert sweep["fedit"]["chosen_lr"] == 2e-3
    assert sweep["mole"]["chosen_mult"] is None and len(sweep["mole"]["grid"]) == 3
    assert sweep["mole"]["grid"][2]["val_tf_em"] is None
    methods = data["tasks"][TASK]["variants"]["main"]["methods"]
    assert set(methods) == {"smartfed", "fedit", "merge"}
    sf = methods["smartfed"]
    assert sf["seeds"] == [0, 1, 2] and all("lr-x1/" in r for r in sf["runs"])
    assert math.isclose(sf["final"]["eval_tf_em"]["mean"], 0.8 + (-0.05 + 0.02) / 3)
    assert [r["round"] for r in sf["per_round"]] == [1, 2, 3, 4]
    assert sf["per_round"][0]["eval_tf_em"]["ci95"] > 0
    paired = data["derived"][TASK]["paired"]
    diff = paired["eval_tf_em"]["smartfed - fedit"]
    assert diff["n"] == 3 and math.isclose(diff["mean"], 0.4) and diff["lo"] <= 0.4 <= diff["hi"]
    assert "execution_accuracy" in paired
    tt = data["derived"][TASK]["to_target_eval_tf_em"]
    assert math.isclose(tt["fedit"]["target"], 0.4 + (-0.05 + 0.02) / 3)
    assert 1.0 < tt["smartfed"]["round"] < 3.0 and tt["smartfed"]["ratio_rounds"] > 1
    assert data["protocol"]["pool_seed_of_run_seed"] == {"0": 1, "1": 0, "2": 1}
    assert "val_tf_em" in data["protocol"]["metrics"] and "command" in data["meta"]
    md = out.with_suffix(".md").read_text()
    assert "| `fedit` | 3 | 0.002 |" in md  # seeds, then the chosen learning rate
    assert "Paired differences" in md and "Learning-rate sweep" in md and "| `merge` |" in md
    assert (out.parent / "v2_zh_code_gap_curves.png").is_file()


def _main_sweeps(root: Path) -> None:
    """smartfed (chooses x1) and fedit (chooses x1) sweeps and seeds 1-2 in the main variant."""
    for method, levels in (("smartfed", (0.5, 0.8, 0.9)), ("fedit", (0.2, 0.4, 0.45))):
        for mult, level, val in zip(LR_GRID, levels, (0.3, 0.6, 0.5), strict=True):
            _write_run(root, RunSpec(TASK, "main", method, 0, mult), level, val)
        for seed, shift in ((1, -0.05), (2, 0.02)):
            _write_run(root, RunSpec(TASK, "main", method, seed, 1.0), levels[1] + shift, 0.5)


def test_wire_variants_run_at_the_main_sweeps_rate_without_their_own_sweep(tmp_path: Path) -> None:
    preset = get_preset("v2-wire")
    specs = plan(preset, tasks=[TASK])
    assert specs and {s.variant for s in specs} == {
        "wire_proj32_int8_delta_ef",
        "wire_proj64_int8_delta_ef",
    }
    assert {s.method for s in specs} == {"smartfed"} and {s.seed for s in specs} == {0, 1, 2}
    assert all(s.lr_mult is None for s in specs)  # no sweep of their own
    root = tmp_path / "runs"
    assert resolve_rate(specs[0], preset, root) is None  # main's sweep not there yet
    _main_sweeps(root)
    assert resolve_rate(specs[0], preset, root).lr_mult == 1.0  # main chose x1 on val


def test_wire_table_against_the_full_router_and_fedit(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _main_sweeps(root)
    for seed, shift in ((0, 0.0), (1, -0.05), (2, 0.02)):  # = smartfed's levels minus 0.02
        spec = RunSpec(TASK, "wire_proj64_int8_delta_ef", "smartfed", seed, 1.0)
        _write_run(root, spec, 0.8 + shift - 0.02, 0.5, nbytes=100)
    out = tmp_path / "res" / "v2.json"
    data = write_bench_outputs(out, "v2", discover(root), [], {})
    assert "wire_proj64_int8_delta_ef" not in data["sweep"].get(TASK, {})  # reported, not swept
    wire = data["derived"][TASK]["wire"]
    assert list(wire) == ["full_fp32", "proj64_int8_delta_ef"]
    cheap, full = wire["proj64_int8_delta_ef"], wire["full_fp32"]
    assert math.isclose(cheap["mb_per_round"], 200e-6) and math.isclose(full["mb_per_round"], 2e-3)
    assert math.isclose(cheap["per_round_vs_fedit"], 10.0)  # FedIT 2000 B/round vs 200
    gap = cheap["paired_vs_full"]["eval_tf_em"]
    assert gap["n"] == 3 and math.isclose(gap["mean"], -0.02) and full["paired_vs_full"] == {}
    # both reach FedIT's final TF-EM (0.39) in round 2 of 4: 10x fewer bytes per round
    assert math.isclose(
        cheap["to_fedit_quality"]["ratio_bytes"],
        10 * full["to_fedit_quality"]["ratio_bytes"],
        rel_tol=0.05,
    )
    md = out.with_suffix(".md").read_text()
    assert "Router size and wire encoding" in md and "| `proj64_int8_delta_ef` | 3 |" in md


def test_v2_sweeps_both_families_around_about_the_same_rates(tmp_path: Path) -> None:
    from smartfed.config import ModelConfig
    from smartfed_bench.bench import run_config

    v2 = get_preset("v2")
    rates = {}
    for method in ("smartfed", "fedit", "pool_fedit"):
        spec = RunSpec(TASK, "main", method, 0, 3.0)
        rates[method] = run_config(spec, ModelConfig(), [], tmp_path, v2.overrides, v2.rate(method))
    assert math.isclose(rates["smartfed"].train.learning_rate, 1.5e-2)
    assert math.isclose(rates["fedit"].train.learning_rate, 1.8e-2)
    assert math.isclose(rates["pool_fedit"].train.learning_rate, 1.8e-2)
    assert get_preset("quick").rate("fedit") == 2e-3  # other presets keep METHOD_LR


def test_a_run_made_with_other_settings_is_never_reused(tmp_path: Path) -> None:
    import pytest

    from smartfed.config import ModelConfig
    from smartfed.errors import ConfigError
    from smartfed_bench.bench import check_same_protocol, run_config

    spec = RunSpec(TASK, "main", "smartfed", 0, 1.0)
    v2 = get_preset("v2")
    run_dir = tmp_path / "cache-a" / "run"
    run_dir.mkdir(parents=True)
    pool = [str(tmp_path / "cache-a" / "zh-abc"), str(tmp_path / "cache-a" / "code-def")]

    def cfg(dtype: str, pool: list[str], **over: object) -> RunConfig:
        model = ModelConfig(dtype=dtype)  # type: ignore[arg-type]
        base = run_config(spec, model, pool, run_dir, v2.overrides, v2.rate("smartfed"))
        return RunConfig.from_flat(over, base) if over else base

    stored = cfg("bfloat16", pool)
    (run_dir / "config.json").write_text(stored.to_json())
    # the same protocol from another cache folder, with other runtime settings: reused
    moved = [str(tmp_path / "elsewhere" / Path(p).name) for p in pool]
    check_same_protocol(run_dir, cfg("bfloat16", moved, eval_threads=1, client_cpus=2))
    # another dtype, learning rate or pool (digest) is refused, naming the key
    with pytest.raises(ConfigError, match=r"model\.dtype: 'bfloat16' -> 'float32'"):
        check_same_protocol(run_dir, cfg("float32", pool))
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        check_same_protocol(run_dir, cfg("bfloat16", pool, learning_rate=1e-3))
    with pytest.raises(ConfigError, match=r"pool\.lora_pool"):
        check_same_protocol(run_dir, cfg("bfloat16", [pool[0], pool[1] + "0"]))


def test_v2_presets_run_in_float32_and_the_others_in_bfloat16() -> None:
    assert {get_preset(p).dtype for p in ("v2", "v2-wire", "v2-wire-screen")} == {"float32"}
    assert {get_preset(p).dtype for p in ("quick", "demo", "tuning", "full")} == {"bfloat16"}
