"""`smartfed report`: synthetic run dir -> report.md + PNGs; bad run dirs -> one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.cli.main import main
from smartfed.errors import CheckpointError
from smartfed.report import load_run, parse_matrix_name, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _matrices() -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}" for i in range(3) for p in ("q_proj", "v_proj")]


def _write_run(root: Path, rounds: int = 4, truncated_tail: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = _matrices()
    lines = []
    for r in range(1, rounds + 1):
        # quotas move between matrices but always sum to 6 x 4 = 24
        quotas = dict.fromkeys(names, 4)
        quotas[names[0]] += r - 1
        quotas[names[-1]] -= r - 1
        usage = {m: [10 * r, 5 + i] for i, m in enumerate(names)}
        row = {
            "round": r,
            "clients": 2,
            "train_loss": 2.0 / r,
            "bytes_up": 1000,
            "bytes_down": 2000,
            "wall_s": 1.5,
            "payload_up": 900,
            "energy_kwh_clients": 1e-6,
            "eval_n": 20,
            "quotas": quotas,
            "usage": usage,
        }
        if r % 2 == 0:
            row["eval_accuracy"] = 0.1 * r
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n" + ('{"round": 5, "train_lo' if truncated_tail else "")
    (root / "metrics.jsonl").write_text(text, encoding="utf-8")
    (root / "summary.json").write_text(
        json.dumps({"rounds": rounds, "bytes_total": 12000, "wall_s": 6.0, "energy_kwh": 1e-5})
    )
    (root / "config.json").write_text(
        json.dumps({"pool": {"lora_pool": "/x/zh_lora,/y/math_lora/"}})
    )
    return root


def test_report_writes_markdown_and_three_pngs(tmp_path: Path) -> None:
    # Arrange
    run = _write_run(tmp_path / "run", truncated_tail=True)
    # Act
    result = write_report(run)
    # Assert
    assert sorted(p.name for p in result.images) == [
        "expert_usage.png",
        "metrics.png",
        "quotas.png",
    ]
    for image in result.images:
        assert image.read_bytes()[:8] == PNG_MAGIC and image.stat().st_size > 2000
    md = result.markdown.read_text(encoding="utf-8")
    assert "The total budget is 24 in every round." in md
    assert "| 4 | 6 | 24 | 1 | 7 | 2 |" in md  # round 4: min 1, max 7, two matrices moved
    assert "zh_lora" in md and "math_lora" in md
    assert "| round | train loss | MB up | MB down | wall s | accuracy |" in md
    assert "truncated" in md
    assert "![quotas](quotas.png)" in md
    assert not list(run.glob(".*tmp"))  # atomic writes leave no temp files


def test_budget_change_is_reported(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", rounds=2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows[1]["quotas"][_matrices()[2]] += 1
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    md = write_report(run).markdown.read_text(encoding="utf-8")
    assert "The total budget changes between rounds: [24, 25]." in md


def test_load_run_orders_rounds_and_parses_names(tmp_path: Path) -> None:
    record = load_run(_write_run(tmp_path / "run"))
    assert record.rounds == [1, 2, 3, 4]
    assert record.eval_keys() == ["eval_accuracy"]
    assert record.series("eval_accuracy") == ([2, 4], [0.2, 0.4])
    assert parse_matrix_name("model.layers.7.self_attn.q_proj") == (7, "q_proj")
    assert parse_matrix_name("base_model.model.model.layers.12.mlp.down_proj") == (12, "down_proj")
    assert parse_matrix_name("lm_head") == (-1, "lm_head")


def test_minimal_rows_without_quotas_or_usage_still_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 1, "train_loss": 1.0}\n')
    result = write_report(run)
    assert [p.name for p in result.images] == ["metrics.png"]
    md = result.markdown.read_text(encoding="utf-8")
    assert "No `quotas`" in md and "has not finished" in md


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "metrics.jsonl is missing"),
        (lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text("")), "no complete round"),
        (
            lambda p: (
                p.mkdir(),
                (p / "metrics.jsonl").write_text('{"round": 1}\n{bad\n{"round": 3}\n'),
            ),
            "metrics.jsonl:2: not valid JSON",
        ),
        (
            lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text('{"loss": 1}\n')),
            "numeric 'round'",
        ),
        (
            lambda p: (
                p.mkdir(),
                (p / "metrics.jsonl").write_text('{"round": 1}\n'),
                (p / "summary.json").write_text("[1"),
            ),
            "summary.json: not readable JSON",
        ),
    ],
)
def test_bad_run_dir_is_one_line_error(tmp_path: Path, setup, needle: str) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(CheckpointError, match=needle) as err:
        write_report(run)
    assert "\n" not in str(err.value)


def test_cli_report_success_and_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "report.md") in out
    assert (tmp_path / "out" / "quotas.png").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("smartfed: error: run directory") and err.count("\n") == 1


def test_summary_table_has_no_dicts_and_metrics_are_only_task_metrics(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    quotas = dict.fromkeys(_matrices(), 4)
    summary = {"rounds": 4, "final_quotas": quotas, "dp": None, "final_eval_accuracy": 0.4}
    summary["phases"] = {"train_s": 1.0, "eval_s": 2.0}
    (run / "summary.json").write_text(json.dumps(summary))
    record = load_run(run)
    assert record.eval_keys() == ["eval_accuracy"]  # not payload_up, energy or eval_n
    assert record.final_metrics() == {"eval_accuracy": 0.4}
    md = write_report(run).markdown.read_text(encoding="utf-8")
    summary_part = md.split("## Rounds")[0]
    assert "{" not in summary_part
    assert "| final_quotas | 6 matrices, K_m min 4 / median 4 / max 4, total 24;" in summary_part
    assert "| phases | train_s 1, eval_s 2 |" in summary_part
