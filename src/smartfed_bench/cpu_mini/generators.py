"""Seeded row generators of the cpu-mini suite (every row is synthetic; see docs/cpu-mini.md).

Each generator draws one row from a ``random.Random``: ``(key, prompt, response, answer,
category)``. ``key`` is the set of operands (or the letters) that decides the split: a fixed salted
hash puts ~10% of all keys in the held-out partition for EVERY task of the suite, so an operand
pair seen in any training split (skill or composite, any seed) never appears in any eval or val
split [D]. The held-out partition is cut in two by more bits of the same hash: about a third of
its keys form the ``val`` partition (learning-rate tuning), the rest the ``eval`` partition, so
val and eval keys are disjoint too, for every task and seed [D].
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from smartfed_bench.cpu_mini.render import zh_numeral

SPLIT_SALT = "cpu-mini-split-v1"
"""[D] Fixed salt of the train/held-out partition (independent of the data seed)."""
HELDOUT_PERCENT = 10
"""[D] Share of operand keys held out of every training split (val + eval)."""
VAL_PERCENT_OF_HELDOUT = 33
"""[D] Share of the held-out keys that form the ``val`` partition (the rest is ``eval``)."""
SPLITS = ("train", "val", "eval")


@dataclass(frozen=True)
class Row:
    """One generated row before it becomes an Example."""

    key: tuple[object, ...]
    prompt: str
    response: str
    answer: str
    category: str


Generator = Callable[[random.Random], Row]
RowFilter = Callable[[Row, str], bool]

OPS: dict[str, tuple[str, str]] = {
    "plus": ("+", "加"),
    "minus": ("-", "减"),
    "times": ("*", "乘以"),
}
"""English operation word -> (Python symbol, Chinese word)."""
NAMES = (
    ("Tom", "he"),
    ("Anna", "she"),
    ("Li", "he"),
    ("Maria", "she"),
    ("Sam", "he"),
    ("Emma", "she"),
)
ITEMS = ("apples", "coins", "books", "stamps", "marbles", "cards")


def _digest(key: tuple[object, ...]) -> bytes:
    return hashlib.sha256(f"{SPLIT_SALT}|{key!r}".encode()).digest()


def is_heldout(key: tuple[object, ...]) -> bool:
    """Return whether ``key`` is held out of training (the same answer for every task and seed)."""
    return int.from_bytes(_digest(key)[:4], "big") % 100 < HELDOUT_PERCENT


def partition(key: tuple[object, ...]) -> str:
    """Return the split ``key`` belongs to: ``train``, ``val`` or ``eval`` (task/seed independent).

    Bytes 0-3 of the salted hash decide train vs held out (unchanged since the first version, so
    the training rows of every task are the same as before ``val`` existed); bytes 4-7 split the
    held-out keys into ``val`` (``VAL_PERCENT_OF_HELDOUT``) and ``eval``.
    """
    digest = _digest(key)
    if int.from_bytes(digest[:4], "big") % 100 >= HELDOUT_PERCENT:
        return "train"
    return "val" if int.from_bytes(digest[4:8], "big") % 100 < VAL_PERCENT_OF_HELDOUT else "eval"


def _compute(a: int, op: str, b: int) -> int:
    return a + b if op == "plus" else a - b if op == "minus" else a * b


def _pair(rng: random.Random, op: str, lo: int = 10, hi: int = 99) -> tuple[int, int]:
    """Two operands; for ``minus`` the first is larger (results stay >= 1)."""
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    while op == "minus" and a == b:
        b = rng.randint(lo, hi)
    if op == "minus" and a < b:
        a, b = b, a
    return a, b


def _key(*numbers: int) -> tuple[object, ...]:
    return tuple(sorted(numbers))


def skill_math(rng: random.Random) -> Row:
    """English math: a plain or one-step word problem -> the equation with its result."""
    op = rng.choice(("plus", "minus"))
    a, b = _pair(rng, op)
    sym = OPS[op][0]
    result = _compute(a, op, b)
    if rng.random() < 0.5:
        prompt = f"What is {a} {op} {b}?"
        category = f"plain_{op}"
    else:
        name, pron = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        verb = f"buys {b} more" if op == "plus" else f"gives away {b}"
        prompt = (
            f"{name} has {a} {item}. {pron.capitalize()} {verb}. "
            f"How many {item} does {name} have now?"
        )
        category = f"story_{op}"
    return Row(_key(a, b), prompt, f"{a} {sym} {b} = {result}", str(result), category)


def skill_zh(rng: random.Random) -> Row:
    """Chinese: a Chinese arithmetic phrase (Chinese numerals) -> English with digits."""
    op = rng.choice(tuple(OPS))
    a, b = _pair(rng, op)
    za, zb, zop = zh_numeral(a), zh_numeral(b), OPS[op][1]
    form = rng.choice(("phrase", "question", "print"))
    if form == "phrase":
        zh, en = f"{za}{zop}{zb}", f"{a} {op} {b}"
    elif form == "question":
        zh, en = f"{za}{zop}{zb}等于多少？", f"What is {a} {op} {b}?"
    else:
        zh, en = f"打印{za}{zop}{zb}。", f"Print {a} {op} {b}."
    return Row(_key(a, b), f"Translate to English: {zh}", en, en, f"{form}_{op}")


def skill_code(rng: random.Random) -> Row:
    """Code: an explicit English instruction -> a straight-line Python program (run to score)."""
    if rng.random() < 0.5:
        op = rng.choice(tuple(OPS))
        a, b = _pair(rng, op, 10, 999)
        prompt = f"Write a Python program that prints {a} {op} {b}."
        return Row(
            _key(a, b), prompt, f"print({a} {OPS[op][0]} {b})", str(_compute(a, op, b)), f"one_{op}"
        )
    op1, op2 = rng.choice(("plus", "minus")), rng.choice(("plus", "minus"))
    x, y = _pair(rng, op1, 10, 999)
    first = _compute(x, op1, y)
    if op2 == "minus" and first < 10:
        op2 = "plus"
    z = rng.randint(10, min(999, first)) if op2 == "minus" else rng.randint(10, 999)
    prompt = f"Write a Python program: let a be {x} {op1} {y}, let b be a {op2} {z}, and print b."
    code = f"a = {x} {OPS[op1][0]} {y}\nb = a {OPS[op2][0]} {z}\nprint(b)"
    return Row(_key(x, y, z), prompt, code, str(_compute(first, op2, z)), f"two_{op1}_{op2}")


def composite_zh_math(rng: random.Random) -> Row:
    """Chinese math: a question with Chinese numerals -> the digit equation and its result."""
    op = rng.choice(("plus", "minus"))
    a, b = _pair(rng, op)
    prompt = f"{zh_numeral(a)}{OPS[op][1]}{zh_numeral(b)}等于多少？"
    result = _compute(a, op, b)
    return Row(_key(a, b), prompt, f"{a} {OPS[op][0]} {b} = {result}", str(result), op)


def composite_zh_code(rng: random.Random) -> Row:
    """Chinese code: an instruction with Chinese numerals -> a Python program (run to score)."""
    op = rng.choice(tuple(OPS))
    a, b = _pair(rng, op)
    prompt = f"用Python写一个程序，打印{zh_numeral(a)}{OPS[op][1]}{zh_numeral(b)}。"
    return Row(_key(a, b), prompt, f"print({a} {OPS[op][0]} {b})", str(_compute(a, op, b)), op)


def composite_hard_math(rng: random.Random) -> Row:
    """Hard math (PAL): a two-step story with 3-digit numbers -> a program (run to score)."""
    op1, op2 = rng.choice(("plus", "minus")), rng.choice(("plus", "minus"))
    x, y = _pair(rng, op1, 100, 999)
    first = _compute(x, op1, y)
    if op2 == "minus" and first < 100:
        op2 = "plus"
    z = rng.randint(100, min(999, first)) if op2 == "minus" else rng.randint(100, 999)
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    verbs = {"plus": "buys {} more", "minus": "gives away {}"}
    prompt = (
        f"{name} has {x} {item}. {pron.capitalize()} {verbs[op1].format(y)}, then "
        f"{verbs[op2].format(z)}. How many {item} does {name} have now? Write a Python program."
    )
    code = f"a = {x} {OPS[op1][0]} {y}\nb = a {OPS[op2][0]} {z}\nprint(b)"
    return Row(_key(x, y, z), prompt, code, str(_compute(first, op2, z)), f"{op1}_{op2}")


def composite_zh_code_wide(rng: random.Random) -> Row:
    """Chinese code, numbers 10-999: ``打印三百四十七乘以二十五。`` -> ``print(347 * 25)`` (run it).

    ``skill.zh`` reads Chinese numerals 10-99 only; the hundreds (``三百``, ``一百零五``) are in no
    LoRA of the pool and have to be learned from the composite's rows [D].
    """
    op = rng.choice(tuple(OPS))
    a, b = _pair(rng, op, 10, 999)
    prompt = f"用Python写一个程序，打印{zh_numeral(a)}{OPS[op][1]}{zh_numeral(b)}。"
    return Row(_key(a, b), prompt, f"print({a} {OPS[op][0]} {b})", str(_compute(a, op, b)), op)


ZH_NAMES = ("汤姆", "安娜", "小李", "玛丽亚", "萨姆", "艾玛")
"""Chinese names of the Chinese stories (the ``NAMES`` of ``skill.math``)."""
ZH_ITEMS = (
    ("苹果", "个"),
    ("硬币", "枚"),
    ("书", "本"),
    ("邮票", "张"),
    ("弹珠", "颗"),
    ("卡片", "张"),
)
"""Chinese items with their measure words (the ``ITEMS`` of ``skill.math``)."""
ZH_VERBS = {"plus": "买了{}{}", "minus": "送出了{}{}"}
"""[D] The story verbs: buys N (more) -> ``+``, gives away N -> ``-`` (``skill.math``'s wording)."""
STORY_WORDS = ("先", "又")
"""[D] first / then: two events per story of ``zh_code_chain``, one program line each. The story
is terse so that every row fits 128 tokens with SmolLM2's chat template (worst row 125): a third
event, or the name repeated in the question, goes over and training would cut the prompt's
start."""


def composite_zh_code_chain(rng: random.Random) -> Row:
    """Chinese story -> three-line program: zh numerals + story wording (math) + programs (code).

    ``汤姆有四十七个苹果，先买了三十八个，又送出了十九个。现在有几个？写一个Python程序。``
    -> ``a = 47 + 38\\nb = a - 19\\nprint(b)``. All amounts are 2-digit; a ``minus`` never takes
    the count below 1 (it becomes a ``plus`` instead).
    """
    name = rng.choice(ZH_NAMES)
    item, measure = rng.choice(ZH_ITEMS)
    count = rng.randint(10, 99)
    numbers, ops, lines, events = [count], [], [], []
    src = str(count)
    for word, target in zip(STORY_WORDS, "ab", strict=True):
        op = rng.choice(("plus", "minus"))
        if op == "minus" and count <= 10:
            op = "plus"
        n = rng.randint(10, min(99, count - 1)) if op == "minus" else rng.randint(10, 99)
        count = _compute(count, op, n)
        lines.append(f"{target} = {src} {OPS[op][0]} {n}")
        events.append(word + ZH_VERBS[op].format(zh_numeral(n), measure))
        numbers.append(n)
        ops.append(op)
        src = target
    prompt = (
        f"{name}有{zh_numeral(numbers[0])}{measure}{item}，{'，'.join(events)}。"
        f"现在有几{measure}？写一个Python程序。"
    )
    code = "\n".join([*lines, f"print({src})"])
    return Row(_key(*numbers), prompt, code, str(count), "_".join(ops))


def skill_reverse(rng: random.Random) -> Row:
    """Control (irrelevant skill): reverse a random lowercase letter string."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 6)))
    return Row((word,), f"Reverse the letters: {word}", word[::-1], word[::-1], f"len{len(word)}")


def skill_sort(rng: random.Random) -> Row:
    """Control (irrelevant skill): sort 4-5 distinct letters alphabetically."""
    letters = rng.sample(string.ascii_lowercase, rng.randint(4, 5))
    out = " ".join(sorted(letters))
    return Row(
        (out,),
        f"Sort the letters alphabetically: {' '.join(letters)}",
        out,
        out,
        f"n{len(letters)}",
    )


GAP_DIGITS = frozenset("789")
"""[D] The skill gap of the ``*_gap`` composites: digits whose Chinese numerals (七八九) never occur
in their training rows, and at least once in every one of their val and eval rows (the
``*_partial`` composites: in a fixed share of their training rows)."""


def uses_gap_digit(row: Row) -> bool:
    """Whether any operand of ``row`` contains a gap digit (7, 8 or 9)."""
    return any(ch in GAP_DIGITS for k in row.key for ch in str(k))


def gap_accept(row: Row, split: str) -> bool:
    """Row filter of a ``*_gap`` composite: train rows avoid the gap digits, val/eval rows need
    one."""
    return uses_gap_digit(row) == (split != "train")


def sample_partial_gap(
    gen: Generator, name: str, split: str, n: int, seed: int, fraction: float
) -> list[Row]:
    """Rows of a ``*_partial`` composite: ``round(fraction * n)`` train rows carry a gap digit.

    The rest of the train rows avoid the gap digits; every val/eval row carries one. The two kinds
    of train rows are drawn apart (so the share is exact, not a sampling accident) and shuffled
    together with a seeded RNG.

    Raises:
        ValueError: the partition cannot supply the rows (asked for too many).
    """
    if split != "train":
        return sample_rows(gen, name, split, n, seed, lambda row, _s: uses_gap_digit(row))
    n_gap = round(fraction * n)
    rows = sample_rows(gen, f"{name}|gap", split, n_gap, seed, lambda row, _s: uses_gap_digit(row))
    rows += sample_rows(gen, name, split, n - n_gap, seed, lambda row, _s: not uses_gap_digit(row))
    random.Random(f"cpu_mini|{name}|mix|{seed}").shuffle(rows)
    return rows


def sample_rows(
    gen: Generator,
    name: str,
    split: str,
    n: int,
    seed: int,
    accept: RowFilter | None = None,
) -> list[Row]:
    """Draw ``n`` distinct rows of ``split`` (train | val | eval), seeded by (name, split, seed).

    A row belongs to ``split`` when :func:`partition` puts its key there. ``accept(row, split)``
    optionally filters the rows further (the skill-gap composites).

    Raises:
        ValueError: the partition cannot supply ``n`` distinct rows (asked for too many).
    """
    rng = random.Random(f"cpu_mini|{name}|{split}|{seed}")
    rows: list[Row] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 10_000:
            raise ValueError(f"{name}: cannot draw {n} distinct {split} rows; ask for fewer")
        row = gen(rng)
        if partition(row.key) != split or (row.prompt, row.response) in seen:
            continue
        if accept is not None and not accept(row, split):
            continue
        seen.add((row.prompt, row.response))
        rows.append(row)
    return rows
