"""The paper's task names and a PAL training set derived from GSM8K train.

- ``gsm8k_pal`` [D]: GSM8K *train* questions with a ``def solution():`` program built mechanically
  from each solution's calculator annotations (``<<48/2=24>>`` -> ``step1 = 48 / 2``), kept only
  when the program's value equals the ``#### N`` answer. The nearest public stand-in for
  MathCodeInstruct, which is not available here (docs/data.md). Prompts are the same
  few-shot PAL prompts GSM-Hard is evaluated with, so training and evaluation share one format.
- ``cn_math``, ``cn_code``, ``math_code``: the upstream README's ``--task`` values, each a pair
  (train task, eval task) [P: Math23K -> MGSM-zh; DoIT (stand-in ``code_zh``); MathCodeInstruct
  (stand-in ``gsm8k_pal``) -> GSM-Hard].
"""

from __future__ import annotations

import ast
import operator
import os
import re
from collections.abc import Callable
from typing import Any

from smartfed.data.example import Example
from smartfed.data.tasks.base import Task, field, read_jsonl, require_file
from smartfed.data.tasks.pal import GsmHardTask, pal_prompt

_CALC = re.compile(r"<<([^=<>]+)=([^<>]*)>>")
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _value(node: ast.AST) -> float:
    """Evaluate a calculator expression's AST: numbers, + - * / and unary minus only."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return float(_BINOPS[type(node.op)](_value(node.left), _value(node.right)))
    raise ValueError("unsupported calculator expression")


def calc_program(solution: str) -> tuple[str, float] | None:
    """Turn a GSM8K solution's calculator annotations into ``(program, value)``.

    Returns:
        ``def solution():`` with one ``stepN = <expr>`` line per annotation and ``return stepN``
        of the last one, and the value it returns; ``None`` when there is no annotation or one
        is not plain arithmetic (``%``, ``**``, names, ...).
    """
    exprs = [m.group(1).strip() for m in _CALC.finditer(solution)]
    if not exprs:
        return None
    lines, value = ["def solution():"], 0.0
    for i, expr in enumerate(exprs, start=1):
        try:
            value = _value(ast.parse(expr.replace(",", ""), mode="eval").body)
        except (SyntaxError, ValueError, ZeroDivisionError):
            return None
        lines.append(f"    step{i} = {expr.replace(',', '')}")
    lines.append(f"    return step{len(exprs)}")
    return "\n".join(lines), value


class Gsm8kPalTask(GsmHardTask):
    """GSM8K train with mechanically derived PAL programs (train); evaluated like GSM-Hard."""

    name = "gsm8k_pal"
    description = (
        "GSM8K train questions -> def solution() programs from the calculator annotations "
        "(stand-in for MathCodeInstruct); train only, PAL prompts as GSM-Hard"
    )

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Rows whose derived program returns the ``#### N`` answer (|diff| < 1e-3)."""
        path = require_file(data_dir, "gsm8k/train.jsonl", self.name)
        out = []
        for lineno, obj in read_jsonl(path):
            question = field(obj, "question", path, lineno)
            solution = field(obj, "answer", path, lineno)
            final = solution.rsplit("####", 1)[-1].strip().replace(",", "")
            built = calc_program(solution)
            try:
                ok = built is not None and abs(built[1] - float(final)) < 1e-3
            except ValueError:
                ok = False
            if not ok or built is None:
                continue
            out.append(
                Example(
                    prompt=pal_prompt(question),
                    response=f"```python\n{built[0]}\n```",
                    answer=repr(float(final)),
                    meta={"index": len(out), "line": lineno, "category": "gsm8k_pal"},
                )
            )
        return out

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Train only (GSM-Hard is built from GSM8K test): use ``gsm_hard`` to evaluate."""
        return Task.eval_examples(self, data_dir)


class PairedTask(Task):
    """A paper task name: training rows from one task, evaluation and scoring from another."""

    def __init__(self, name: str, train: Task, evaluate: Task, description: str) -> None:
        self.name, self.description = name, description
        self._train, self._eval = train, evaluate
        self.metric, self.label_key = evaluate.metric, train.label_key
        self.stop, self.max_new_tokens = evaluate.stop, evaluate.max_new_tokens
        self.num_shots = evaluate.num_shots

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """The train task's rows."""
        return self._train.train_examples(data_dir)

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """The eval task's rows."""
        return self._eval.eval_examples(data_dir)

    def extract(self, prediction: str, example: Example) -> str | None:
        """The eval task's answer extraction."""
        return self._eval.extract(prediction, example)

    def score(self, prediction: str, example: Example) -> bool:
        """The eval task's scorer."""
        return self._eval.score(prediction, example)

    def judge(self, prediction: str, example: Example) -> tuple[str | None, bool | float]:
        """The eval task's one-pass judge (code tasks run the sandbox once)."""
        return self._eval.judge(prediction, example)


PAPER_TASKS = {
    "cn_math": ("math23k", "mgsm_zh", "Chinese math [P]: train Math23K, eval MGSM-zh accuracy"),
    "cn_code": ("code_zh", "code_zh", "Chinese code [P: DoIT]: stand-in code_zh, Pass@1"),
    "math_code": (
        "gsm8k_pal",
        "gsm_hard",
        "hard math [P: MathCodeInstruct -> GSM-Hard]: train gsm8k_pal, eval GSM-Hard PAL",
    ),
}
"""The upstream README's ``--task`` names -> (train task, eval task, description)."""
