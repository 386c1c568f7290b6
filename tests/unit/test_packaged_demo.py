"""Skill LoRAs shipped as package data (hash-checked) and the demo's progress lines and table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smartfed_bench.demo import DemoRun, render_table, round_line, rounds_to
from smartfed_bench.packaged import (
    package_adapter,
    packaged_adapter,
    packaged_by_name,
    read_manifest,
)


def _built(tiny_pool: list[Path], tmp_path: Path) -> Path:
    built = tmp_path / "cache" / "skill.zh-abc123"
    shutil.copytree(tiny_pool[0], built)
    (built / "training_record.json").write_text('{"steps": 3}')
    return built


def test_package_then_use_only_when_hash_and_sha_match(
    tiny_pool: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "packaged"
    built = _built(tiny_pool, tmp_path)
    dest = package_adapter(
        "cpu-mini", "cpu_mini.skill.zh", built, {"rank": 4}, "abc123", {"seed": 0}, root
    )
    entry = read_manifest("cpu-mini", root)["adapters"]["cpu_mini.skill.zh"]
    assert entry["dir"] == "skill.zh-abc123" and entry["recipe"] == {"rank": 4}
    assert len(entry["sha256"]) == 64 and entry["seed"] == 0
    assert packaged_adapter("cpu-mini", "cpu_mini.skill.zh", {"abc123"}, root) == dest
    assert packaged_by_name("cpu_mini.skill.zh", root) == dest
    assert packaged_adapter("cpu-mini", "cpu_mini.skill.zh", {"other"}, root) is None  # recipe
    assert packaged_adapter("cpu-mini", "cpu_mini.skill.code", {"abc123"}, root) is None
    weights = dest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # tampered or half-copied
    assert packaged_adapter("cpu-mini", "cpu_mini.skill.zh", {"abc123"}, root) is None
    assert packaged_by_name("cpu_mini.skill.zh", root) is None


def _run(method: str, losses: list[float], acc: float | None) -> DemoRun:
    rows = [
        {"round": i + 1, "train_loss": x, "eval_loss": x, "bytes_up": 2e6, "bytes_down": 1e6}
        for i, x in enumerate(losses)
    ]
    summary = {
        "rounds": len(rows),
        "bytes_total": 3e6 * len(rows),
        "wall_s": 30.0,
        "final_eval_loss": losses[-1],
        **({"final_execution_accuracy": acc, "final_eval_n": 25} if acc is not None else {}),
    }
    return DemoRun(method, Path(method), rows=rows, summary=summary)


def test_table_has_a_legend_and_names_reused_runs() -> None:
    runs = [_run("smartfed", [0.5, 0.1], 0.96), _run("fedit", [0.6, 0.3], 0.2)]
    runs.append(_run("merge", [0.9, 0.9], None))
    runs[0].reused = True
    table = render_table(runs)
    assert "| `smartfed` | 0.96 (25) | 0.1000 | 3.00 | 6.00 | 30 | 2 |" in table
    assert "| `merge` | - | 0.9000 | 3.00 | 6.00 | 30 | never |" in table
    assert "rounds to FedIT loss: first round" in table
    assert "Reused finished runs: smartfed" in table
    assert rounds_to(runs[1].rows, None) == "-"


def test_round_line() -> None:
    row = {"round": 2, "train_loss": 0.41234, "eval_loss": 0.3, "bytes_up": 1e6, "bytes_down": 2e6}
    assert round_line({**row, "wall_s": 41.2}, 3) == (
        "round 2/3: train loss 0.412, held-out 0.300, 3.00 MB, 41 s"
    )


@pytest.mark.parametrize("bad", ["", "not json"])
def test_read_rows_skips_a_line_being_written(tmp_path: Path, bad: str) -> None:
    from smartfed_bench.demo import read_rows

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1}) + "\n" + bad)
    assert read_rows(tmp_path) == [{"round": 1}]


def test_bench_demo_preset_runs_the_demos_configs(tmp_path: Path) -> None:
    """``smartfed bench --preset demo`` and ``smartfed demo`` train the same runs."""
    from smartfed.config import ModelConfig
    from smartfed_bench import demo
    from smartfed_bench.bench import plan, run_config
    from smartfed_bench.presets import get_preset

    preset, model, pool = get_preset("demo"), ModelConfig(), [tmp_path / "a", tmp_path / "b"]
    specs = plan(preset)
    assert [(s.task, s.method, s.seed) for s in specs] == [(demo.TASK, m, 0) for m in demo.METHODS]
    for spec in specs:
        ours = run_config(
            spec, model, [str(p) for p in pool], tmp_path / spec.method, preset.overrides
        )
        theirs = demo.run_config(spec.method, model, pool, tmp_path)
        assert ours.to_flat() == theirs.to_flat(), spec.method
    assert demo.run_config("merge", model, pool, tmp_path).fed.num_rounds == 1
