"""The upstream README's task names and the GSM8K -> PAL training set, on the real data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smartfed.data.example import Example
from smartfed.data.tasks import get_task
from smartfed.data.tasks.paper import calc_program

DATA = Path(
    os.environ.get("SMARTFED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").is_file(), reason="no data")


def test_calc_program_from_annotations() -> None:
    sol = "She sold 48/2 = <<48/2=24>>24 in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
    program, value = calc_program(sol)  # type: ignore[misc]
    assert program.splitlines() == [
        "def solution():",
        "    step1 = 48/2",
        "    step2 = 48+24",
        "    return step2",
    ]
    assert value == 72.0
    assert calc_program("no annotations\n#### 3") is None
    assert calc_program("<<2**3=8>>") is None and calc_program("<<x+1=2>>") is None
    assert calc_program("<<1/0=0>>") is None
    assert calc_program("<<1,000*2=2000>>")[1] == 2000.0  # type: ignore[index]


@needs_data
def test_gsm8k_pal_rows_run_and_score_like_gsm_hard() -> None:
    task = get_task("gsm8k_pal")
    rows = task.train_examples(DATA)
    assert 0.9 * 7473 < len(rows) <= 7473  # rows whose program does not give #### N are dropped
    hard = get_task("gsm_hard")
    for ex in rows[:3]:
        assert ex.prompt.startswith(hard.eval_examples(DATA)[0].prompt.split("Problem:")[0])
        value, ok = hard.judge(ex.response, ex)  # executed in the sandbox, as model output is
        assert ok and abs(float(value) - float(ex.answer)) < 1e-3  # type: ignore[arg-type]
    wrong = Example(rows[0].prompt, "", repr(float(rows[0].answer) + 1), {})  # type: ignore[arg-type]
    assert not hard.judge(rows[0].response, wrong)[1]


@needs_data
@pytest.mark.parametrize(
    ("name", "train", "evaluate"),
    [
        ("cn_math", "math23k", "mgsm_zh"),
        ("cn_code", "code_zh", "code_zh"),
        ("math_code", "gsm8k_pal", "gsm_hard"),
    ],
)
def test_paper_task_names_pair_train_and_eval(name: str, train: str, evaluate: str) -> None:
    task, tr, ev = get_task(name), get_task(train), get_task(evaluate)
    assert task.metric == ev.metric and tuple(task.stop) == tuple(ev.stop)
    assert [e.prompt for e in task.train_examples(DATA)[:5]] == [
        e.prompt for e in tr.train_examples(DATA)[:5]
    ]
    held = task.eval_examples(DATA)
    assert len(held) == len(ev.eval_examples(DATA))
    if name == "cn_math":
        ex = held[0]
        assert task.score(f"The answer is {ex.answer}", ex) and not task.score("no idea", ex)
