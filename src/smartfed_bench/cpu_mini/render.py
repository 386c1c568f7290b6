"""Rendering and checking helpers of the cpu-mini suite: Chinese numerals and a tiny program runner.

Both are deliberately small: Chinese numerals 0-999 in the standard reading (八十五, 一百零五,
一百二十), and
:func:`run_straight_line` which evaluates the only programs the suite asks for (integer
assignments, ``+ - * //`` and one ``print``) by walking the AST — nothing is ``exec``-ed, so
scoring model output needs no sandbox process and cannot run arbitrary code.
"""

from __future__ import annotations

import ast
import re

_ZH_DIGITS = "零一二三四五六七八九"
_ZH_TO_DIGIT = {c: i for i, c in enumerate(_ZH_DIGITS)}
MAX_PROGRAM_LINES = 8
"""[D] Longer model outputs are not straight-line programs of this suite: scored wrong."""
_MAX_ABS = 10**12


def zh_numeral(n: int) -> str:
    """Return the Chinese numeral for ``0 <= n <= 999`` (``85 -> 八十五``, ``105 -> 一百零五``).

    Raises:
        ValueError: ``n`` out of range.
    """
    if not 0 <= n <= 999:
        raise ValueError(f"zh_numeral supports 0..999, got {n}")
    if n < 10:
        return _ZH_DIGITS[n]
    if n < 20:
        return "十" + (_ZH_DIGITS[n - 10] if n > 10 else "")
    if n < 100:
        tens, ones = divmod(n, 10)
        return _ZH_DIGITS[tens] + "十" + (_ZH_DIGITS[ones] if ones else "")
    hundreds, rest = divmod(n, 100)
    head = _ZH_DIGITS[hundreds] + "百"
    if rest == 0:
        return head
    if rest < 10:
        return head + "零" + _ZH_DIGITS[rest]
    tens, ones = divmod(rest, 10)
    return head + _ZH_DIGITS[tens] + "十" + (_ZH_DIGITS[ones] if ones else "")


def parse_zh_numeral(text: str) -> int | None:
    """Inverse of :func:`zh_numeral` (None when ``text`` is not one of its outputs)."""
    text = text.strip()
    for n in range(1000):  # 1000 candidates: simple and exactly the inverse
        if zh_numeral(n) == text:
            return n
    return None


class _Runner(ast.NodeVisitor):
    """Evaluates straight-line integer programs; anything else raises ValueError."""

    _OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}

    def __init__(self) -> None:
        self.env: dict[str, int] = {}
        self.printed: list[int] = []

    def run(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                self.env[stmt.targets[0].id] = self.value(stmt.value)
            elif (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)
                and stmt.value.func.id == "print"
                and len(stmt.value.args) == 1
                and not stmt.value.keywords
            ):
                self.printed.append(self.value(stmt.value.args[0]))
            else:
                raise ValueError("unsupported statement")

    def value(self, node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.env:
                raise ValueError(f"undefined name {node.id}")
            return self.env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in self._OPS:
            out = self._OPS[type(node.op)](self.value(node.left), self.value(node.right))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv):
            den = self.value(node.right)
            if den == 0:
                raise ValueError("division by zero")
            out = self.value(node.left) // den
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            out = -self.value(node.operand)
        else:
            raise ValueError("unsupported expression")
        if abs(out) > _MAX_ABS:
            raise ValueError("value too large")
        return out


def extract_code(text: str) -> str:
    """Return the program in a model output: the first fenced block if any, else the text itself."""
    fenced = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, re.DOTALL)
    return (fenced.group(1) if fenced else text).strip()


def run_straight_line(code: str) -> int | None:
    """Return what a straight-line integer program prints last, or None if it is not one / fails.

    Supported: ``name = expr``, ``print(expr)``; expr over int literals, names, ``+ - * //``,
    unary ``-``.
    Comment lines are ignored (``ast`` drops them).
    """
    if code.count("\n") >= MAX_PROGRAM_LINES:
        return None
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    runner = _Runner()
    try:
        runner.run(tree)
    except (ValueError, RecursionError):
        return None
    return runner.printed[-1] if runner.printed else None
