"""Code tasks scored by Pass@1 on their unit tests (HumanEval, MBPP, the Chinese-code stand-in).

The model's program runs only in :func:`smartfed.eval.sandbox.run_python`. With greedy decoding and
one sample per problem, Pass@1 is the fraction of problems whose tests pass [P: Pass@1].

``code_zh`` is a STAND-IN: the paper's Chinese-code data (DoIT) is not available here (its GitHub
repo
has no data, Hugging Face only). We wrap HumanEval (eval) and MBPP train (train) prompts in a
Chinese
instruction. It measures following Chinese instructions to write English-specified Python, not DoIT.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

from smartfed.data.example import Example
from smartfed.data.tasks.base import Task, field, read_jsonl, require_file, resolve_data_dir
from smartfed.errors import DataError

CODE_TIMEOUT_S = 10.0
"""[D] Wall-clock limit per program + tests."""

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)

EN_HUMANEVAL = (
    "Complete the following Python function. Reply with the complete function (including the "
    "signature) in one ```python block.\n\n```python\n{prompt}```"
)
ZH_HUMANEVAL = (
    "请用 Python 完成下面的函数。请在一个 ```python 代码块中给出完整的函数（包括函数签名）。"
    "\n\n```python\n{prompt}```"
)
EN_MBPP = (
    "{text}\nYour code should pass these tests:\n{tests}\n"
    "Reply with the code only, in one ```python block."
)
ZH_MBPP = "{text}\n你的代码需要通过以下测试：\n{tests}\n请只在一个 ```python 代码块中给出代码。"


def extract_code(prediction: str) -> str:
    """Return the first fenced code block of a model output, or the whole output when it has
    none.
    """
    blocks = [b for b in _FENCE.findall(prediction) if b.strip()]
    return blocks[0] if blocks else prediction


def humaneval_stages(prediction: str, meta: dict[str, Any]) -> list[str]:
    """The HumanEval program as sandbox stages: prompt context + the model's function, the tests,
    then ``check(<entry point>)``.

    When the output re-defines the entry point, everything in the prompt before that ``def``
    (imports, helper functions) is kept and the model's code follows; otherwise the output is taken
    as the body that continues the prompt. The stages are compiled separately, so the model's code
    cannot turn the tests into a string or a comment.
    """
    code = extract_code(prediction)
    prompt, entry = meta["prompt_code"], meta["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        head = (
            prompt[: m.start()]
            if (m := re.search(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.MULTILINE))
            else ""
        )
        body = head + "\n" + code
    else:
        body = prompt + code
    return [body, meta["test"], f"check({entry})\n"]


def humaneval_program(prediction: str, meta: dict[str, Any]) -> str:
    """The HumanEval stages joined into one text (what the records show as ``extracted``)."""
    return "\n\n".join(humaneval_stages(prediction, meta))


def mbpp_stages(prediction: str, meta: dict[str, Any]) -> list[str]:
    """The MBPP program as sandbox stages: the model's code, the setup code, then each assert."""
    return [extract_code(prediction), meta.get("setup", "") or "", *meta["tests"]]


def mbpp_program(prediction: str, meta: dict[str, Any]) -> str:
    """The MBPP stages joined into one text (what the records show as ``extracted``)."""
    return "\n\n".join(mbpp_stages(prediction, meta))


class _PassAtOne(Task):
    metric = "pass@1"
    stop = ("<|im_end|>",)
    max_new_tokens = 384

    def stages(self, prediction: str, example: Example) -> list[str]:
        raise NotImplementedError

    def program(self, prediction: str, example: Example) -> str:
        """The stages joined into one text (the ``extracted`` field of the records)."""
        return "\n\n".join(self.stages(prediction, example))

    def extract(self, prediction: str, example: Example) -> str | None:
        return self.program(prediction, example)

    def judge(self, prediction: str, example: Example) -> tuple[str | None, bool]:
        """Run the stages in the sandbox; a pass means the last test stage returned.

        The recorded ``extracted`` value is the program text assembled here from the model output
        and the dataset; nothing the child prints or returns reaches the records.
        """
        from smartfed.eval.sandbox import run_python  # layer 4 -> layer 4, imported lazily

        stages = self.stages(prediction, example)
        return "\n\n".join(stages), run_python(stages, timeout_s=CODE_TIMEOUT_S).ok

    def score(self, prediction: str, example: Example) -> bool:
        return self.judge(prediction, example)[1]


