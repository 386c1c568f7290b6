"""Word-problem tasks with a numeric answer: MGSM (11 languages), GSM8K, Math23K, and the math
skill set.

Answer extraction [D]: an explicit answer marker wins (``#### N``, ``The answer is N``, ``答案是
N``,
``\\boxed{N}``), otherwise the last number in the output. Numbers may use thousands commas,
full-width
digits, a decimal point, a fraction ``a/b``, a Math23K mixed number ``a((b)/(c))`` or a percent
sign.
"""

from __future__ import annotations

import os
import re
import unicodedata
from fractions import Fraction
from pathlib import Path

from smartfed.data.example import Example
from smartfed.data.tasks.base import Task, field, read_jsonl, read_tsv, require_file
from smartfed.errors import DataError

MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
"""[P] The 11 MGSM languages (the paper evaluates Chinese math on ``zh``)."""

_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_MIXED = re.compile(r"(-?\d+)\(\((\d+)\)/\((\d+)\)\)")
_PAREN_FRAC = re.compile(r"\(\((\d+)\)/\((\d+)\)\)")
_NUMBER = re.compile(rf"({_NUM})(?:\s*/\s*({_NUM}))?\s*(%|％)?")
_MARKERS = (
    re.compile(r"####\s*(.+)"),
    re.compile(r"\\boxed\{([^}]*)\}"),
    re.compile(r"answer is[:：\s]*(.+)", re.IGNORECASE),
    re.compile(r"答案(?:是|为|：|:)\s*(.+)"),
)
MATH_INSTRUCTION = (
    'Solve the problem step by step. End with the line "The answer is N" where N is a number.'
)
"""[D] Instruction appended to math word problems (train and eval use the same text)."""


def normalize_text(text: str) -> str:
    """NFKC-normalise (full-width digits, ``，`` -> ``,``) so numbers match one pattern."""
    return unicodedata.normalize("NFKC", text).replace("−", "-")


def _to_number(num: str, den: str | None, percent: bool) -> float | None:
    try:
        value = Fraction(num.replace(",", ""))
        if den is not None:
            d = Fraction(den.replace(",", ""))
            if d == 0:
                return None
            value /= d
    except (ValueError, ZeroDivisionError):
        return None
    return float(value / 100 if percent else value)


def _improper(m: re.Match[str]) -> str:
    whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if den == 0:
        return m.group(0)
    frac = abs(whole) + Fraction(num, den)
    frac = -frac if whole < 0 or m.group(1).startswith("-") else frac
    return f"{frac.numerator}/{frac.denominator}"


def last_number(text: str) -> str | None:
    """Return the last number-like span in ``text`` (commas removed), e.g. ``"3/4"``, ``"12.5%"``.

    A Math23K mixed number ``1((1)/(2))`` becomes the improper fraction ``3/2``.
    """
    text = normalize_text(text)
    text = _MIXED.sub(_improper, text)
    text = _PAREN_FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    span = found[-1].group(0).strip().replace(",", "").replace("％", "%")
    return re.sub(r"\s+", "", span)


def extract_number(text: str) -> str | None:
    """Return the final answer in a model output (marker first, else the last number)."""
    norm = normalize_text(text)
    for pattern in _MARKERS:
        hits = pattern.findall(norm)
        for hit in reversed(hits):
            number = _first_number(hit)
            if number is not None:
                return number
    return last_number(norm)


def _first_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    if m is None:
        return None
    return last_number(m.group(0))


def number_value(span: str | None) -> float | None:
    """Convert an extracted span (``"3/2"``, ``"12.5%"``, ``"-3"``) to a float, or None."""
    if not span:
        return None
    m = _NUMBER.fullmatch(span.strip())
    if m is None:
        return None
    return _to_number(m.group(1), m.group(2), bool(m.group(3)))


def numbers_match(pred: str | None, gold: str) -> bool:
    """Numeric equality [D]: |pred - gold| <= max(1e-4, 1e-6 |gold|).

    A fraction gold (``4/7``) also accepts a decimal rounded to at least 2 places (``0.57``), and a
    percent gold (``12.5%``) also accepts the bare number (``12.5``).
    """
    p, g = number_value(pred), number_value(gold)
    if p is None or g is None or pred is None:
        return False
    if abs(p - g) <= max(1e-4, 1e-6 * abs(g)):
        return True
    decimals = len(pred.split(".")[1].rstrip("%")) if "." in pred and "/" not in pred else 0
    if "/" in gold and decimals >= 2 and abs(p - g) <= 0.5 * 10**-decimals + 1e-12:
        return True
    return gold.endswith("%") and abs(p - g * 100) <= max(1e-4, 1e-6 * abs(g * 100))


