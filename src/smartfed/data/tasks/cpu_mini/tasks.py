"""The cpu-mini tasks (skills, composites, controls) and the suite's composition table.

Three compositions mirror the paper's tasks (SPEC §1.5) at a scale SmolLM2-135M learns on 2 CPU
cores:

=====================  ==========================  ==========================================
composite              skills composed             paper task it stands for
=====================  ==========================  ==========================================
``cpu_mini.zh_math``   ``skill.zh`` + ``skill.math``  Chinese math (Chinese chat + English math)
``cpu_mini.zh_code``   ``skill.zh`` + ``skill.code``  Chinese code (Chinese chat + English code)
``cpu_mini.hard_math`` ``skill.math`` + ``skill.code`` hard math, PAL (English math + English code)
=====================  ==========================  ==========================================

Controls: ``skill.reverse`` and ``skill.sort`` are irrelevant skills (a pool of irrelevant LoRAs),
and a router over random experts with the pool's shapes is built by the benchmark from these
skills' shapes. Every composite is chain-style (the output spells out an intermediate step: the
digit equation or the program), the shape the prototype found learnable (docs/cpu-mini.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from smartfed.data.example import Example
from smartfed.data.tasks.base import Task
from smartfed.data.tasks.cpu_mini import generators as g
from smartfed.data.tasks.cpu_mini.render import extract_code, run_straight_line
from smartfed.errors import DataError

PREFIX = "cpu_mini."
TRAIN_ROWS = 2000
"""[D] Rows per training split (a few hundred steps of batch 8 see each row about once)."""
EVAL_ROWS = 200
"""[D] Rows per held-out split (benchmarks score the first 100-200)."""
DATA_SEED = 0
"""[D] Seed of the row draws behind ``train_examples`` / ``eval_examples``."""
STOP = ("<|im_end|>", "\n\n")
_INT = re.compile(r"-?\d+")


def _last_int(text: str) -> str | None:
    found = _INT.findall(text.split("=")[-1]) or _INT.findall(text)
    return found[-1] if found else None


class CpuMiniTask(Task):
    """A generated cpu-mini task: rows come from a seeded generator, ``data_dir`` is not used.

    Args:
        short: name without the ``cpu_mini.`` prefix (``skill.math``, ``zh_math``, ...).
        gen: the row generator.
        kind: ``number`` (last integer after ``=``), ``program`` (run it, compare the printed value)
            or ``text`` (whitespace-normalised exact match).
        description: one line.
        max_new_tokens: generation budget [D].
    """

    label_key = "category"
    stop: Sequence[str] = STOP

    def __init__(
        self,
        short: str,
        gen: g.Generator,
        kind: str,
        description: str,
        max_new_tokens: int,
        accept: g.RowFilter | None = None,
    ) -> None:
        self.name = PREFIX + short
        self.gen = gen
        self.kind = kind
        self.description = description
        self.max_new_tokens = max_new_tokens
        self.metric = "execution_accuracy" if kind == "program" else "accuracy"
        self.accept = accept

    def examples(self, split: str, n: int, seed: int = DATA_SEED) -> list[Example]:
        """Return ``n`` rows of ``split`` ("train" | "eval") drawn with ``seed`` (deterministic).

        Raises:
            DataError: an unknown split or more rows than the partition holds.
        """
        if split not in ("train", "eval"):
            raise DataError(f"{self.name}: split must be 'train' or 'eval', got {split!r}")
        try:
            rows = g.sample_rows(self.gen, self.name, split, n, seed, self.accept)
        except ValueError as err:
            raise DataError(str(err)) from err
        return [
            Example(
                r.prompt,
                r.response,
                r.answer,
                {"category": r.category, "key": list(r.key), "task": self.name, "split": split},
            )
            for r in rows
        ]

    def train_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Return the 2,000-row training split (generated; ``data_dir`` is ignored)."""
        return self.examples("train", TRAIN_ROWS)

    def eval_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Return the 200-row held-out split (operand keys disjoint from every training split)."""
        return self.examples("eval", EVAL_ROWS)

    def extract(self, prediction: str, example: Example) -> str | None:
        """Return the scored part of an output: number, program's printed value, or text."""
        if self.kind == "number":
            return _last_int(prediction)
        if self.kind == "program":
            value = run_straight_line(extract_code(prediction))
            return None if value is None else str(value)
        return " ".join(prediction.split())

    def score(self, prediction: str, example: Example) -> bool:
        """Return whether the extracted answer equals the gold answer exactly."""
        got = self.extract(prediction, example)
        return (
            got is not None
            and example.answer is not None
            and got == " ".join(example.answer.split())
        )


