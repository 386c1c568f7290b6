"""The one typed run configuration, validated at the edge.

Every entry point parses once: the CLI with :meth:`RunConfig.from_toml` /
:meth:`RunConfig.from_flat`,
the Flower apps with :meth:`RunConfig.from_flat` on ``context.run_config``. Only typed objects cross
function boundaries after that; defaults live only here.

Leaf field names are unique across sections, so a flat key may be the bare field name
(``topk_experts``, matching the upstream README's ``--topk_experts``) or the dotted path
(``router.topk_experts``). Tags: [P] = the paper's value (docs/method.md §7), [D] = our default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from smartfed.errors import ConfigError

Scalar = bool | int | float | str
DTYPES = ("auto", "bfloat16", "float32", "float16")
OUTPUT_SCALE_MODES = ("rank", "topk", "quota", "constant")
PARTITIONERS = ("iid", "dirichlet")
ENGINES = ("simulation", "deployment")
WIRE_DTYPES = ("float32", "bfloat16", "int8")
AGGREGATIONS = ("mean", "trimmed_mean", "median")
QUANTIZATIONS = ("none", "8bit", "4bit")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _require(cond: bool, field_name: str, value: object, rule: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes no rule; inf none
        raise ConfigError(f"{field_name}={value!r}: must be a finite number ({rule})")
    if not cond:
        raise ConfigError(f"{field_name}={value!r}: {rule}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which base model to load and how."""

    model_name_or_path: str = "default"
    """Hub id, local HF directory, ``.gguf`` file, or ``default`` (embedded SmolLM2-135M)."""
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    """Weights dtype. ``auto`` [D] = the fastest native one of the device: CUDA bfloat16 (float16
    on GPUs without bf16), CPU bfloat16 only with bf16 matrix instructions (avx512_bf16 /
    amx_bf16), else float32, also on MPS. Without them a CPU emulates bf16 matmuls: measured 8.8x
    slower than float32 (7.8 vs 68.5 GFLOPS, one thread, AVX2-only AMD EPYC), 16x per SmolLM2-135M
    training step; with them bf16 is 1.3-1.7x faster. A run records the concrete dtype in its
    ``config.json`` and a resumed run keeps it (smartfed.model.dtype)."""
    device: str = "auto"
    """``auto`` [D] (CUDA if available, else Apple MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``; asking for an absent CUDA/MPS device is an error. Simulation clients run on the GPU
    Ray assigns them (see ``client_gpus``); the server evaluates on this device (docs/gpu.md)."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Load the frozen base's linear layers 8-bit (LLM.int8) or 4-bit (NF4, double quantisation,
    computing in ``dtype``) through bitsandbytes: CUDA only, needs ``pip install
    'smartfed[quant]'``. Routers and experts stay in ``dtype``; outputs are close to, not
    bit-identical with, the unquantised base [D: none]."""
    cache_dir: str = ""
    """Where GGUF models are cached as safetensors; empty = ``$SMARTFED_CACHE``, else
    ``$XDG_CACHE_HOME/smartfed``, else ``~/.cache/smartfed``."""
    max_seq_len: int = 256
    """Training/eval sequences are truncated to this many tokens."""

    def __post_init__(self) -> None:
        _require(self.dtype in DTYPES, "dtype", self.dtype, f"choose one of {DTYPES}")
        _require(self.max_seq_len > 0, "max_seq_len", self.max_seq_len, "must be > 0")
        _require(bool(self.model_name_or_path), "model_name_or_path", "", "must not be empty")
        _require(
            DEVICE_PATTERN.fullmatch(self.device) is not None,
            "device",
            self.device,
            "choose auto, cpu, cuda, cuda:N or mps",
        )
        _require(
            self.quantization in QUANTIZATIONS,
            "quantization",
            self.quantization,
            f"choose one of {QUANTIZATIONS}",
        )


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """Which LoRA modules form the expert pool."""

    lora_pool: str = ""
    """Comma-separated registered names or PEFT adapter dirs / hub ids (README, Using it).
    ``smartfed train`` also takes ``cpu-mini:<skill>[@<pool seed>]`` (e.g. ``cpu-mini:skill.zh@1``):
    that cpu-mini skill LoRA, trained with that seed and cached (docs/cpu-mini.md)."""
    registry: str = ""
    """Pool registry JSON; empty = ``$SMARTFED_CACHE/registry.json``."""

    @property
    def sources(self) -> tuple[str, ...]:
        """The pool entries in order, stripped, empty entries dropped."""
        return tuple(s.strip() for s in self.lora_pool.split(",") if s.strip())


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """MoRE router and mixture (docs/method.md §2)."""

    topk_experts: int = 32
    """Experts applied per token per matrix (K) [P: 32]."""
    output_scale_mode: Literal["rank", "topk", "quota", "constant"] = "topk"
    """[D] Mixture scale c in ``W0 x + c * sum_topK g_i E_i(x)``: ``rank`` = mean rank of the source
    LoRAs on that matrix, ``topk`` = the uniform K of the matrix, ``min(topk_experts, M_m)``, kept
    fixed when EEQA moves K_m (so moving budget does not rescale a layer), ``quota`` = the current
    K_m (EEQA's budget also moves the gain; for ablations), ``constant`` = ``output_scale``.
    Default ``topk`` with
    ``renormalize_topk`` (each kept expert at about its LoRA's full strength), measured in
    benchmarks/results/output_scale.json (+ ``_router_seed1``): routers only over two r=8 skill
    LoRAs on SmolLM2-135M, 25 steps, held-out composite loss 0.80 / 0.81 (topk + renorm) vs
    0.92 / 0.95 (rank, no renorm) vs 3.72 (c = 1) vs 3.28 (random experts, topk + renorm)."""
    output_scale: float = 1.0
    """The constant c when ``output_scale_mode = constant``."""
    renormalize_topk: bool = True
    """[D] Renormalise the kept top-K softmax weights to sum to 1 (see ``output_scale_mode``)."""
    router_temperature: float = 1.0
    """[D] Softmax temperature of the router logits."""
    router_init_std: float = 0.01
    """[D] Normal init std of W_router (M x d_in)."""
    load_balance_coef: float = 0.0
    """[D] Weight of the Switch-Transformer balancing loss of the top-K routers (Fedus et al. 2021:
    ``M * sum_i f_i P_i`` per MoRE layer, averaged over layers) added to the local loss of
    ``smartfed`` / ``smartfed_no_eeqa``; 0 = off (the paper's setting). Refused > 0 for methods
    without a top-K router (``mole`` has ``mole_balance_coef``)."""
    router_proj_dim: int = 0
    """[D] 0 = off: full routers ``W_router: (M x d_in)``. ``h > 0``: logits = ``W_r (P x)`` with a
    fixed random projection ``P: (h x d_in)``, entries N(0, 1/h), seeded from ``seed`` and the
    matrix name, rebuilt on every client and never sent; only ``W_r: (M x h)`` trains and travels.
    Must be below every routed matrix's d_in. Not the paper's router; quality not yet measured
    (docs/method.md, "Router size")."""
    router_rank: int = 0
    """[D] 0 = off. ``r > 0``: low-rank factorised routers, logits = ``U (V x)`` with
    ``U: (M x r)`` and ``V: (r x d_in)`` both trained and both sent (``r (M + d_in)`` values per
    matrix); ``V`` starts as a seeded N(0, 1/r) matrix, ``U`` as N(0, router_init_std). Must be
    below every routed matrix's d_in; excludes ``router_proj_dim``. Not the paper's router; quality
    not yet measured (docs/method.md, "Router size")."""

    mole_temperature: float = 1.0
    """``--method mole`` only: initial softmax temperature of every MoLE gate; the temperature is
    learned (and sent) per gate [P: MoLE's learnable temperature; init 1 is ours, D]."""
    mole_balance_coef: float = 0.01
    """``--method mole`` only: weight of MoLE's gating balancing loss ``-sum_n log q_n`` added to
    the task loss (q_n = mean gate of LoRA n) [P: the loss; D: the weight]; 0 = off."""

    def __post_init__(self) -> None:
        _require(self.topk_experts >= 1, "topk_experts", self.topk_experts, "must be >= 1")
        _require(self.mole_temperature > 0, "mole_temperature", self.mole_temperature, "> 0")
        _require(self.mole_balance_coef >= 0, "mole_balance_coef", self.mole_balance_coef, ">= 0")
        _require(
            self.output_scale_mode in OUTPUT_SCALE_MODES,
            "output_scale_mode",
            self.output_scale_mode,
            f"choose one of {OUTPUT_SCALE_MODES}",
        )
        _require(self.output_scale > 0, "output_scale", self.output_scale, "must be > 0")
        _require(self.router_temperature > 0, "router_temperature", self.router_temperature, "> 0")
        _require(self.router_init_std >= 0, "router_init_std", self.router_init_std, "must be >= 0")
        _require(self.load_balance_coef >= 0, "load_balance_coef", self.load_balance_coef, ">= 0")
        _require(
            not isinstance(self.router_proj_dim, bool) and self.router_proj_dim >= 0,
            "router_proj_dim",
            self.router_proj_dim,
            "must be >= 0 (0 = full router)",
        )
        _require(
            not isinstance(self.router_rank, bool) and self.router_rank >= 0,
            "router_rank",
            self.router_rank,
            "must be >= 0 (0 = full router)",
        )
        _require(
            self.router_rank == 0 or self.router_proj_dim == 0,
            "router_rank",
            self.router_rank,
            "a low-rank router has no fixed projection: set router_proj_dim 0 or router_rank 0",
        )


