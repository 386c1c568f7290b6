"""GSM-Hard with program-aided answers (PAL): the model writes ``def solution():`` and we run it.

Scoring [P]: execution accuracy, ``|solution() - target| < 1e-3``, as in PAL's ``gsm_eval.py``. The
program is executed ONLY through :func:`smartfed.eval.sandbox.run_python`. The three exemplars
below were
written for SmartFed from GSM8K *train* rows (lines 2, 5 and 11 of ``gsm8k/train.jsonl``); GSM-Hard
is
built from GSM8K test, so no test question leaks into the prompt.
"""

from __future__ import annotations

import math
import os
import re

from smartfed.data.example import Example
from smartfed.data.tasks.base import Task, field, read_jsonl, require_file
from smartfed.errors import DataError

PAL_TIMEOUT_S = 5.0
"""[D] Wall-clock limit per program."""

_EXEMPLARS = (
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
        "babysitting. How much did she earn?",
        "def solution():\n"
        "    hourly_rate = 12\n"
        "    minutes_worked = 50\n"
        "    rate_per_minute = hourly_rate / 60\n"
        "    earned = rate_per_minute * minutes_worked\n"
        "    return earned",
    ),
    (
        "James writes a 3-page letter to 2 different friends twice a week.  How many pages does he "
        "write a year?",
        "def solution():\n"
        "    pages_per_letter = 3\n"
        "    friends = 2\n"
        "    letters_per_week_per_friend = 2\n"
        "    weeks_per_year = 52\n"
        "    pages_per_week = pages_per_letter * friends * letters_per_week_per_friend\n"
        "    return pages_per_week * weeks_per_year",
    ),
    (
        "A deep-sea monster rises from the waters once every hundred years to feast on a ship "
        "and sate its hunger. Over three hundred years, it has consumed 847 people. Ships have "
        "been built larger over time, so each new ship has twice as many people as the last "
        "ship. How many people were on the ship the monster ate in the first hundred years?",
        "def solution():\n"
        "    total_eaten = 847\n"
        "    # ships carry s, 2s and 4s people\n"
        "    multiples = 1 + 2 + 4\n"
        "    first_ship = total_eaten / multiples\n"
        "    return first_ship",
    ),
)

PAL_INSTRUCTION = (
    "Write a Python function `solution()` that computes the answer to the math problem and "
    "returns it as a number. Reply with the code only, in one ```python block."
)
"""[D] Our own instruction for program-aided math."""

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def pal_prompt(question: str) -> str:
    """Build the few-shot PAL prompt (instruction, 3 worked exemplars, then the question)."""
    parts = [PAL_INSTRUCTION, ""]
    for q, code in _EXEMPLARS:
        parts += [f"Problem: {q}", f"```python\n{code}\n```", ""]
    parts.append(f"Problem: {question.strip()}")
    return "\n".join(parts)


def extract_program(prediction: str) -> str | None:
    """Return the Python source in a model output: the fenced block holding ``def solution`` if
    any.
    """
    blocks = _FENCE.findall(prediction)
    for block in blocks:
        if "def solution" in block:
            return block.strip("\n")
    if "def solution" in prediction:
        start = prediction.index("def solution")
        return prediction[start:].split("```")[0].strip("\n")
    return None


def run_solution(program: str, timeout_s: float = PAL_TIMEOUT_S) -> float | None:
    """Execute ``program`` in the sandbox and return ``float(solution())`` or None on any failure.

    The child converts the value to ``float`` and the harness reports it only after ``solution()``
    returned (an early exit reports nothing); the target is never given to the child and the
    comparison happens here. The value is a finite float or None: nothing else the program
    produces (output, files) reaches the records.
    """
    from smartfed.eval.sandbox import run_python  # layer 4 -> layer 4, imported lazily

    result = run_python([program], timeout_s=timeout_s, value_expr="solution()")
    if not result.ok or result.value is None:
        return None
    return result.value if math.isfinite(result.value) else None


class GsmHardTask(Task):
    """GSM-Hard (1,319 rows), PAL-style few-shot; eval only [P: hard-math eval]."""

    name = "gsm_hard"
    description = "GSM-Hard, PAL program execution accuracy |answer - target| < 1e-3; eval only [P]"
    metric = "execution_accuracy"
    label_key = "category"
    stop = ("<|im_end|>", "\nProblem:")
    max_new_tokens = 256
    num_shots = len(_EXEMPLARS)

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        path = require_file(data_dir, "gsm_hard/gsmhardv2.jsonl", self.name)
        out = []
        for lineno, obj in read_jsonl(path):
            question = field(obj, "input", path, lineno)
            target = obj.get("target")
            if isinstance(target, bool) or not isinstance(target, (int, float)):
                raise DataError(f"{path}:{lineno}: field 'target' must be a number, got {target!r}")
            out.append(
                Example(
                    prompt=pal_prompt(question),
                    answer=repr(float(target)),
                    meta={
                        "index": len(out),
                        "line": lineno,
                        "question": question,
                        "reference_code": obj.get("code", ""),
                        "category": "integer" if float(target).is_integer() else "fraction",
                    },
                )
            )
        return out

    def extract(self, prediction: str, example: Example) -> str | None:
        """Return the value ``solution()`` returns (as text) or None when it does not run."""
        program = extract_program(prediction)
        if program is None:
            return None
        value = run_solution(program)
        return None if value is None else repr(value)

    def score(self, prediction: str, example: Example) -> bool:
        return bool(self.judge(prediction, example)[1])

    def judge(self, prediction: str, example: Example) -> tuple[str | None, bool]:
        value = self.extract(prediction, example)
        if value is None or example.answer is None:
            return value, False
        return value, abs(float(value) - float(example.answer)) < 1e-3