class NumericTask(Task):
    """Shared extraction/scoring for tasks whose answer is one number."""

    metric = "accuracy"
    stop = ("<|im_end|>", "\n\nQuestion:", "\n\n问题")
    max_new_tokens = 256

    def extract(self, prediction: str, example: Example) -> str | None:
        return extract_number(prediction)

    def score(self, prediction: str, example: Example) -> bool:
        return example.answer is not None and numbers_match(
            self.extract(prediction, example), example.answer
        )


def _step_bucket(n: int) -> str:
    return f"steps_{min(n, 5)}"


class MgsmTask(NumericTask):
    """MGSM in one language: 250 human translations of GSM8K test questions (eval only)."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.name = f"mgsm_{lang}"
        self.description = (
            f"MGSM ({lang}) math word problems, accuracy on the number; eval only [P: zh]"
        )

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        path = require_file(data_dir, f"mgsm/mgsm_{self.lang}.tsv", self.name)
        out = []
        for lineno, (question, answer) in read_tsv(path, 2):
            gold = answer.strip().replace(",", "")
            if number_value(gold) is None:
                raise DataError(f"{path}:{lineno}: answer {answer!r} is not a number")
            out.append(
                Example(
                    prompt=f"{question.strip()}\n\n{MATH_INSTRUCTION}",
                    answer=gold,
                    meta={
                        "index": len(out),
                        "line": lineno,
                        "lang": self.lang,
                        "category": self.lang,
                    },
                )
            )
        return out


def _strip_calc(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text)


def gsm8k_rows(path: Path, task: str) -> list[Example]:
    """Parse GSM8K JSONL (``question``, ``answer`` ending in ``#### N``) into examples."""
    out = []
    for lineno, obj in read_jsonl(path):
        question = field(obj, "question", path, lineno)
        solution = field(obj, "answer", path, lineno)
        if "####" not in solution:
            raise DataError(f"{path}:{lineno}: answer has no '#### N' final line")
        steps, final = solution.rsplit("####", 1)
        gold = final.strip().replace(",", "")
        if number_value(gold) is None:
            raise DataError(f"{path}:{lineno}: final answer {final.strip()!r} is not a number")
        n_steps = len([s for s in steps.strip().splitlines() if s.strip()])
        out.append(
            Example(
                prompt=f"{question.strip()}\n\n{MATH_INSTRUCTION}",
                response=f"{_strip_calc(steps).strip()}\nThe answer is {gold}",
                answer=gold,
                meta={"index": len(out), "line": lineno, "category": _step_bucket(n_steps)},
            )
        )
    return out


class Gsm8kTask(NumericTask):
    """GSM8K: train (7,473) and test (1,319); the response is the worked solution."""

    name = "gsm8k"
    description = "GSM8K grade-school math, accuracy on the final number; train/eval"

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return gsm8k_rows(require_file(data_dir, "gsm8k/train.jsonl", self.name), self.name)

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return gsm8k_rows(require_file(data_dir, "gsm8k/test.jsonl", self.name), self.name)


class MathEnSkill(Gsm8kTask):
    """English math skill set for a source LoRA (stand-in for MetaMathQA): GSM8K train only."""

    name = "math_en"
    description = "English math skill set (GSM8K train; stand-in for MetaMathQA); train only"

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return Task.eval_examples(self, data_dir)


def math23k_answer(raw: str) -> str:
    """Normalise a Math23K ``ans`` (``1((1)/(2))``, ``((4)/(7))``, ``12.5%``) to an extractable
    span.
    """
    span = last_number(raw)
    return span if span is not None else raw


class Math23kTask(NumericTask):
    """Math23K Chinese word problems: train 21,162 / valid 1,000 / test 1,000 (the paper trains on
    it).
    """

    name = "math23k"
    description = (
        "Math23K Chinese math word problems, accuracy on the number; train/eval [P: train]"
    )

    def _rows(self, data_dir: str | os.PathLike[str] | None, split: str) -> list[Example]:
        path = require_file(data_dir, f"math23k/{split}.jsonl", self.name)
        out = []
        for lineno, obj in read_jsonl(path):
            text = field(obj, "original_text", path, lineno)
            equation = field(obj, "equation", path, lineno)
            gold = math23k_answer(field(obj, "ans", path, lineno))
            if number_value(gold) is None:
                raise DataError(f"{path}:{lineno}: ans {obj['ans']!r} is not a number")
            n_ops = len(re.findall(r"[-+*/^]", equation.removeprefix("x=")))
            out.append(
                Example(
                    prompt=f"{text.strip()}\n\n{MATH_INSTRUCTION}",
                    response=f"{equation.strip()}\nThe answer is {gold}",
                    answer=gold,
                    meta={
                        "index": len(out),
                        "line": lineno,
                        "id": obj.get("id"),
                        "category": _step_bucket(n_ops),
                    },
                )
            )
        return out

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return self._rows(data_dir, "train")

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return self._rows(data_dir, "test")
