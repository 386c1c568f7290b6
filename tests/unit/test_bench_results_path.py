"""``smartfed bench --results`` never replaces a file that is not the same preset's results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.errors import ConfigError
from smartfed_bench.cli.bench import check_results_path


def test_a_users_file_is_refused_unless_forced(tmp_path: Path) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="--force"):
        check_results_path(str(mine), "v2", force=False)
    check_results_path(str(mine), "v2", force=True)
    assert json.loads(mine.read_text(encoding="utf-8")) == {"my": "notes"}


def test_another_presets_results_are_refused(tmp_path: Path) -> None:
    quick = tmp_path / "cpu-mini.json"
    quick.write_text(json.dumps({"preset": "quick"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not the results of a 'v2' bench"):
        check_results_path(str(quick), "v2", force=False)


def test_the_same_presets_results_and_new_paths_pass(tmp_path: Path) -> None:
    own = tmp_path / "cpu-mini-v2.json"
    own.write_text(json.dumps({"preset": "v2"}), encoding="utf-8")
    check_results_path(str(own), "v2", force=False)
    check_results_path(str(tmp_path / "new.json"), "v2", force=False)
