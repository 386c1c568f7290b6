"""The cpu-mini tasks (skills, composites, controls) and the suite's composition table.

Three compositions mirror the paper's tasks (docs/method.md §7) at a scale SmolLM2-135M learns
on 2 CPU cores:

=====================  ==========================  ==========================================
composite              skills composed             paper task it stands for
=====================  ==========================  ==========================================
``cpu_mini.zh_math``   ``skill.zh`` + ``skill.math``  Chinese math (Chinese chat + English math)
``cpu_mini.zh_code``   ``skill.zh`` + ``skill.code``  Chinese code (Chinese chat + English code)
``cpu_mini.hard_math`` ``skill.math`` + ``skill.code`` hard math, PAL (English math + English code)
=====================  ==========================  ==========================================

Composites that separate methods [D] (docs/cpu-mini.md):

============================= ===================================================================
``cpu_mini.zh_code_gap``      zh_code, no 七/八/九 in training rows, one in every eval row
``cpu_mini.zh_code_partial``  zh_code with numbers 10-999, 七/八/九 in 10% of the training rows
``cpu_mini.zh_math_partial``  zh_math, 七/八/九 in 10% of the training rows
``cpu_mini.zh_code_chain``    Chinese two-event story -> three-line program (zh + math + code),
                              七/八/九 in 10% of the training rows
``cpu_mini.zh_code_partpool`` the zh_code_partial rows over a partly relevant pool (skill.zh and
                              the two controls, no code LoRA)
============================= ===================================================================

Every split comes in three key-disjoint parts: ``train``, ``val`` (tuning) and ``eval``.

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
from smartfed.errors import DataError
from smartfed_bench.cpu_mini import generators as g
from smartfed_bench.cpu_mini.render import extract_code, run_straight_line

PREFIX = "cpu_mini."
TRAIN_ROWS = 2000
"""[D] Rows per training split (a few hundred steps of batch 8 see each row about once)."""
EVAL_ROWS = 200
"""[D] Rows per eval split (benchmarks score the first 100-200)."""
VAL_ROWS = 200
"""[D] Rows per validation split (learning-rate tuning; keys disjoint from train and eval)."""
PARTIAL_GAP_FRACTION = 0.10
"""[D] Share of the training rows of a ``*_partial`` composite that carry the gap digits."""
DATA_SEED = 0
"""[D] Seed of the row draws behind ``train_examples`` / ``eval_examples``."""
STOP = ("<|im_end|>", "\n\n")
_INT = re.compile(r"-?\d+")
PARTPOOL = "zh_code_partpool"
"""[D] The ``zh_code_partial`` rows under their own name, so the suite can pair them with a partly
relevant pool (:data:`SUITE`)."""


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
        accept: optional row filter (the ``*_gap`` composites).
        gap_fraction: when set, a partial skill gap: this share of the training rows carries a
            gap digit, every val/eval row does (the ``*_partial`` composites).
        rows_of: draw the rows of this task (short name) instead of its own: the same rows under
            another name (default: its own).
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
        gap_fraction: float | None = None,
        rows_of: str = "",
    ) -> None:
        self.name = PREFIX + short
        self.gen = gen
        self.kind = kind
        self.description = description
        self.max_new_tokens = max_new_tokens
        self.metric = "execution_accuracy" if kind == "program" else "accuracy"
        self.accept = accept
        self.gap_fraction = gap_fraction
        self.rows_of = PREFIX + (rows_of or short)

    def examples(self, split: str, n: int, seed: int = DATA_SEED) -> list[Example]:
        """Return ``n`` rows of ``split`` (train | val | eval) drawn with ``seed`` (deterministic).

        Raises:
            DataError: an unknown split or more rows than the partition holds.
        """
        if split not in g.SPLITS:
            raise DataError(
                f"{self.name}: split must be one of {', '.join(g.SPLITS)}, got {split!r}"
            )
        try:
            if self.gap_fraction is not None:
                rows = g.sample_partial_gap(
                    self.gen, self.rows_of, split, n, seed, self.gap_fraction
                )
            else:
                rows = g.sample_rows(self.gen, self.rows_of, split, n, seed, self.accept)
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
        """Return the 200-row eval split (keys disjoint from every train and val split)."""
        return self.examples("eval", EVAL_ROWS)

    def validation_examples(self, data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
        """Return the 200-row validation split (keys disjoint from every train and eval split)."""
        return self.examples("val", VAL_ROWS)

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
            f"{short}_gap",
            base.gen,
            base.kind,
            f"{base.description}; skill gap: no 七/八/九 digit in training rows, one in every "
            "eval row (only skill.zh's LoRA has seen them)",
            base.max_new_tokens,
            accept=g.gap_accept,
        )
        tasks[gap.name] = gap
    for short, gen, kind, mnt, desc in (
        (
            "zh_code_partial",
            g.composite_zh_code_wide,
            "program",
            32,
            "composite Chinese code, numbers 10-999: Chinese instruction -> 'print(347 * 25)', "
            "execution accuracy",
        ),
        (
            "zh_math_partial",
            g.composite_zh_math,
            "number",
            24,
            tasks[PREFIX + "zh_math"].description,
        ),
    ):
        task = CpuMiniTask(
            short,
            gen,
            kind,
            f"{desc}; partial skill gap: 七/八/九 in {PARTIAL_GAP_FRACTION:.0%} of the training "
            "rows, in every val/eval row",
            mnt,
            gap_fraction=PARTIAL_GAP_FRACTION,
        )
        tasks[task.name] = task
    story = CpuMiniTask(
        "zh_code_chain",
        g.composite_zh_code_chain,
        "program",
        "composite three-skill chain: Chinese two-event story -> a three-line program "
        f"(zh numerals + math story wording + code), execution accuracy; 七/八/九 in "
        f"{PARTIAL_GAP_FRACTION:.0%} of the training rows, in every val/eval row",
        48,
        gap_fraction=PARTIAL_GAP_FRACTION,
    )
    tasks[story.name] = story
    mixed = tasks[PREFIX + "zh_code_partial"]
    tasks[PREFIX + PARTPOOL] = CpuMiniTask(
        PARTPOOL,
        mixed.gen,
        mixed.kind,
        f"{mixed.description}; routed over a partly relevant pool (skill.zh + two irrelevant "
        "LoRAs, no code LoRA)",
        mixed.max_new_tokens,
        gap_fraction=PARTIAL_GAP_FRACTION,
        rows_of="zh_code_partial",
    )
    return tasks


TASKS: dict[str, CpuMiniTask] = _tasks()
"""Every cpu-mini task by registry name."""


@dataclass(frozen=True)
class Composition:
    """One composite task of the suite and the pools it is run with.

    Attributes:
        composite: the composite task name (train and eval on it).
        skills: the skill tasks whose LoRAs form the pool of the ``main`` runs [P: two relevant
            LoRAs per task; D: three for the three-skill chain, and one relevant plus two
            irrelevant ones for the partly relevant pool].
        irrelevant: skill tasks unrelated to the composite (the irrelevant-pool control).
        paper_task: the paper task this mirrors (docs/method.md §7).
    """

    composite: str
    skills: tuple[str, ...]
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
        Composition(
            PREFIX + "zh_code_partial",
            (PREFIX + "skill.zh", PREFIX + "skill.code"),
            CONTROL_SKILLS,
            "Chinese code (DoIT), partial skill gap: the digits 7-9 in 10% of the training rows",
        ),
        Composition(
            PREFIX + "zh_math_partial",
            (PREFIX + "skill.zh", PREFIX + "skill.math"),
            CONTROL_SKILLS,
            "Chinese math (Math23K -> MGSM-zh), partial skill gap: the digits 7-9 in 10% of the "
            "training rows",
        ),
        Composition(
            PREFIX + "zh_code_chain",
            (PREFIX + "skill.zh", PREFIX + "skill.math", PREFIX + "skill.code"),
            CONTROL_SKILLS,
            "a chain of the three: Chinese math story (MGSM-zh) answered by a program (PAL)",
        ),
        Composition(
            PREFIX + PARTPOOL,
            (PREFIX + "skill.zh", *CONTROL_SKILLS),
            CONTROL_SKILLS,
            "Chinese code, partial skill gap, with a partly relevant pool: the Chinese LoRA and "
            "two irrelevant ones, no code LoRA",
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
