"""`smartfed --version`, readable `--help` from the config docstrings, short console summaries."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from smartfed.cli.config_flags import field_docs
from smartfed.cli.main import build_parser, main
from smartfed.config import _SECTIONS


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from smartfed import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith(f"smartfed {__version__} (python ")
    assert "torch" in out and "flwr" in out


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [("train",), ("deploy-local",), ("pool", "inspect")])
def test_config_flags_are_documented(path: tuple[str, ...]) -> None:
    parser = _subparser(*path)
    text = parser.format_help()
    assert "CFG__" not in text and "SPEC" not in text
    for action in parser._actions:
        if not action.dest.startswith("cfg__"):
            continue
        doc = (action.help or "").split("(default:")[0].strip()
        assert len(doc) > 10, f"{action.option_strings} has no documentation"
        assert action.metavar or action.choices or action.nargs == 0
    assert "--dtype {auto,bfloat16,float32,float16}" in " ".join(text.split())


def test_every_config_field_has_a_docstring() -> None:
    for cls in _SECTIONS.values():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"


def test_method_choices_come_from_the_registry() -> None:
    from smartfed.methods.base import METHODS

    action = next(a for a in _subparser("train")._actions if a.dest == "cfg__train__method")
    assert tuple(action.choices) == tuple(METHODS)


def test_summary_lines_are_short_with_final_accuracy() -> None:
    from smartfed.cli.train import summary_lines

    quotas = {f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj": 1 + i % 7 for i in range(60)}
    summary = {
        "method": "smartfed",
        "rounds": 3,
        "num_rounds": 3,
        "wall_s": 12.3,
        "bytes_total": 2_500_000,
        "energy_kwh": 1e-4,
        "final_train_loss": 0.5,
        "final_eval_loss": 0.6,
        "final_execution_accuracy": 0.75,
        "final_eval_n": 20,
        "eval_task": "cpu_mini.zh_code_gap",
        "final_quotas": quotas,
    }
    lines = summary_lines(summary)
    text = "\n".join(lines)
    assert len(lines) <= 5 and "{" not in text
    assert "final execution_accuracy on cpu_mini.zh_code_gap: 0.7500 (n=20)" in text
    assert "60 matrices, K_m min 1 / median 4 / max 7, total 234" in text