def humaneval_rows(
    data_dir: str | os.PathLike[str] | None, task: str, template: str
) -> list[Example]:
    """Read HumanEval (``HumanEval.jsonl``, else ``HumanEval.jsonl.gz``)."""
    root = resolve_data_dir(data_dir)
    plain = root / "humaneval" / "HumanEval.jsonl"
    path = (
        plain if plain.is_file() else require_file(data_dir, "humaneval/HumanEval.jsonl.gz", task)
    )
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        try:
            rows = [(i, json.loads(line)) for i, line in enumerate(lines, 1) if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON line ({err.msg}); re-download the file") from err
    else:
        rows = list(read_jsonl(path))
    out = []
    for lineno, obj in rows:
        meta = {
            k: field(obj, k, path, lineno) for k in ("task_id", "prompt", "entry_point", "test")
        }
        out.append(
            Example(
                prompt=template.format(prompt=meta["prompt"]),
                response=f"```python\n{meta['prompt']}{obj.get('canonical_solution', '')}```",
                answer=None,
                meta={
                    "index": len(out),
                    "line": lineno,
                    "task_id": meta["task_id"],
                    "prompt_code": meta["prompt"],
                    "entry_point": meta["entry_point"],
                    "test": meta["test"],
                    "category": "humaneval",
                },
            )
        )
    return out


def mbpp_rows(
    data_dir: str | os.PathLike[str] | None, task: str, template: str, ids: range
) -> list[Example]:
    """Read ``mbpp/mbpp.jsonl`` rows whose ``task_id`` is in ``ids`` (test 11-510, train
    601-974).
    """
    path: Path = require_file(data_dir, "mbpp/mbpp.jsonl", task)
    out = []
    for lineno, obj in read_jsonl(path):
        task_id = field(obj, "task_id", path, lineno, int)
        if task_id not in ids:
            continue
        text = field(obj, "text", path, lineno)
        tests = field(obj, "test_list", path, lineno, list)
        if not tests or not all(isinstance(t, str) for t in tests):
            raise DataError(f"{path}:{lineno}: 'test_list' must be a non-empty list of strings")
        code = field(obj, "code", path, lineno)
        out.append(
            Example(
                prompt=template.format(text=text.strip(), tests="\n".join(tests)),
                response=f"```python\n{code.replace(chr(13), '')}\n```",
                answer=None,
                meta={
                    "index": len(out),
                    "line": lineno,
                    "task_id": task_id,
                    "tests": tests,
                    "setup": obj.get("test_setup_code", "") or "",
                    "category": "mbpp",
                },
            )
        )
    return out


MBPP_TEST_IDS = range(11, 511)
MBPP_TRAIN_IDS = range(601, 975)


class HumanEvalTask(_PassAtOne):
    """HumanEval (164 problems), Pass@1; eval only (English code; stand-in for DoIT eval)."""

    name = "humaneval"
    description = "HumanEval Python Pass@1 (sandboxed tests); eval only"

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return humaneval_rows(data_dir, self.name, EN_HUMANEVAL)

    def stages(self, prediction: str, example: Example) -> list[str]:
        return humaneval_stages(prediction, dict(example.meta))


class MbppTask(_PassAtOne):
    """MBPP: test = task_ids 11-510, train = 601-974 (upstream split), Pass@1."""

    name = "mbpp"
    description = "MBPP Python Pass@1 (sandboxed asserts); train 601-974 / eval 11-510"

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return mbpp_rows(data_dir, self.name, EN_MBPP, MBPP_TRAIN_IDS)

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return mbpp_rows(data_dir, self.name, EN_MBPP, MBPP_TEST_IDS)

    def stages(self, prediction: str, example: Example) -> list[str]:
        return mbpp_stages(prediction, dict(example.meta))


class CodeZhStandIn(_PassAtOne):
    """STAND-IN for DoIT Chinese code: Chinese instruction around HumanEval (eval) / MBPP train
    (train).
    """

    name = "code_zh"
    description = (
        "STAND-IN for DoIT (unavailable): HumanEval/MBPP with a Chinese instruction, Pass@1"
    )

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return mbpp_rows(data_dir, self.name, ZH_MBPP, MBPP_TRAIN_IDS)

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        return humaneval_rows(data_dir, self.name, ZH_HUMANEVAL)

    def stages(self, prediction: str, example: Example) -> list[str]:
        return humaneval_stages(prediction, dict(example.meta))
