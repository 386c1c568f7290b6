"""Task registry, data loading errors and answer extraction, on real rows of every data set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from smartfed.data.tasks import get_task, list_tasks, register_task, resolve_data_dir
from smartfed.data.tasks.base import Task
from smartfed.data.tasks.math import MGSM_LANGS, extract_number, number_value, numbers_match
from smartfed.errors import DataError

# The shared data folder is passed explicitly (no hidden default inside the library).
DATA = Path(
    os.environ.get("SMARTFED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
needs_data = pytest.mark.skipif(
    not (DATA / "README.md").is_file(), reason=f"no data folder at {DATA}"
)


def test_registry_lists_every_paper_task() -> None:
    names = set(list_tasks())
    expected = {f"mgsm_{lang}" for lang in MGSM_LANGS} | {
        "math23k",
        "gsm8k",
        "gsm_hard",
        "humaneval",
        "mbpp",
        "code_zh",
        "chinese_chat",
        "english_chat",
        "math_en",
        "code_en",
    }
    assert expected <= names
    assert len(MGSM_LANGS) == 11


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(DataError, match="unknown task 'nope'.*mgsm_zh"):
        get_task("nope")


def test_register_task_refuses_duplicates() -> None:
    class Mine(Task):
        name = "test_only_task"

    register_task(Mine())
    assert get_task("test_only_task").name == "test_only_task"
    with pytest.raises(DataError, match="already registered"):
        register_task(Mine())


def test_data_dir_order_flag_env_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTFED_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("SMARTFED_DATA")
    assert resolve_data_dir("") == Path("data")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("mgsm_zh", "mgsm/mgsm_zh.tsv"),
        ("gsm_hard", "gsm_hard/gsmhardv2.jsonl"),
        ("humaneval", "humaneval/HumanEval.jsonl.gz"),
        ("math23k", "math23k/test.jsonl"),
        ("mbpp", "mbpp/mbpp.jsonl"),
        ("gsm8k", "gsm8k/test.jsonl"),
    ],
)
def test_missing_file_names_what_to_put_where(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DataError) as err:
        get_task(name).eval_examples(tmp_path)
    msg = str(err.value)
    assert expected in msg and "--data_dir" in msg and "\n" not in msg


def test_no_split_errors() -> None:
    with pytest.raises(DataError, match="no training split"):
        get_task("gsm_hard").train_examples(DATA)
    with pytest.raises(DataError, match="no eval split"):
        get_task("chinese_chat").eval_examples(DATA)


def test_malformed_rows_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "mgsm").mkdir()
    (tmp_path / "mgsm" / "mgsm_zh.tsv").write_text("q1\t3\nq2 without answer\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mgsm_zh.tsv:2: expected 2 tab-separated columns"):
        get_task("mgsm_zh").eval_examples(tmp_path)
    (tmp_path / "gsm_hard").mkdir()
    (tmp_path / "gsm_hard" / "gsmhardv2.jsonl").write_text(
        json.dumps({"input": "q", "code": "", "target": 1.0}) + "\n{broken\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"gsmhardv2.jsonl:2: invalid JSON"):
        get_task("gsm_hard").eval_examples(tmp_path)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        json.dumps({"question": "q"}) + "\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"test.jsonl:1: missing field 'answer'"):
        get_task("gsm8k").eval_examples(tmp_path)


@pytest.mark.parametrize(
    "text,value",
    [
        ("答案是 18 元。", 18),
        ("The answer is 2,125.", 2125),
        ("#### 72", 72),
        ("３４元", 34),
        ("so 3/4 cup", 0.75),
        ("1((1)/(2))", 1.5),
        ("((4)/(7))", 4 / 7),
        ("12.5%", 0.125),
        ("x = -410.0", -410),
        ("The answer is 5. Check: 2 + 3 = 5 and 7", 5),
        (r"\boxed{42} so 7", 42),
    ],
)
def test_extract_number(text: str, value: float) -> None:
    assert number_value(extract_number(text)) == pytest.approx(value)


def test_numbers_match_tolerance_and_percent() -> None:
    assert numbers_match("18.00001", "18") and not numbers_match("19", "18")
    assert numbers_match("0.1", "10%") and numbers_match("10", "10%")
    assert not numbers_match(None, "1") and not numbers_match("abc", "1")
    assert not numbers_match("70001", "70000") and numbers_match("0.57", "4/7")
    assert not numbers_match("0.6", "4/7") and numbers_match("-9867630.0", "-9867630")


@needs_data
@pytest.mark.parametrize("lang", MGSM_LANGS)
def test_mgsm_gold_extracts_to_itself(lang: str) -> None:
    task = get_task(f"mgsm_{lang}")
    rows = task.eval_examples(DATA)
    assert len(rows) == 250
    for ex in rows:
        assert ex.answer is not None
        assert task.extract(ex.answer, ex) == ex.answer
        assert task.score(f"... The answer is {ex.answer}", ex) is True
        assert task.score(f"The answer is {float(ex.answer) + 1}", ex) is False


@needs_data
@pytest.mark.parametrize(
    "name,train",
    [("gsm8k", True), ("gsm8k", False), ("math23k", True), ("math23k", False), ("math_en", True)],
)
def test_math_reference_solutions_score_correct(name: str, train: bool) -> None:
    task = get_task(name)
    rows = task.train_examples(DATA) if train else task.eval_examples(DATA)
    bad = [ex.meta["line"] for ex in rows if not task.score(ex.response, ex)]
    assert not bad, f"{name}: reference solutions scored wrong at lines {bad[:5]}"


@needs_data
def test_math23k_raw_answers_extract() -> None:
    task = get_task("math23k")
    lines = (DATA / "math23k/test.jsonl").read_text(encoding="utf-8").splitlines()
    raw = [json.loads(line)["ans"] for line in lines]
    rows = task.eval_examples(DATA)
    for ans, ex in zip(raw, rows, strict=True):
        assert task.score(ans, ex), ans
    assert any("%" in a for a in raw) and any("((" in a for a in raw)


@needs_data
def test_gsm_hard_reference_programs_run_in_sandbox() -> None:
    task = get_task("gsm_hard")
    rows = task.eval_examples(DATA)
    assert len(rows) == 1319 and task.num_shots == 3
    for ex in rows[:8]:
        prediction = f"Here you go:\n```python\n{ex.meta['reference_code']}\n```\nDone."
        extracted, correct = task.judge(prediction, ex)
        assert correct is True, (ex.meta["line"], extracted, ex.answer)
    wrong = rows[0].meta["reference_code"].replace("return result", "return result + 1")
    assert task.judge(f"```python\n{wrong}\n```", rows[0])[1] is False
    assert task.judge("I do not know", rows[0]) == (None, False)


def test_pal_prompt_uses_train_exemplars_not_test() -> None:
    from smartfed.data.tasks.pal import _EXEMPLARS, pal_prompt

    prompt = pal_prompt("How many?")
    assert prompt.count("def solution") == len(_EXEMPLARS) == 3 and prompt.endswith("How many?")
    if (DATA / "gsm8k/train.jsonl").is_file():
        lines = (DATA / "gsm8k/train.jsonl").read_text(encoding="utf-8").splitlines()
        train = {json.loads(line)["question"] for line in lines}
        assert all(q in train for q, _ in _EXEMPLARS)


@needs_data
@pytest.mark.parametrize("name", ["humaneval", "code_zh"])
def test_humaneval_canonical_solutions_pass(name: str) -> None:
    task = get_task(name)
    rows = task.eval_examples(DATA)
    assert len(rows) == 164
    for ex in rows[:6]:
        assert task.judge(ex.response, ex)[1] is True, ex.meta["task_id"]
    body_only = rows[0].response.split(rows[0].meta["prompt_code"])[1].rstrip("`")
    assert task.score(body_only, rows[0]) is True  # a bare body continues the prompt
    assert (
        task.score("```python\ndef has_close_elements(n, t):\n    return False\n```", rows[0])
        is False
    )


@needs_data
def test_mbpp_reference_code_passes_and_splits() -> None:
    task = get_task("mbpp")
    test_rows, train_rows = task.eval_examples(DATA), task.train_examples(DATA)
    assert len(test_rows) == 500 and len(train_rows) == 374
    assert {ex.meta["task_id"] for ex in test_rows}.isdisjoint(
        ex.meta["task_id"] for ex in train_rows
    )
    for ex in test_rows[:6]:
        assert task.judge(ex.response, ex)[1] is True, ex.meta["task_id"]
    assert task.score("```python\ndef nothing(): pass\n```", test_rows[0]) is False


@needs_data
@pytest.mark.parametrize(
    "name,minimum",
    [("chinese_chat", 50000), ("english_chat", 50000), ("code_en", 6000), ("code_zh", 300)],
)
def test_skill_sets_load_with_labels(name: str, minimum: int) -> None:
    task = get_task(name)
    rows = task.train_examples(DATA)
    assert len(rows) >= minimum
    labels = {ex.meta[task.label_key] for ex in rows}
    assert 1 < len(labels) <= 8 or name == "code_zh"
    assert all(ex.prompt and ex.response for ex in rows[:100])