@dataclass(frozen=True, kw_only=True)
class QuotaConfig:
    """Elastic Expert Quota Allocation (docs/method.md §5)."""

    enable_eeqa: bool = True
    """Reallocate per-matrix K_m every round [P]; off = every matrix keeps ``topk_experts``."""
    total_budget: int = 0
    """Total top-K units over all routed matrices; 0 = topk_experts x number of matrices [P]."""
    k_min: int = 1
    """Lower bound of K_m [D], >= 1. Renormalised routers still learn at K_m = 1 (detached top-K
    normaliser, docs/method.md)."""
    k_max: int = 0
    """Upper bound of K_m; 0 = M_m (all experts of the matrix) [D]."""
    eeqa_warmup_rounds: int = 1
    """Rounds whose importance is gathered before the first reallocation [D: 1, quotas move from
    round 2]."""

    def __post_init__(self) -> None:
        _require(self.total_budget >= 0, "total_budget", self.total_budget, "must be >= 0")
        _require(
            self.k_min >= 1, "k_min", self.k_min, "must be >= 1 (a routed matrix keeps >= 1 expert)"
        )
        _require(self.k_max >= 0, "k_max", self.k_max, "must be >= 0 (0 = no cap)")
        _require(
            self.k_max == 0 or self.k_max >= self.k_min, "k_max", self.k_max, "must be >= k_min"
        )
        _require(
            self.eeqa_warmup_rounds >= 1, "eeqa_warmup_rounds", self.eeqa_warmup_rounds, ">= 1"
        )


