"""Local JSON/JSONL datasets (Alpaca fields or chat messages) with file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.data.local import load_local_examples
from smartfed.errors import DataError


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_alpaca_and_chat_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "Add", "input": "1 2", "output": "3", "category": "math"},
            {"instruction": "Hi", "output": "Hello"},
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "u2"},
                    {"role": "assistant", "content": "a2"},
                ]
            },
        ],
    )
    rows = load_local_examples(path)
    assert [r.prompt for r in rows] == ["Add\n\n1 2", "Hi", "u1\n\nu2"]
    assert [r.response for r in rows] == ["3", "Hello", "a2"]
    assert rows[0].meta["category"] == "math" and rows[2].meta["line"] == 3


def test_json_array_reports_element_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n'
        '   "input": 5, "output": "d"}\n]\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"d.json:3: field 'input' must be a string"):
        load_local_examples(path)


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "x"}, "row has neither 'instruction'/'output' nor 'messages'"),
        ({"instruction": "x"}, "field 'output' must be a string"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "q"}]}, "'messages' has no assistant turn"),
        ({"messages": [{"role": "bot", "content": "q"}]}, r"messages\[0\] must be"),
        ([1, 2], "expected an object"),
    ],
)
def test_malformed_rows(tmp_path: Path, row: object, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", [{"instruction": "ok", "output": "ok"}, row])
    with pytest.raises(DataError, match=rf"d.jsonl:2: {message}"):
        load_local_examples(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_local_examples(tmp_path / "none.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported extension"):
        load_local_examples(tmp_path / "d.csv")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        load_local_examples(tmp_path / "bad.jsonl")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="no rows"):
        load_local_examples(tmp_path / "empty.json")
