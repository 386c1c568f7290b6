"""cpu-mini suite: seeded generators, disjoint splits, registered tasks whose gold answers score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.data.tasks import get_task
from smartfed.errors import DataError
from smartfed_bench.cpu_mini import SKILLS, SUITE, TASKS
from smartfed_bench.cpu_mini.generators import GAP_DIGITS, is_heldout, partition
from smartfed_bench.cpu_mini.render import parse_zh_numeral, run_straight_line, zh_numeral


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


def test_train_val_and_eval_keys_disjoint_across_the_whole_suite() -> None:
    keys: dict[str, set[tuple[object, ...]]] = {"train": set(), "val": set(), "eval": set()}
    for task in TASKS.values():
        keys["train"] |= {tuple(e.meta["key"]) for e in task.train_examples()}
        keys["val"] |= {tuple(e.meta["key"]) for e in task.validation_examples()}
        keys["eval"] |= {tuple(e.meta["key"]) for e in task.eval_examples()}
        # other data seeds draw other rows from the same partitions
        for split in ("train", "val", "eval"):
            keys[split] |= {tuple(e.meta["key"]) for e in task.examples(split, 30, seed=5)}
    assert all(keys.values())
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["eval"]
    assert not keys["val"] & keys["eval"]
    for split, found in keys.items():
        assert {partition(k) for k in found} == {split}
    assert all(is_heldout(k) for k in keys["val"] | keys["eval"])
    assert not any(is_heldout(k) for k in keys["train"])


def test_val_is_about_a_third_of_the_heldout_keys_and_train_keys_are_unchanged() -> None:
    pairs = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    parts = [partition(k) for k in pairs]
    heldout = sum(p != "train" for p in parts)
    assert 0.08 < heldout / len(pairs) < 0.12
    assert 0.25 < parts.count("val") / heldout < 0.42
    # the train/held-out cut is the one the cached skill LoRAs were trained with
    assert all((p == "train") == (not is_heldout(k)) for k, p in zip(pairs, parts, strict=True))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registered_task_gold_scores_correct_and_wrong_scores_wrong(name: str) -> None:
    task = get_task(name)
    assert task is TASKS[name]
    train, evals, val = task.train_examples(), task.eval_examples(), task.validation_examples()
    assert (len(train), len(evals), len(val)) == (2000, 200, 200)
    assert task.stop and 0 < task.max_new_tokens <= 64
    assert {e.meta["split"] for e in val} == {"val"}
    for ex in train[:200] + evals + val:
        assert task.score(ex.response, ex) is True, (ex.prompt, ex.response)
        assert ex.meta[task.label_key]
        assert task.score(ex.response + "1", ex) is False, ex.response
    assert task.score("", evals[0]) is False


CHINESE = (
    "cpu_mini.zh_math",
    "cpu_mini.zh_code",
    "cpu_mini.zh_code_gap",
    "cpu_mini.zh_math_gap",
    "cpu_mini.zh_code_partial",
    "cpu_mini.zh_math_partial",
    "cpu_mini.zh_code_chain",
    "cpu_mini.zh_code_partpool",
)


def test_suite_compositions_and_chinese_prompts_hide_the_digits() -> None:
    assert len(SUITE) == 9  # three paper tasks, two gap, two partial-gap, chain, mixed pool
    for comp in SUITE.values():
        assert comp.composite in TASKS and set(comp.skills) <= set(SKILLS)
        assert set(comp.irrelevant) <= set(SKILLS)
    mixed = SUITE["cpu_mini.zh_code_partpool"]
    assert "cpu_mini.skill.code" not in mixed.skills and "cpu_mini.skill.zh" in mixed.skills
    assert set(mixed.skills) - {"cpu_mini.skill.zh"} == set(mixed.irrelevant)
    assert set(SUITE["cpu_mini.zh_code_chain"].skills) == {
        "cpu_mini.skill.zh",
        "cpu_mini.skill.math",
        "cpu_mini.skill.code",
    }
    for name in CHINESE:
        task = TASKS[name]
        for ex in task.eval_examples() + task.validation_examples() + task.train_examples()[:300]:
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


def test_tasks_outside_the_suite_have_no_validation_split() -> None:
    from smartfed.data.tasks.base import Task

    assert Task().validation_examples() == []


@pytest.mark.parametrize("name", ["cpu_mini.zh_code_gap", "cpu_mini.zh_math_gap"])
def test_gap_composites_hide_digits_7_to_9_from_training(name: str) -> None:
    from smartfed.data.tasks import get_task
    from smartfed_bench.cpu_mini import SUITE

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


@pytest.mark.parametrize(
    "name",
    [
        "cpu_mini.zh_code_partial",
        "cpu_mini.zh_math_partial",
        "cpu_mini.zh_code_partpool",
        "cpu_mini.zh_code_chain",
    ],
)
def test_partial_gap_composites_show_the_gap_digits_in_15_percent_of_training(name: str) -> None:
    task = get_task(name)
    train = task.train_examples()
    gap = set("七八九")
    with_gap = [e for e in train if gap & set(e.prompt)]
    assert len(with_gap) == 200  # exactly 10% of 2,000, within the 10-20% asked for
    # the prompt numerals and the operand keys agree: the gap rows are those with a 7, 8 or 9
    assert with_gap == [e for e in train if GAP_DIGITS & set("".join(map(str, e.meta["key"])))]
    # mixed into the split, not a block at either end
    positions = [i for i, e in enumerate(train) if e in with_gap]
    assert positions[0] < 100 and positions[-1] > 1900
    for ex in task.eval_examples() + task.validation_examples():
        assert gap & set(ex.prompt), ex.prompt
    assert task.train_examples() == train  # deterministic


def test_partpool_task_has_the_partial_rows_under_its_own_name() -> None:
    a, b = TASKS["cpu_mini.zh_code_partial"], TASKS["cpu_mini.zh_code_partpool"]
    assert b.name != a.name
    for split in ("train", "val", "eval"):
        rows_a, rows_b = a.examples(split, 50), b.examples(split, 50)
        assert [(e.prompt, e.response) for e in rows_a] == [(e.prompt, e.response) for e in rows_b]
        assert {e.meta["task"] for e in rows_b} == {b.name}


def test_new_composites_canonical_outputs() -> None:
    story = TASKS["cpu_mini.zh_code_chain"]
    for ex in story.eval_examples():
        lines = ex.response.split("\n")
        assert len(lines) == 3 and lines[0].startswith("a = ") and lines[1].startswith("b = a ")
        assert lines[2] == "print(b)" and int(ex.answer) >= 1
        # every amount in the program is written in the prompt as a Chinese numeral
        assert all(zh_numeral(int(k)) in ex.prompt for k in ex.meta["key"])
    partial = TASKS["cpu_mini.zh_code_partial"]
    # numbers up to 999: most rows need the hundreds, which skill.zh's rows never show
    hundreds = [e for e in partial.train_examples() if "百" in e.prompt]
    assert len(hundreds) > 1500
    assert not any("百" in e.prompt for e in TASKS["cpu_mini.skill.zh"].train_examples())
    for ex in partial.eval_examples():
        assert ex.response.startswith("print(") and len(ex.meta["key"]) == 2
        # a program the model writes differently but equivalently also scores (execution accuracy)
        assert partial.score("x = 0\n" + ex.response, ex)
    one = TASKS["cpu_mini.zh_code_partial"].eval_examples()[0]
    assert story.score(one.response, story.eval_examples()[0]) is False


def test_cpu_mini_pool_entries_parse_or_fail_with_the_fix() -> None:
    from smartfed.errors import ConfigError
    from smartfed_bench.pools import parse_cpu_mini_source

    assert parse_cpu_mini_source("cpu-mini:skill.zh@1") == ("cpu_mini.skill.zh", 1)
    assert parse_cpu_mini_source("cpu-mini:cpu_mini.skill.code") == ("cpu_mini.skill.code", 0)
    assert parse_cpu_mini_source("lora/zh") is None
    with pytest.raises(ConfigError, match="unknown cpu-mini skill 'skill.cantonese'"):
        parse_cpu_mini_source("cpu-mini:skill.cantonese@1")
    with pytest.raises(ConfigError, match="pool seed after '@'"):
        parse_cpu_mini_source("cpu-mini:skill.zh@one")


def test_train_config_pool_entries_pick_the_pool_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    from smartfed.config import RunConfig
    from smartfed.recipes.train import with_extension_pool
    from smartfed_bench.pools import ensure_cpu_mini_pool

    cfg = RunConfig.from_flat(
        {
            "model_name_or_path": str(tiny_model_dir),
            "dtype": "float32",
            "cache_dir": str(tmp_path),
            "lora_pool": "cpu-mini:skill.sort@1,some/other_dir",
            "task": "cpu_mini.zh_code_partpool",
            "output_dir": str(tmp_path / "run"),
        }
    )
    expanded = with_extension_pool(cfg)
    built = ensure_cpu_mini_pool(
        cfg.model, cache_dir=tmp_path, skills=["cpu_mini.skill.sort"], seed=1, progress=False
    )["cpu_mini.skill.sort"]
    assert expanded.pool.sources == (str(built), "some/other_dir")
    assert (built / "adapter_model.safetensors").is_file()
    assert json.loads((built / "training_record.json").read_text())["recipe"]["seed"] == 1
    assert with_extension_pool(expanded) == expanded  # plain dirs stay as they are
