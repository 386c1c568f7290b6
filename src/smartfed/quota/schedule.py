"""EEQA schedule on the server: current quotas, warm-up and budget across rounds (method.md §5).

Stdlib only, like :mod:`smartfed.quota.allocate`, and JSON-serialisable for checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from smartfed.config import QuotaConfig
from smartfed.errors import CheckpointError, WireFormatError
from smartfed.log import get_logger
from smartfed.quota.allocate import (
    allocate_quotas,
    default_budget,
    describe_quotas,
    matrix_caps,
    uniform_quotas,
)

log = get_logger(__name__)
_STATE_FORMAT = "smartfed-eeqa-state/1"


@dataclass
class EEQAState:
    """The server's EEQA schedule: current quotas, budget, bounds and warm-up (docs/method.md §5).

    Stdlib only and JSON-serialisable, so it lives in the strategy and in every checkpoint.

    How the runtime calls it:

    1. Start: ``state = EEQAState.from_config(cfg.quota, cfg.router.topk_experts, M)`` with ``M``
       the matrix -> M_m map of the injected model (``InjectionReport``); on ``--resume``:
       ``state = EEQAState.from_dict(json.load(checkpoint/quotas.json))`` instead.
    2. ``configure_train`` of round r sends ``state.quotas`` (matrix -> K_m); clients apply them
       with ``set_quotas(model, quotas)`` and train inside ``ImportanceTracker(model)``, replying
       ``tracker.scores()`` and ``tracker.usage()`` with their ``num_examples``.
    3. ``aggregate_train`` of round r: keep ``state.quotas`` (the quotas *used* in round r), then
       ``state.update(r, aggregate_importance(replies))`` returns the quotas for round r + 1. The
       server evaluates round r with the kept (trained) quotas and logs them as ``quotas``; the
       new ones go to the row as ``next_quotas`` and into the resume checkpoint.
    4. Checkpoint after round r: ``atomic_write_json(checkpoint/quotas.json, state.to_dict())``;
       a resumed run then continues with the same quotas.

    Schedule [D]: importance is summed over the rounds since the last reallocation and
    reallocated (by its per-round mean) after every round ``r >= warmup_rounds``; with the default
    ``eeqa_warmup_rounds = 1`` round 1's importance sets round 2's quotas. Before the first
    reallocation the budget is split as evenly as the bounds allow, which equals ``topk_experts``
    per matrix for the default budget. With EEQA off every matrix keeps ``topk_experts`` (at most
    M_m) and :meth:`update` changes nothing.

    Attributes:
        enabled: EEQA on (``enable_eeqa``).
        budget: total top-K units (sum of quotas every round when enabled).
        k_min: lower bound of every K_m.
        caps: matrix -> ``min(k_max, M_m)``.
        warmup_rounds: first round whose importance reallocates.
        quotas: matrix -> K_m for the next round to be configured.
        last_round: last round passed to :meth:`update` (0 = none).
        pending: importance summed over ``pending_rounds`` rounds since the last reallocation.
        pending_rounds: rounds in ``pending``.
    """

    enabled: bool
    budget: int
    k_min: int
    caps: dict[str, int]
    warmup_rounds: int
    quotas: dict[str, int]
    last_round: int = 0
    pending: dict[str, float] = field(default_factory=dict)
    pending_rounds: int = 0

    @classmethod
    def create(
        cls,
        experts_per_matrix: Mapping[str, int],
        topk: int,
        *,
        enabled: bool = True,
        total_budget: int = 0,
        k_min: int = 1,
        k_max: int = 0,
        warmup_rounds: int = 1,
    ) -> EEQAState:
        """Build the initial state (see the class docstring for the meaning of each argument).

        Raises:
            ConfigError: ``topk < 1``, an empty matrix, or an infeasible budget.
        """
        uniform = uniform_quotas(experts_per_matrix, topk)
        caps = matrix_caps(experts_per_matrix, k_max)
        if not enabled:
            return cls(False, sum(uniform.values()), k_min, caps, warmup_rounds, uniform)
        budget = total_budget or default_budget(topk, experts_per_matrix)
        quotas = allocate_quotas(dict.fromkeys(caps, 0.0), budget, k_min, caps)
        return cls(True, budget, k_min, caps, warmup_rounds, quotas)

    @classmethod
    def from_config(
        cls, quota: QuotaConfig, topk: int, experts_per_matrix: Mapping[str, int]
    ) -> EEQAState:
        """Build the initial state from ``RunConfig.quota`` and ``router.topk_experts``."""
        return cls.create(
            experts_per_matrix,
            topk,
            enabled=quota.enable_eeqa,
            total_budget=quota.total_budget,
            k_min=quota.k_min,
            k_max=quota.k_max,
            warmup_rounds=quota.eeqa_warmup_rounds,
        )

    def update(self, server_round: int, scores: Mapping[str, float]) -> dict[str, int]:
        """Fold in round ``server_round``'s aggregated importance; return the next quotas.

        Args:
            server_round: the round just aggregated (1-based, increasing).
            scores: matrix -> importance from :func:`aggregate_importance`; an empty mapping (no
                client reported importance) leaves the quotas unchanged.

        Returns:
            Matrix -> K_m for round ``server_round + 1`` (a copy).

        Raises:
            CheckpointError: a round not after ``last_round`` (e.g. a resume that replays rounds).
            WireFormatError: scores for unknown matrices or missing some matrices.
        """
        if server_round <= self.last_round:
            raise CheckpointError(
                f"EEQA already folded round {self.last_round}; got round {server_round} "
                "(resume from the checkpoint written after the last complete round)"
            )
        self.last_round = server_round
        if not self.enabled or not scores:
            return dict(self.quotas)
        if set(scores) != set(self.caps):
            odd = sorted(set(scores) ^ set(self.caps))
            raise WireFormatError(
                f"importance matrices differ from the routed ones, e.g. {odd[0]!r}"
            )
        for name, value in scores.items():
            self.pending[name] = self.pending.get(name, 0.0) + float(value)
        self.pending_rounds += 1
        if server_round >= self.warmup_rounds:
            mean = {m: v / self.pending_rounds for m, v in self.pending.items()}
            self.quotas = allocate_quotas(mean, self.budget, self.k_min, self.caps)
            self.pending, self.pending_rounds = {}, 0
            log.info("EEQA round %d: %s", server_round, describe_quotas(self.quotas))
        return dict(self.quotas)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form written to ``checkpoint/quotas.json``."""
        return {"format": _STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EEQAState:
        """Rebuild a state saved by :meth:`to_dict`.

        Raises:
            CheckpointError: wrong format tag, missing/extra fields, or quotas that break the
                budget or bounds.
        """
        if data.get("format") != _STATE_FORMAT:
            raise CheckpointError(
                f"quotas.json: format is {data.get('format')!r}, expected "
                f"{_STATE_FORMAT!r}; was it written by this SmartFed version?"
            )
        body = {k: v for k, v in data.items() if k != "format"}
        try:
            state = cls(**body)
        except TypeError as err:
            raise CheckpointError(f"quotas.json: bad fields ({err})") from err
        quotas, caps = state.quotas, state.caps
        bad = set(quotas) != set(caps) or any(
            not state.k_min <= quotas[m] <= caps[m] for m in quotas
        )
        if bad or (state.enabled and sum(quotas.values()) != state.budget):
            raise CheckpointError("quotas.json: quotas break the budget or bounds; file corrupt")
        return state
