"""One data loader for train, pool train and eval files: Alpaca fields, chat messages,
prompt/response; JSON, JSONL, Parquet; file:line errors; hub ids only when online."""

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
        ({"prompt": "x"}, "field 'response' must be a string"),
        ({"text": "x"}, "row has none of the layouts"),
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


def test_prompt_response_and_completion_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.jsonl",
        [{"prompt": "p1", "response": "r1", "answer": 3}, {"prompt": "p2", "completion": "c2"}],
    )
    rows = load_local_examples(path)
    assert [(r.prompt, r.response, r.answer) for r in rows] == [
        ("p1", "r1", "3"),
        ("p2", "c2", None),
    ]


def test_parquet_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"instruction": "Add", "input": "1 2", "output": "3", "category": "math"},
                {"instruction": "Hi", "input": None, "output": "Hello", "category": "chat"},
            ]
        ),
        path,
    )
    rows = load_local_examples(path)
    assert [r.prompt for r in rows] == ["Add\n\n1 2", "Hi"]
    assert [r.meta["category"] for r in rows] == ["math", "chat"]
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": 1}]), path)
    with pytest.raises(DataError, match=r"d.parquet:row 1: field 'output' must be a string"):
        load_local_examples(path)


def _alpaca_file(tmp_path: Path, n: int = 12, broken_line: int = 0) -> Path:
    lines = [json.dumps({"instruction": f"Say {i}", "output": f"{i}"}) for i in range(n)]
    if broken_line:
        lines[broken_line - 1] = '{"instruction": "oops", '
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_and_pool_train_share_the_loader(tmp_path: Path) -> None:
    from smartfed.config import RunConfig
    from smartfed.data.source import load_training_data
    from smartfed.train.skill_lora import SkillLoraRecipe, load_dataset

    path = _alpaca_file(tmp_path)
    train = load_training_data(RunConfig.from_flat({"dataset": str(path)})).examples
    fit, held = load_dataset(SkillLoraRecipe(dataset=str(path), seed=0))
    assert len(train) == 12 and len(fit) + len(held) == 12 and len(held) == 1
    assert sorted(e.prompt for e in fit + held) == sorted(e.prompt for e in train)


@pytest.mark.parametrize("broken", [1, 8])
def test_broken_jsonl_line_is_named_by_both_commands(tmp_path: Path, broken: int) -> None:
    from smartfed.config import RunConfig
    from smartfed.data.source import load_training_data
    from smartfed.train.skill_lora import SkillLoraRecipe, load_dataset

    path = _alpaca_file(tmp_path, broken_line=broken)
    with pytest.raises(DataError, match=rf"alpaca.jsonl:{broken}: invalid JSON"):
        load_training_data(RunConfig.from_flat({"dataset": str(path)}))
    with pytest.raises(DataError, match=rf"alpaca.jsonl:{broken}: invalid JSON"):
        load_dataset(SkillLoraRecipe(dataset=str(path)))


def test_hub_id_offline_and_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartfed.data.source import load_examples

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="owner/name: hub datasets are off"):
        load_examples("owner/name")
    with pytest.raises(DataError, match="unknown task, and not a data file or a hub id"):
        load_examples("no_such_task")
    rows, label = load_examples("cpu_mini.skill.sort")
    assert rows and label == "category"
