"""cpu-mini suite: seeded generators, disjoint splits, registered tasks whose gold answers score."""

from __future__ import annotations

import pytest

from smartfed.data.tasks import get_task
from smartfed.data.tasks.cpu_mini import SKILLS, SUITE, TASKS
from smartfed.data.tasks.cpu_mini.generators import is_heldout
from smartfed.data.tasks.cpu_mini.render import parse_zh_numeral, run_straight_line, zh_numeral
from smartfed.errors import DataError


def test_zh_numerals_known_values_and_inverse() -> None:
    expected = {
        0: "零",
        7: "七",
        10: "十",
        11: "十一",
        20: "二十",
        85: "八十五",
        100: "一百",
        105: "一百零五",
        120: "一百二十",
        999: "九百九十九",
    }
    assert {n: zh_numeral(n) for n in expected} == expected
    assert all(parse_zh_numeral(zh_numeral(n)) == n for n in range(1000))
    assert len({zh_numeral(n) for n in range(1000)}) == 1000
    with pytest.raises(ValueError):
        zh_numeral(1000)


def test_program_runner_runs_only_straight_line_arithmetic() -> None:
    assert run_straight_line("a = 347 + 238\nb = a - 119\nprint(b)") == 466
    assert run_straight_line("# 47 times 38\nprint(47 * 38)") == 1786
    assert run_straight_line("print(7 // 2)") == 3
    for bad in (
        "import os\nprint(1)",
        "print(__import__('os').getpid())",
        "print(b)",
        "x = 1",
        "print(1/0)",
        "print(2 ** 10)",
        "open('f')",
        "print(1 +",
        "print(9 // 0)",
    ):
        assert run_straight_line(bad) is None, bad


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_deterministic_under_seed(name: str) -> None:
    task = TASKS[name]
    first = task.examples("train", 40, seed=3)
    assert first == task.examples("train", 40, seed=3)
    assert first != task.examples("train", 40, seed=4)
    assert len({(e.prompt, e.response) for e in first}) == 40


def test_train_and_eval_keys_disjoint_across_the_whole_suite() -> None:
    train_keys, eval_keys = set(), set()
    for task in TASKS.values():
        train_keys |= {tuple(e.meta["key"]) for e in task.train_examples()}
        eval_keys |= {tuple(e.meta["key"]) for e in task.eval_examples()}
    assert train_keys and eval_keys
    assert not train_keys & eval_keys
    assert all(is_heldout(k) for k in eval_keys) and not any(is_heldout(k) for k in train_keys)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registered_task_gold_scores_correct_and_wrong_scores_wrong(name: str) -> None:
    task = get_task(name)
    assert task is TASKS[name]
    train, evals = task.train_examples(), task.eval_examples()
    assert (len(train), len(evals)) == (2000, 200)
    assert task.stop and 0 < task.max_new_tokens <= 64
    for ex in train[:200] + evals:
        assert task.score(ex.response, ex) is True, (ex.prompt, ex.response)
        assert ex.meta[task.label_key]
        assert task.score(ex.response + "1", ex) is False, ex.response
    assert task.score("", evals[0]) is False


def test_suite_compositions_and_chinese_prompts_hide_the_digits() -> None:
    assert len(SUITE) == 5  # three paper tasks + the two skill-gap variants
    for comp in SUITE.values():
        assert comp.composite in TASKS and set(comp.skills) <= set(SKILLS)
        assert not set(comp.irrelevant) & set(comp.skills)
    for name in (
        "cpu_mini.zh_math",
        "cpu_mini.zh_code",
        "cpu_mini.zh_code_gap",
        "cpu_mini.zh_math_gap",
    ):
        for ex in TASKS[name].eval_examples():
            assert not any(ch.isdigit() for ch in ex.prompt), ex.prompt
    ex = TASKS["cpu_mini.zh_math"].eval_examples()[0]
    assert TASKS["cpu_mini.zh_math"].score(
        "the answer: " + ex.response.split("=")[0] + "= " + ex.answer, ex
    )


def test_too_many_rows_is_a_one_line_data_error() -> None:
    with pytest.raises(DataError, match="cannot draw"):
        TASKS["cpu_mini.zh_math"].examples("eval", 5000)
    with pytest.raises(DataError, match="split"):
        TASKS["cpu_mini.skill.sort"].examples("test", 5)


@pytest.mark.parametrize("name", ["cpu_mini.zh_code_gap", "cpu_mini.zh_math_gap"])
def test_gap_composites_hide_digits_7_to_9_from_training(name: str) -> None:
    from smartfed.data.tasks import get_task
    from smartfed.data.tasks.cpu_mini import SUITE

    task = get_task(name)
    train, held = task.train_examples(), task.eval_examples()
    assert len(train) == 2000 and len(held) == 200
    gap = set("七八九")
    assert not any(gap & set(e.prompt) for e in train)
    assert all(gap & set(e.prompt) for e in held)
    assert not any(set("789") & set("".join(map(str, e.meta["key"]))) for e in train)
    # the skill LoRA that the gap composite needs has seen the hidden digits
    zh = get_task(SUITE[name].skills[0]).train_examples()
    assert all(any(d in e.prompt for e in zh) for d in gap)
