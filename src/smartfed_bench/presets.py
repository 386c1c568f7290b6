"""The ``smartfed bench`` grids: variants, the shared protocol, learning rates and presets [D].

Presets are documented for users in docs/cpu-mini.md; :mod:`smartfed_bench.bench` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from smartfed.config import Scalar
from smartfed.errors import ConfigError
from smartfed.fed.candidates import CANDIDATE_SETTINGS
from smartfed_bench.cpu_mini import DATA_FRACTION_VARIANT

VARIANTS: dict[str, dict[str, Scalar]] = {
    "main": {},
    "irrelevant": {},
    "random": {},
    "data10": {"data_fraction": DATA_FRACTION_VARIANT},
    "eeqa_warmup3": {"eeqa_warmup_rounds": 3},
    "topk_all": {"topk_experts": 16},
    "scale_rank": {"output_scale_mode": "rank", "renormalize_topk": False},
    "router_init0": {"router_init_std": 0.0},
    "wire_bf16": {"wire_dtype": "bfloat16"},
    "wire_int8": {"wire_dtype": "int8"},
    "router_proj64": {"router_proj_dim": 64},
}
"""[D] Variant -> run-config overrides. ``irrelevant`` / ``random`` change the pool instead
(:func:`pool_sources`); ``data10`` is the paper's 10%-data setting [P]; the others are the
attempts at closing SmartFed's gap that the paper leaves open (EEQA schedule, no sparsity = all
M = 16 experts, the mixture scale, router initialisation) and the cheaper router transfers (bf16 /
int8 on the wire, a router on a fixed 64-dim projection of x), run with the ``tuning`` preset.
The ``wire_<setting>`` variants (:data:`WIRE_VARIANTS`) are added below."""
WIRE_VARIANTS: dict[str, dict[str, Scalar]] = {
    f"wire_{name}": dict(setting)
    for name, setting in CANDIDATE_SETTINGS.items()
    if name != "full_fp32"
}
"""[D] One variant per router-size / wire-encoding candidate of
:data:`smartfed.fed.candidates.CANDIDATE_SETTINGS` (``wire_proj64_int8_delta_ef``, ...). The
reference, the paper's full float32 router, is the ``main`` variant's ``smartfed``."""
VARIANTS.update(WIRE_VARIANTS)
ROUTER_METHODS = ("smartfed", "smartfed_no_eeqa", "mole")

COMMON: dict[str, Scalar] = {
    "num_clients": 8,
    "sample_clients": 2,
    "num_rounds": 8,
    "local_steps": 5,
    "batch_size": 8,
    "topk_experts": 8,
    "heldout_examples": 64,
    "eval_every": 4,
    "eval_limit": 50,
    "max_new_tokens": 40,
    "eval_batch_size": 25,
    "max_seq_len": 128,
    "partitioner": "iid",
}
"""[D] The CPU-scale protocol: the paper's shape (2 sampled clients, FedAvg, local AdamW steps,
K of M experts) at a size 2 cores finish (paper: 20 clients, 20 rounds, 10 steps, batch 16)."""

METHOD_LR: dict[str, float] = {
    "smartfed": 5e-3,
    "smartfed_no_eeqa": 5e-3,
    "mole": 5e-3,
    "fedit": 2e-3,
    "ffa_lora": 2e-3,
    "merge_fedit": 2e-3,
    "pool_fedit": 2e-3,
    "merge": 2e-3,
}
"""[D] Learning rate per method family: routers 5e-3, LoRAs 2e-3 (the rates that learned in
our CPU-scale prototype: a router at 1e-3 lagged far behind 5e-3 at 60 steps); merge and lorahub
train nothing (lorahub's search has its own step size). The paper uses 5e-4 for all at 7B.

LoRA scaling of the LoRA baselines [D]: PEFT ``alpha = r`` (scaling 1), not the skill LoRAs'
``alpha / r = 2``, and not swept separately: with AdamW and ``B = 0`` at the start, scaling ``s``
at rate ``lr`` is the same as scaling 1 with ``B`` at rate ``s * lr`` and ``A`` at ``lr`` (Adam is
invariant to the gradient's scale up to its epsilon), so the v2 sweep (x1/3 .. x3 for both
factors) brackets the skill LoRAs' setting."""


ONE_ROUND = ("merge",)
"""[D] Methods that train nothing: every round would repeat the same evaluation, so they run one."""
DEMO_METHODS = ("smartfed", "fedit", "merge")
"""``smartfed demo``: SmartFed, FedIT (a fresh LoRA) and merge (the pool averaged, no training)."""
DEMO_OVERRIDES: dict[str, Scalar] = {
    "num_rounds": 3,
    "heldout_examples": 32,
    "eval_every": 0,
    "eval_limit": 25,
}
"""[D] ``smartfed demo`` and ``smartfed bench --preset demo``: a short run of :data:`COMMON`."""


@dataclass(frozen=True)
class Cell:
    """Methods run on one task in one variant, for seeds ``0 .. seeds-1``."""

    task: str
    variant: str
    methods: tuple[str, ...]
    seeds: int


@dataclass(frozen=True)
class Preset:
    """A named bench grid: cells plus run-config overrides shared by every run.

    Attributes:
        cells: the grid's cells.
        overrides: run-config keys shared by every run of the preset.
        lr_grid: learning-rate multipliers swept on seed 0 for every method in ``tuned`` [D];
            empty = each method runs at its :data:`METHOD_LR` rate.
        tuned: the methods that get the sweep (the trainable ones).
        pool_seeds: the skill-LoRA pool of run seed ``k`` is trained with seed
            ``pool_seeds[k % len(pool_seeds)]``.
        base_lr: per-method rates that replace :data:`METHOD_LR` in this preset.
        dtype: the base model's dtype for the runs and the skill LoRAs (``smartfed bench
            --dtype`` overrides it).
    """

    cells: tuple[Cell, ...]
    overrides: dict[str, Scalar] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = ()
    tuned: tuple[str, ...] = ()
    pool_seeds: tuple[int, ...] = (0,)
    base_lr: dict[str, float] = field(default_factory=dict)
    dtype: str = "bfloat16"

    def rate(self, method: str) -> float:
        """The learning rate a method's runs (or the centre of its sweep) start from:
        ``base_lr``, else :data:`METHOD_LR`."""
        return self.base_lr.get(method, METHOD_LR.get(method, 2e-3))

    def pool_seed(self, seed: int) -> int:
        """The pool seed of run seed ``seed``."""
        return self.pool_seeds[seed % len(self.pool_seeds)]

    def sweeps(self, method: str) -> bool:
        """Whether ``method`` gets the learning-rate sweep (in the ``main`` variant; the other
        variants of a swept method run at the rate the ``main`` sweep chose)."""
        return bool(self.lr_grid) and method in self.tuned

    @property
    def tasks(self) -> tuple[str, ...]:
        """The preset's tasks in order (the first is its primary task)."""
        return tuple(dict.fromkeys(c.task for c in self.cells))


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid.

    ``lr_mult`` is set for a method under a learning-rate sweep: the multiplier of its
    :data:`METHOD_LR` rate (``None``: the plain rate). A planned seed > 0 of a swept method has
    ``lr_mult=None`` until the sweep chose (:func:`smartfed_bench.bench.resolve_rate`).
    """

    task: str
    variant: str
    method: str
    seed: int
    lr_mult: float | None = None

    def subdir(self) -> Path:
        """Where its run directory lives under the bench output dir."""
        base = Path(self.task) / self.variant / self.method
        if self.lr_mult is not None:
            base = base / lr_tag(self.lr_mult)
        return base / f"seed{self.seed}"


def lr_tag(mult: float) -> str:
    """Directory name of a sweep multiplier (``lr-x0.333``, ``lr-x1``, ``lr-x3``)."""
    return f"lr-x{mult:.3g}"


ALL_ROUTED = ("smartfed", "smartfed_no_eeqa", "fedit", "pool_fedit", "merge", "lorahub", "mole")
PRIMARY = "cpu_mini.zh_code_gap"
TRAINABLE = ("smartfed", "smartfed_no_eeqa", "fedit", "pool_fedit", "mole")
"""The methods whose learning rate is swept (merge trains nothing, lorahub searches)."""
V2_LR: dict[str, float] = {
    **METHOD_LR,
    **dict.fromkeys(("fedit", "ffa_lora", "merge_fedit", "pool_fedit"), 0.006),
}
"""[D] The centres of the v2 sweep: routers 5e-3, LoRAs 6e-3, so both families sweep about the same
rates (1.7e-3 / 5e-3 / 1.5e-2 and 2e-3 / 6e-3 / 1.8e-2). The first v2 sweep centred the LoRAs on
2e-3 and both LoRA methods chose its top rate (6e-3) on ``zh_code_partial``: an optimum at the
grid's edge is not bracketed, so the LoRA grid moved up one step."""
LR_GRID = (1 / 3, 1.0, 3.0)
"""[D] Learning-rate multipliers of the v2 sweep, the same for every method, around each family's
:data:`V2_LR` rate (routers 1.7e-3 / 5e-3 / 1.5e-2, LoRAs 2e-3 / 6e-3 / 1.8e-2)."""
V2_TASKS = (
    "cpu_mini.zh_code_partial",
    "cpu_mini.zh_code_chain",
    "cpu_mini.zh_code_partpool",
    PRIMARY,
)
"""[D] The v2 tasks: the partial skill gap (its primary task), a harder chain, a partly relevant
pool, and the full skill gap ``zh_code_gap`` kept as one labelled task. Names not in the suite
(yet) are left out (:func:`v2_tasks`)."""
V2: dict[str, Scalar] = {
    "num_rounds": 8,
    "local_steps": 5,
    "eval_every": 0,
    "eval_limit": 200,
    "tf_eval_every": 1,
    "val_examples": 200,
    "heldout_examples": 64,
    "gradient_checkpointing": False,
}
"""[D] The v2 protocol on top of :data:`COMMON`: teacher-forced accuracy and eval-distribution
loss every round on 200 eval rows, greedy generation (the task metric) after the last round only,
the sweep's score on 200 val rows after the last round. Activation checkpointing is off: at batch
8 x 128 tokens memory is no constraint, and it costs ~1.3x CPU time per step for identical losses
(benchmarks/results/client_memory.json)."""


V2_DTYPE = "float32"
"""[D] The v2 presets run (and train their skill LoRAs) in float32, not bfloat16: on a CPU without
native bfloat16 matrix instructions (AVX512-BF16 / AMX; e.g. AVX2-only cores) a bfloat16 matmul is
emulated, measured 8.8x slower than float32 on a 2-core AMD EPYC (7.8 vs 68.5 GFLOPS, one thread) and
16x slower per training step (70 vs 4.5 s; ``benchmarks/results/dtype_speed.json``), while on a CPU with them bfloat16 is only 1.3-1.7x faster. A
multi-session benchmark cannot choose its machine, and every run of one comparison must use the
same dtype, so it uses the one that is never pathological."""


def v2_tasks() -> tuple[str, ...]:
    """The :data:`V2_TASKS` that exist in the cpu-mini suite, in order."""
    from smartfed_bench.cpu_mini import SUITE

    return tuple(t for t in V2_TASKS if t in SUITE) or (PRIMARY,)


def _v2_preset() -> Preset:
    return Preset(
        cells=tuple(Cell(t, "main", (*TRAINABLE, "merge"), 3) for t in v2_tasks()),
        overrides=V2,
        lr_grid=LR_GRID,
        tuned=TRAINABLE,
        pool_seeds=(1, 0),
        base_lr=V2_LR,
        dtype=V2_DTYPE,
    )


WIRE_FINALISTS = ("proj32_int8_delta_ef", "proj64_int8_delta_ef")
"""[D] The candidates run on every v2 task with 3 seeds (``v2-wire``): the cheapest settings that
stay within 1/10 of FedIT's bytes per round (docs/cpu-mini.md); ``v2-wire-screen`` runs every
candidate once on the primary task."""


def _wire_preset(settings: tuple[str, ...], tasks: tuple[str, ...], seeds: int) -> Preset:
    """SmartFed under router-size / wire-encoding variants, on the v2 protocol and pools, at the
    learning rate the ``v2`` preset's sweep chose for ``smartfed`` (same output dir)."""
    return Preset(
        cells=tuple(Cell(t, f"wire_{s}", ("smartfed",), seeds) for t in tasks for s in settings),
        overrides=V2,
        lr_grid=LR_GRID,
        tuned=("smartfed",),
        pool_seeds=(1, 0),
        base_lr=V2_LR,
        dtype=V2_DTYPE,
    )


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        cells=(
            Cell(PRIMARY, "main", ALL_ROUTED, 3),
            Cell(PRIMARY, "irrelevant", ("smartfed",), 2),
            Cell(PRIMARY, "random", ("smartfed",), 2),
            Cell(PRIMARY, "data10", ("smartfed", "fedit"), 2),
            Cell("cpu_mini.hard_math", "main", ("smartfed", "fedit", "pool_fedit"), 2),
        ),
    ),
    "demo": Preset(cells=(Cell(PRIMARY, "main", DEMO_METHODS, 1),), overrides=DEMO_OVERRIDES),
    "tuning": Preset(
        cells=(
            *(
                Cell(PRIMARY, v, ("smartfed",), 2)
                for v in ("wire_bf16", "wire_int8", "router_proj64")
            ),
            *(
                Cell(PRIMARY, v, ("smartfed",), 1)
                for v in ("eeqa_warmup3", "topk_all", "scale_rank", "router_init0")
            ),
        ),
    ),
    "full": Preset(
        cells=tuple(
            Cell(task, variant, methods, 3)
            for task in (PRIMARY, "cpu_mini.zh_code", "cpu_mini.zh_math_gap", "cpu_mini.hard_math")
            for variant, methods in (
                ("main", (*ALL_ROUTED, "ffa_lora", "merge_fedit")),
                ("irrelevant", ROUTER_METHODS),
                ("random", ("smartfed",)),
                ("data10", ("smartfed", "fedit")),
            )
        ),
        overrides={"num_rounds": 20, "eval_limit": 100},
    ),
    "v2": _v2_preset(),
    "v2-wire-screen": _wire_preset(
        tuple(n for n in CANDIDATE_SETTINGS if n != "full_fp32"), v2_tasks()[:1], 1
    ),
    "v2-wire": _wire_preset(WIRE_FINALISTS, v2_tasks(), 3),
}
"""[D] ``quick``: the committed ``benchmarks/results/cpu-mini.json``; ``demo``: ``make demo``;
``tuning``: SmartFed variants on the primary task; ``full``: every method, task and control with
the paper's 20 rounds (hours on 2 cores); ``v2``: the tuned comparison (equal learning-rate sweep
on a validation split, accuracy every round, 3 seeds on 2 pools; docs/cpu-mini.md);
``v2-wire-screen`` / ``v2-wire``: the router-size and wire-encoding candidates against the full
float32 router, run into the ``v2`` output dir after its sweeps."""


def get_preset(name: str) -> Preset:
    """Return a preset by name.

    Raises:
        ConfigError: unknown name (lists the presets).
    """
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