@dataclass(frozen=True, kw_only=True)
class FedConfig:
    """Federated protocol (docs/method.md §7)."""

    num_clients: int = 20
    """Clients (data partitions) [P: 20]."""
    sample_clients: int = 2
    """Clients sampled per round [P: 10% of 20 = 2]."""
    num_rounds: int = 20
    """Communication rounds [P: 20]."""
    min_replies: int = 1
    """A round completes with at least this many successful replies [D]."""
    round_timeout_s: float = 3600.0
    """Seconds the server waits for replies in a round [D]."""
    partitioner: Literal["iid", "dirichlet"] = "iid"
    """How training data is split over clients [D]."""
    dirichlet_alpha: float = 0.5
    """Concentration of the Dirichlet partitioner [D]."""
    partition_by: str = ""
    """Label/category column for the Dirichlet partitioner; empty = the task's default column."""
    data_fraction: float = 1.0
    """Fraction of the training set used (the paper's data-efficiency runs use 0.1)."""
    engine: Literal["simulation", "deployment"] = "simulation"
    """Flower runtime: in-process simulation or a SuperLink deployment."""
    max_update_norm: float = 0.0
    """[D] Reject a client's router update whose L2 norm (vs the global routers) exceeds this;
    0 = auto: 10 x learning_rate x local_steps x sqrt(router parameters) (AdamW moves a weight by at
    most ~3 x lr per step). NaN/Inf updates are always rejected."""
    dp_noise_multiplier: float = 0.0
    """Server-side DP on router updates (Flower's fixed clipping of the decoded update, under every
    ``wire_dtype``); 0 = off [D]."""
    dp_clipping_norm: float = 0.0
    """Clipping norm of the server-side DP wrapper (required > 0 when DP is on)."""
    track_energy: bool = True
    """Measure energy with CodeCarbon's offline tracker on clients and server [D]."""
    country_iso_code: str = "USA"
    """Country whose grid carbon intensity CodeCarbon uses offline (ISO 3166 alpha-3)."""
    client_cpus: int = 1
    """Simulation: CPUs per client actor; actors running at once = cores // client_cpus (each
    holds a model copy, so raise it to save memory)."""
    superlink: str = ""
    """``--engine deployment``: address (host:port) of a running SuperLink to submit to; empty =
    start a SuperLink and ``num_clients`` SuperNodes on loopback (``smartfed deploy-local``)."""
    client_gpus: float = 0.0
    """Simulation: GPUs each client actor requests from Ray; fractional shares a GPU (0.5 = two
    clients per GPU). 0 = auto: 1 when the device is CUDA (one client per GPU at a time), else
    none. Ray is started with the GPUs torch sees (``CUDA_VISIBLE_DEVICES`` selects them)."""
    root_certificates: str = ""
    """CA certificate (PEM) of a TLS SuperLink; empty = insecure (loopback/testing only)."""
    wire_dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    """[D] How the trainable state (routers) is encoded on the wire: ``float32`` (exact),
    ``bfloat16`` (rounded both ways, upcast to float32 on receipt), ``int8`` (client -> server:
    the update vs the received state, symmetric per-tensor int8 + a float32 scale; server ->
    client: bfloat16). Server state, aggregation and checkpoints stay float32. Not the paper's;
    quality not yet measured (docs/method.md, "Router size")."""
    wire_delta: bool = False
    """[D] Off = as ``wire_dtype`` says. On (needs ``bfloat16`` or ``int8``): updates both ways.
    Up: ``local - received`` in ``wire_dtype``. Down: ``global - the state this client last held``
    in ``wire_dtype``; the server keeps, per client, the state that client decoded in its last
    accepted round. A client with none (never sampled, its last reply missing or rejected, or after
    a resume) gets the full state in bfloat16. The server adds every decoded update to its float32
    global state."""
    aggregation: Literal["mean", "trimmed_mean", "median"] = "mean"
    """[D] How accepted router updates are combined: ``mean`` (FedAvg, weighted by the partition
    sizes the server assigned; a client's own example count only where the server does not know
    its partition, capped at the round's lower-median claim), ``trimmed_mean`` (per coordinate,
    drop the ``trim_fraction`` lowest and highest values, unweighted) or ``median`` (per
    coordinate, unweighted); the robust rules bound what a minority of clients can move
    (docs/security.md, "Clients and server")."""
    trim_fraction: float = 0.2
    """[D] ``aggregation = trimmed_mean``: fraction cut at each end, in [0, 0.5)."""
    wire_error_feedback: bool = False
    """[D] With ``int8``/``bfloat16``: each client keeps the rounding error of the update it sent
    (in its Flower context state) and adds it to its next update. Needs ``wire_dtype`` other than
    float32; restarts at zero after a resume (docs/method.md, "Router size")."""

    def __post_init__(self) -> None:
        _require(self.num_clients >= 1, "num_clients", self.num_clients, "must be >= 1")
        _require(
            1 <= self.sample_clients <= self.num_clients,
            "sample_clients",
            self.sample_clients,
            f"must be in [1, num_clients={self.num_clients}]",
        )
        _require(self.num_rounds >= 1, "num_rounds", self.num_rounds, "must be >= 1")
        _require(
            1 <= self.min_replies <= self.sample_clients,
            "min_replies",
            self.min_replies,
            f"must be in [1, sample_clients={self.sample_clients}]",
        )
        _require(self.round_timeout_s > 0, "round_timeout_s", self.round_timeout_s, "must be > 0")
        _require(
            self.partitioner in PARTITIONERS, "partitioner", self.partitioner, str(PARTITIONERS)
        )
        _require(self.dirichlet_alpha > 0, "dirichlet_alpha", self.dirichlet_alpha, "must be > 0")
        _require(0 < self.data_fraction <= 1, "data_fraction", self.data_fraction, "in (0, 1]")
        _require(self.engine in ENGINES, "engine", self.engine, f"choose one of {ENGINES}")
        _require(self.max_update_norm >= 0, "max_update_norm", self.max_update_norm, ">= 0")
        _require(
            self.aggregation in AGGREGATIONS,
            "aggregation",
            self.aggregation,
            f"choose one of {AGGREGATIONS}",
        )
        _require(0 <= self.trim_fraction < 0.5, "trim_fraction", self.trim_fraction, "in [0, 0.5)")
        _require(self.client_cpus >= 1, "client_cpus", self.client_cpus, "must be >= 1")
        _require(self.client_gpus >= 0, "client_gpus", self.client_gpus, "must be >= 0 (0 = auto)")
        _require(
            self.dp_noise_multiplier >= 0, "dp_noise_multiplier", self.dp_noise_multiplier, ">= 0"
        )
        _require(
            self.dp_noise_multiplier == 0 or self.dp_clipping_norm > 0,
            "dp_clipping_norm",
            self.dp_clipping_norm,
            "must be > 0 when dp_noise_multiplier > 0",
        )
        _require(
            self.wire_dtype in WIRE_DTYPES,
            "wire_dtype",
            self.wire_dtype,
            f"choose one of {WIRE_DTYPES}",
        )
        for flag in ("wire_delta", "wire_error_feedback"):
            _require(
                not getattr(self, flag) or self.wire_dtype != "float32",
                flag,
                getattr(self, flag),
                "needs wire_dtype bfloat16 or int8 (float32 is exact)",
            )
        _require(
            len(self.country_iso_code) == 3,
            "country_iso_code",
            self.country_iso_code,
            "use an ISO 3166 alpha-3 code such as USA or DEU",
        )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Local training on a client."""

    method: str = "smartfed"
    """``smartfed`` or a baseline name (see ``smartfed train --help``)."""
    local_steps: int = 10
    """Optimizer steps per sampled client per round [P: 10]."""
    batch_size: int = 16
    """Examples per step [P: 16]."""
    learning_rate: float = 5e-4
    """AdamW learning rate [P: 5e-4]."""
    weight_decay: float = 0.0
    """AdamW weight decay [D]."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 = off [D]."""
    seed: int = 0
    """Seeds client sampling, partitioning, router init and data order."""
    gradient_checkpointing: bool = True
    """Keep only each decoder layer's input during local training and recompute the layer in
    backward (Hugging Face activation checkpointing, non-reentrant): same loss and gradients, far
    less memory, about one extra forward pass of time [D: on] (docs/gpu.md)."""
    loss_chunk_tokens: int = 256
    """The loss projects only response positions to the vocabulary, this many at a time, with
    float32 logits of one chunk alive at once; 0 = all in one go. Same loss and gradients [D: 256]
    (docs/gpu.md)."""
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    """Mirror every round's metrics (and each client's per-step losses) to a tracker besides
    ``metrics.jsonl``: TensorBoard event files under ``<output_dir>/tensorboard`` or Weights &
    Biases (``WANDB_MODE=offline`` keeps it local); the package must be installed [D: none]."""
    lorahub_budget: int = 40
    """``--method lorahub`` only: candidate weight vectors the server's gradient-free optimiser
    (Nevergrad NGOpt) evaluates over the whole run, spread evenly over the rounds
    [P: LoRAHub's default of 40 steps]."""
    lorahub_l1: float = 0.05
    """``--method lorahub`` only: weight of the L1 term ``mean_n |w_n|`` added to the few-shot
    loss of a candidate [P: 0.05]."""

    def __post_init__(self) -> None:
        _require(self.lorahub_budget >= 1, "lorahub_budget", self.lorahub_budget, "must be >= 1")
        _require(self.lorahub_l1 >= 0, "lorahub_l1", self.lorahub_l1, "must be >= 0")
        _require(bool(self.method), "method", self.method, "must not be empty")
        _require(self.local_steps >= 1, "local_steps", self.local_steps, "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        _require(0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2**32)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "must be >= 0")
        _require(self.loss_chunk_tokens >= 0, "loss_chunk_tokens", self.loss_chunk_tokens, ">= 0")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training data."""

    task: str = ""
    """A registered task name (``smartfed eval --help`` lists them)."""
    dataset: str = ""
    """A registered task or a local JSON/JSONL file (Alpaca fields or chat ``messages``);
    overrides ``task`` for training data when set."""
    data_dir: str = ""
    """Data folder of the file-backed tasks (upstream file names, layout and download commands in
    docs/data.md); empty = ``$SMARTFED_DATA``, else ``./data``."""
    max_train_examples: int = 0
    """Cap on training rows before partitioning; 0 = all."""

    def __post_init__(self) -> None:
        _require(
            self.max_train_examples >= 0, "max_train_examples", self.max_train_examples, ">= 0"
        )


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation during and after a run."""

    eval_task: str = ""
    """Task scored during/after the run; empty = the training task (the paper trains on Math23K and
    evaluates on MGSM-zh, so paper configs set both)."""
    eval_every: int = 5
    """Evaluate the global model every this many rounds (and after the last); 0 = at the end."""
    eval_limit: int = 100
    """Evaluation examples per evaluation; 0 = the whole eval split."""
    max_new_tokens: int = 256
    """Greedy decoding length cap."""
    eval_batch_size: int = 8
    """Prompts decoded together."""
    heldout_examples: int = 64
    """Training rows held out (seeded, before partitioning) for the per-round held-out loss;
    0 = off."""
    tf_eval_every: int = 0
    """Teacher-forced exact match (``eval_tf_em``: the argmax equals the canonical response at every
    response token, EOS included, i.e. what greedy decoding would reproduce) and the loss on the
    eval distribution (``eval_tf_loss``) on the first ``eval_limit`` eval rows, one forward pass,
    every this many rounds; 0 = off."""
    val_examples: int = 0
    """Rows of the task's ``val`` split (keys disjoint from train and eval) scored teacher-forced
    after the last round (``val_tf_em``, ``val_tf_loss``: the bench's learning-rate selection
    score); 0 = off."""
    eval_threads: int = 0
    """CPU threads of the server's per-round evaluation; 0 = every core the process may use [D]:
    in a synchronous round the clients are idle while the server evaluates, so a one-thread
    server (``OMP_NUM_THREADS=1``) would leave the other cores unused. Restored afterwards."""

    def __post_init__(self) -> None:
        _require(self.eval_threads >= 0, "eval_threads", self.eval_threads, "must be >= 0")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        _require(self.eval_limit >= 0, "eval_limit", self.eval_limit, "must be >= 0")
        _require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        _require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        _require(self.heldout_examples >= 0, "heldout_examples", self.heldout_examples, ">= 0")
        _require(self.tf_eval_every >= 0, "tf_eval_every", self.tf_eval_every, "must be >= 0")
        _require(self.val_examples >= 0, "val_examples", self.val_examples, "must be >= 0")


_SECTIONS: dict[str, type[Any]] = {
    "model": ModelConfig,
    "pool": PoolConfig,
    "router": RouterConfig,
    "quota": QuotaConfig,
    "fed": FedConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "eval": EvalConfig,
}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole run: one section per concept, plus where it writes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "output/smartfed"
    """Run directory (config.json, metrics.jsonl, summary.json, checkpoints)."""
    resume: bool = False
    """Continue the run in ``output_dir`` from its last complete round."""

    def to_flat(self) -> dict[str, Scalar]:
        """Return ``{"section.field": value}`` for every leaf (Flower run_config form)."""
        flat: dict[str, Scalar] = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                flat[f"{name}.{f.name}"] = getattr(section, f.name)
        flat["output_dir"] = self.output_dir
        flat["resume"] = self.resume
        return flat

    def to_dict(self) -> dict[str, Any]:
        """Return the nested dict form (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the resolved config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Build a config from flat keys (bare leaf names or dotted paths) over ``base``.

        Raises:
            ConfigError: unknown key or a value of the wrong type / out of range.
        """
        base = base or cls()
        updates: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in flat.items():
            section, leaf = _resolve_key(key)
            typed = _coerce(section, leaf, value)
            if section is None:
                top[leaf] = typed
            else:
                updates.setdefault(section, {})[leaf] = typed
        sections = {
            name: dataclasses.replace(getattr(base, name), **vals) for name, vals in updates.items()
        }
        return dataclasses.replace(base, **sections, **top)

    @classmethod
    def from_dict(cls, nested: Mapping[str, Any]) -> RunConfig:
        """Build from the nested form (TOML tables or ``config.json``)."""
        flat: dict[str, Any] = {}
        for key, value in nested.items():
            if isinstance(value, Mapping):
                if key not in _SECTIONS:
                    raise ConfigError(f"unknown config section [{key}]; known: {sorted(_SECTIONS)}")
                for leaf, v in value.items():
                    flat[f"{key}.{leaf}"] = v
            else:
                flat[key] = value
        return cls.from_flat(flat)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """Read a TOML config file, then apply flat ``overrides``.

        Raises:
            ConfigError: missing/unreadable file, bad TOML, unknown keys or invalid values.
        """
        p = Path(path)
        try:
            nested = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {p} does not exist; pass an existing .toml") from err
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {p} is not valid TOML: {err}") from err
        cfg = cls.from_dict(nested)
        return cls.from_flat(overrides or {}, base=cfg)

    @classmethod
    def load_json(cls, path: str | Path) -> RunConfig:
        """Read a resolved ``config.json`` written by a previous run."""
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read run config {p}: {err}") from err


def leaf_index() -> dict[str, str]:
    """Map every bare leaf name to its section (``topk_experts`` -> ``router``)."""
    index: dict[str, str] = {}
    for name, cls in _SECTIONS.items():
        for f in fields(cls):
            assert f.name not in index, f"duplicate leaf name {f.name}"  # internal invariant
            index[f.name] = name
    return index


def _resolve_key(key: str) -> tuple[str | None, str]:
    key = key.strip().replace("-", "_")
    if key in ("output_dir", "resume"):
        return None, key
    if "." in key:
        section, _, leaf = key.partition(".")
        cls = _SECTIONS.get(section)
        if cls is None or leaf not in {f.name for f in fields(cls)}:
            raise ConfigError(f"unknown config key {key!r}; see `smartfed train --help`")
        return section, leaf
    section_name = leaf_index().get(key)
    if section_name is None:
        raise ConfigError(f"unknown config key {key!r}; see `smartfed train --help`")
    return section_name, key


def field_type(section: str | None, leaf: str) -> type[Any]:
    """Return the scalar Python type of a leaf (``Literal`` resolves to its value type)."""
    owner = RunConfig if section is None else _SECTIONS[section]
    hint = get_type_hints(owner)[leaf]
    args = get_args(hint)
    if args and all(isinstance(a, str) for a in args):
        return str
    return hint  # type: ignore[no-any-return]


def _coerce(section: str | None, leaf: str, value: Any) -> Any:
    typ = field_type(section, leaf)
    name = f"{section}.{leaf}" if section else leaf
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            if isinstance(value, int | bool):
                return bool(value)
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typ is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}={value!r}: expected {typ.__name__}") from err
    raise ConfigError(f"{name}: unsupported field type {typ}")  # pragma: no cover