def _tasks() -> dict[str, CpuMiniTask]:
    specs = [
        (
            "skill.math",
            g.skill_math,
            "number",
            24,
            "English math skill: 2-digit plus/minus, plain or one-step story -> '47 + 38 = 85'",
        ),
        (
            "skill.zh",
            g.skill_zh,
            "text",
            24,
            "Chinese skill: Chinese arithmetic phrase (Chinese numerals) -> English with digits",
        ),
        (
            "skill.code",
            g.skill_code,
            "program",
            40,
            "code skill: explicit English instruction -> straight-line Python program (run)",
        ),
        (
            "skill.reverse",
            g.skill_reverse,
            "text",
            16,
            "control (irrelevant skill): reverse letters",
        ),
        ("skill.sort", g.skill_sort, "text", 20, "control (irrelevant skill): sort letters"),
        (
            "zh_math",
            g.composite_zh_math,
            "number",
            24,
            "composite Chinese math: Chinese question with Chinese numerals -> '47 + 38 = 85'",
        ),
        (
            "zh_code",
            g.composite_zh_code,
            "program",
            24,
            "composite Chinese code: Chinese instruction -> 'print(47 * 38)', execution accuracy",
        ),
        (
            "hard_math",
            g.composite_hard_math,
            "program",
            40,
            "composite hard math (PAL): two-step 3-digit story -> program, execution accuracy",
        ),
    ]
    tasks = {PREFIX + s: CpuMiniTask(s, gen, kind, desc, mnt) for s, gen, kind, mnt, desc in specs}
    for short in ("zh_code", "zh_math"):
        base = tasks[PREFIX + short]
        gap = CpuMiniTask(
            f"{short}_gap", base.gen, base.kind,
            f"{base.description}; skill gap: no 七/八/九 digit in training rows, one in every "
            "eval row (only skill.zh's LoRA has seen them)",
            base.max_new_tokens, accept=g.gap_accept,
        )
        tasks[gap.name] = gap
    return tasks


TASKS: dict[str, CpuMiniTask] = _tasks()
"""Every cpu-mini task by registry name."""


@dataclass(frozen=True)
class Composition:
    """One composite task of the suite and the pools it is run with.

    Attributes:
        composite: the composite task name (train and eval on it).
        skills: the two relevant skill tasks whose LoRAs form the pool [P: two LoRAs per task].
        irrelevant: skill tasks unrelated to the composite (the irrelevant-pool control).
        paper_task: the paper task this mirrors (SPEC §1.5).
    """

    composite: str
    skills: tuple[str, str]
    irrelevant: tuple[str, ...]
    paper_task: str


CONTROL_SKILLS = (PREFIX + "skill.reverse", PREFIX + "skill.sort")
SUITE: dict[str, Composition] = {
    c.composite: c
    for c in (
        Composition(
            PREFIX + "zh_math",
            (PREFIX + "skill.zh", PREFIX + "skill.math"),
            CONTROL_SKILLS,
            "Chinese math (Math23K -> MGSM-zh)",
        ),
        Composition(
            PREFIX + "zh_code",
            (PREFIX + "skill.zh", PREFIX + "skill.code"),
            CONTROL_SKILLS,
            "Chinese code (DoIT)",
        ),
        Composition(
            PREFIX + "zh_code_gap",
            (PREFIX + "skill.zh", PREFIX + "skill.code"),
            CONTROL_SKILLS,
            "Chinese code (DoIT), skill gap: the digits 7-9 only in skill.zh's data",
        ),
        Composition(
            PREFIX + "zh_math_gap",
            (PREFIX + "skill.zh", PREFIX + "skill.math"),
            CONTROL_SKILLS,
            "Chinese math (Math23K -> MGSM-zh), skill gap: the digits 7-9 only in skill.zh's data",
        ),
        Composition(
            PREFIX + "hard_math",
            (PREFIX + "skill.math", PREFIX + "skill.code"),
            CONTROL_SKILLS,
            "hard math, PAL (MathCodeInstruct -> GSM-Hard)",
        ),
    )
}
"""The cpu-mini suite: composite name -> composition."""
SKILLS: tuple[str, ...] = tuple(n for n in TASKS if n.startswith(PREFIX + "skill."))
"""Every skill task whose LoRA the suite's pool needs (relevant and control)."""
DATA_FRACTION_VARIANT = 0.1
"""[P] The 10%-data variant: the same composite with ``data_fraction=0.1`` in the runtime."""


def get_cpu_mini_task(name: str) -> CpuMiniTask:
    """Return a cpu-mini task by name.

    Raises:
        DataError: unknown name (lists the valid ones).
    """
    if name not in TASKS:
        raise DataError(f"unknown cpu-mini task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
