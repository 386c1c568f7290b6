"""Seeded row generators of the cpu-mini suite (every row is synthetic; see docs/cpu-mini.md).

Each generator draws one row from a ``random.Random``: ``(key, prompt, response, answer,
category)``. ``key`` is the set of operands (or the letters) that decides the split: a fixed salted
hash puts ~10% of all keys in the held-out partition for EVERY task of the suite, so an operand
pair seen in any training split (skill or composite, any seed) never appears in any eval split [D].
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from smartfed.data.tasks.cpu_mini.render import zh_numeral

SPLIT_SALT = "cpu-mini-split-v1"
"""[D] Fixed salt of the train/held-out partition (independent of the data seed)."""
HELDOUT_PERCENT = 10
"""[D] Share of operand keys reserved for evaluation."""


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


def is_heldout(key: tuple[object, ...]) -> bool:
    """Return whether ``key`` is held out (the same answer for every task and seed)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}|{key!r}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


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
in their training rows, and at least once in every one of their eval rows."""


def uses_gap_digit(row: Row) -> bool:
    """Whether any operand of ``row`` contains a gap digit (7, 8 or 9)."""
    return any(ch in GAP_DIGITS for k in row.key for ch in str(k))


def gap_accept(row: Row, split: str) -> bool:
    """Row filter of a ``*_gap`` composite: train rows avoid the gap digits, eval rows need one."""
    return uses_gap_digit(row) == (split == "eval")


def sample_rows(
    gen: Generator,
    name: str,
    split: str,
    n: int,
    seed: int,
    accept: RowFilter | None = None,
) -> list[Row]:
    """Draw ``n`` distinct rows of ``split`` ("train" | "eval"), seeded by (name, split, seed).

    ``accept(row, split)`` optionally filters the rows further (the skill-gap composites).

    Raises:
        ValueError: the partition cannot supply ``n`` distinct rows (asked for too many).
    """
    rng = random.Random(f"cpu_mini|{name}|{split}|{seed}")
    want_heldout = split == "eval"
    rows: list[Row] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 10_000:
            raise ValueError(f"{name}: cannot draw {n} distinct {split} rows; ask for fewer")
        row = gen(rng)
        if is_heldout(row.key) != want_heldout or (row.prompt, row.response) in seen:
            continue
        if accept is not None and not accept(row, split):
            continue
        seen.add((row.prompt, row.response))
        rows.append(row)
    return rows
