"""Instruction-following skill sets that train the source LoRAs (train only).

Stand-ins (see docs/data.md): ``chinese_chat`` uses the Chinese fields of the bilingual
Alpaca-52K (for Okapi-zh 52K), ``english_chat`` its English fields (for Stanford Alpaca),
``code_en``
Code Alpaca (for Magicoder OSS-Instruct). ``math_en`` (GSM8K train, for MetaMathQA) lives in
math.py.
The partition label is a coarse instruction kind: the instruction's leading verb, bucketed [D].
"""

from __future__ import annotations

import os
import re

from smartfed.data.example import Example
from smartfed.data.tasks.base import Task, field, read_json_array, read_jsonl, require_file

_KINDS = {
    "generate": "generate",
    "create": "generate",
    "write": "generate",
    "compose": "generate",
    "design": "generate",
    "come": "generate",
    "make": "generate",
    "construct": "generate",
    "explain": "explain",
    "describe": "explain",
    "what": "explain",
    "why": "explain",
    "how": "explain",
    "summarize": "explain",
    "tell": "explain",
    "discuss": "explain",
    "classify": "classify",
    "identify": "classify",
    "categorize": "classify",
    "determine": "classify",
    "find": "classify",
    "is": "classify",
    "which": "classify",
    "evaluate": "classify",
    "analyze": "classify",
    "rewrite": "rewrite",
    "edit": "rewrite",
    "translate": "rewrite",
    "convert": "rewrite",
    "paraphrase": "rewrite",
    "change": "rewrite",
    "correct": "rewrite",
    "rephrase": "rewrite",
    "list": "list",
    "name": "list",
    "give": "list",
    "provide": "list",
    "suggest": "list",
}
"""[D] Leading English verb -> coarse instruction kind (anything else: ``other``)."""


def instruction_kind(english_instruction: str) -> str:
    """Bucket an English instruction by its first word (used as the Dirichlet label)."""
    m = re.match(r"\W*([A-Za-z]+)", english_instruction)
    return _KINDS.get(m.group(1).lower(), "other") if m else "other"


def alpaca_prompt(instruction: str, inp: str) -> str:
    """Instruction plus optional input, separated by a blank line."""
    return f"{instruction.strip()}\n\n{inp.strip()}" if inp.strip() else instruction.strip()


class AlpacaBilingualSkill(Task):
    """One language side of the bilingual Alpaca-52K file (train only)."""

    metric = "none"
    file = "alpaca_zh/alpaca_chinese_52k_v3.jsonl"

    def __init__(self, name: str, lang: str, description: str) -> None:
        self.name, self.lang, self.description = name, lang, description

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        path = require_file(data_dir, self.file, self.name)
        out = []
        for lineno, obj in read_jsonl(path):
            instruction = field(obj, f"{self.lang}_instruction", path, lineno)
            inp = field(obj, f"{self.lang}_input", path, lineno)
            output = field(obj, f"{self.lang}_output", path, lineno)
            if not instruction.strip() or not output.strip():
                continue
            kind = instruction_kind(field(obj, "en_instruction", path, lineno))
            out.append(
                Example(
                    prompt=alpaca_prompt(instruction, inp),
                    response=output.strip(),
                    meta={
                        "index": len(out),
                        "line": lineno,
                        "category": kind,
                        "score": obj.get("score"),
                    },
                )
            )
        return out


class CodeAlpacaSkill(Task):
    """English code skill set: Code Alpaca 2k + new_codealpaca 4.5k (stand-in for Magicoder)."""

    name = "code_en"
    description = (
        "English code skill set (Code Alpaca 2k + 4.5k; stand-in for Magicoder OSS-Instruct); "
        "train only"
    )
    metric = "none"
    files = ("code_alpaca/code_alpaca_2k.json", "code_alpaca/new_codealpaca.json")

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        out = []
        for rel in self.files:
            path = require_file(data_dir, rel, self.name)
            for i, obj in enumerate(read_json_array(path)):
                where = f"element {i}"
                instruction = field(obj, "instruction", path, where)
                output = field(obj, "output", path, where)
                inp = obj.get("input", "") or ""
                if not instruction.strip() or not output.strip():
                    continue
                out.append(
                    Example(
                        prompt=alpaca_prompt(instruction, str(inp)),
                        response=output.strip(),
                        meta={
                            "index": len(out),
                            "source": rel,
                            "element": i,
                            "category": instruction_kind(instruction),
                        },
                    )
                )
        return out
