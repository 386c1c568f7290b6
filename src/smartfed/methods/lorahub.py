"""``lorahub``: LoRAHub (Huang et al., "LoraHub: Efficient Cross-Task Generalization via Dynamic
LoRA Composition", COLM 2024, arXiv 2307.13269), federated.

LoRAHub learns one weight ``w_n`` per pool LoRA, gradient-free, by minimising the few-shot loss of
the composed model plus ``alpha * mean_n |w_n|`` (``alpha = 0.05``) with a Nevergrad optimiser, the
weights bounded to ``[-1.5, 1.5]`` and starting at 0 [P]. Here:

- Optimiser: Nevergrad's CMA-ES (``ng.optimizers.CMA``, the evolution strategy the paper names) on
  LoRAHub's parametrisation ``ng.p.Array(init=0, lower=-1.5, upper=1.5)``, seeded through the
  parametrisation's ``random_state`` [P]. Driven by ask/tell, ``train.lorahub_budget``
  evaluations in all (LoRAHub's default 40) [P]. Not NGOpt, LoRAHub's code default [D]: with
  several candidates asked at once on a few weights, NGOpt picks a meta-model optimiser that fails
  under numpy 2 (nevergrad 1.0.12), and with one candidate at a time a scipy optimiser run in a
  thread.
- Composition: ``delta_W_m = sum_n w_n s_n B_n A_n``, exact, by concatenation along the rank
  (:func:`~smartfed.methods.lora.concat_factors`) [D]. LoRAHub sums the factors element-wise,
  ``(sum_n w_n B_n)(sum_n w_n A_n)``, which needs one rank and one target set for the whole pool and
  adds cross terms ``w_i w_j B_i A_j``; ours works for any pool.
- Federated mapping [D], one round ``r``:

  1. server (:meth:`LoraHub.server_propose`): rebuild the optimiser from its seed and replay the
     history (every earlier candidate and its told score, round by round); ask ``n_r`` candidates
     (the budget spread evenly over the rounds; 0 once spent). Send ``candidates: (1 + n_r, N)``,
     row 0 the current recommendation.
  2. clients (:meth:`LoraHub.local_update`): mean response loss of every row on the round's
     ``local_steps`` batches (the same batches for all rows); reply ``losses: (1 + n_r,)``.
  3. server (:meth:`LoraHub.server_update`): example-weighted mean losses (FedAvg of the replies)
     plus the L1 term are told to the optimiser for rows ``1..n_r``; the new ``weights`` are its
     recommendation. Row 0 is not told; it is the round's ``train_loss``.

Server state (checkpointed, resumable exactly): ``weights (N,)``, ``history_x (H, N)``,
``history_y (H,)`` (told scores), ``history_round (H,)``. Bytes per round per sampled client: down
``(1 + n_r) * N`` float32, up ``1 + n_r`` float32.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from smartfed.errors import CheckpointError
from smartfed.methods.lora import Merge, concat_factors, set_lora_factors
from smartfed.train.local import response_loss

if TYPE_CHECKING:
    from smartfed.config import RunConfig
    from smartfed.pool.pool import LoraPool

CANDIDATES = "candidates"
LOSSES = "losses"
WEIGHTS = "weights"
HIST_X, HIST_Y, HIST_ROUND = "history_x", "history_y", "history_round"
BOUND = 1.5  # [P] weights in [-1.5, 1.5]
OPTIMIZER = "CMA"  # [P] CMA-ES, through Nevergrad


def round_budget(budget: int, num_rounds: int, server_round: int) -> int:
    """Candidates asked in round ``server_round`` (1-based): ``budget`` spread evenly, earlier
    rounds first; 0 after round ``num_rounds`` or once spent."""
    if not 1 <= server_round <= num_rounds:
        return 0
    base, extra = divmod(budget, num_rounds)
    return base + (1 if server_round <= extra else 0)


def l1_score(loss: float, weights: np.ndarray, alpha: float) -> float:
    """LoRAHub's objective: ``loss + alpha * mean_n |w_n|``, rounded to float32 (what is stored and
    told, so that a replay tells exactly the same numbers) [P]."""
    return float(np.float32(loss + alpha * float(np.abs(weights).mean())))


class WeightSearch:
    """LoRAHub's seeded Nevergrad optimiser over ``N`` weights, rebuilt by replaying its history.

    ``num_workers = 1`` [D] whatever the candidates asked per round: CMA-ES takes several asks
    before a tell, and the replay then does not depend on ``--num_rounds`` (a resumed run may
    raise it).

    Args:
        n: number of pool LoRAs.
        budget: total evaluations (the optimiser's ``budget``).
        seed: seeds the parametrisation's ``random_state``.
    """

    def __init__(self, n: int, budget: int, seed: int) -> None:
        import nevergrad as ng

        param = ng.p.Array(init=np.zeros(n), lower=-BOUND, upper=BOUND)
        param.random_state = np.random.RandomState(seed)
        self.opt = getattr(ng.optimizers, OPTIMIZER)(
            parametrization=param, budget=budget, num_workers=1
        )

    def replay(self, xs: np.ndarray, ys: np.ndarray, rounds: np.ndarray) -> None:
        """Re-ask and re-tell the history, one round's group at a time.

        Raises:
            CheckpointError: a re-asked candidate differs from the history (another seed, pool or
                optimiser version).
        """
        for r in np.unique(rounds):
            rows = np.flatnonzero(rounds == r)
            asked = self.ask(len(rows))
            for cand, i in zip(asked, rows, strict=True):
                if not np.allclose(cand.value, xs[i], atol=1e-5):
                    raise CheckpointError(
                        "lorahub: the saved search history does not replay with this seed and "
                        "optimiser; resume with the run's own --seed, pool and --lorahub_budget"
                    )
                self.tell(cand, float(ys[i]))

    def ask(self, k: int) -> list[Any]:
        """``k`` new candidates (Nevergrad parameters; ``.value`` is ``(N,)``)."""
        with _quiet():
            return [self.opt.ask() for _ in range(k)]

    def tell(self, candidate: Any, score: float) -> None:
        """Tell the optimiser ``candidate``'s score."""
        with _quiet():
            self.opt.tell(candidate, score)

    def recommendation(self) -> np.ndarray:
        """The optimiser's recommended weights, ``(N,)``."""
        return np.asarray(self.opt.provide_recommendation().value, np.float64)


class LoraHub(Merge):
    """Federated LoRAHub: clients score candidate weight vectors, the server runs CMA-ES."""

    name = "lorahub"
    start = "mean"

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Inject the concatenated pool and apply LoRAHub's start, ``w = 0`` (the base model)."""
        self._pool = pool
        self._n = len(pool.adapters)
        self.configure_search(cfg)
        out = super().prepare(model, pool, cfg)
        self._history = _empty_history(self._n)
        self.set_weights(model, torch.zeros(self._n))
        return out

    def configure_search(self, cfg: RunConfig) -> None:
        """Take the search settings of the run (``lorahub_budget``, ``lorahub_l1``, ``num_rounds``,
        ``seed``); the server calls it with the full run config."""
        self._budget = cfg.train.lorahub_budget
        self._alpha = cfg.train.lorahub_l1
        self._rounds = cfg.fed.num_rounds
        self._seed = cfg.train.seed

    def set_weights(self, model: nn.Module, weights: torch.Tensor) -> None:
        """Apply per-LoRA weights ``(N,)``: ``B`` blocks become ``w_n s_n B_n`` (exact)."""
        set_lora_factors(model, concat_factors(self._pool, weights.tolist()))
        self._weights = weights.detach().float().clone()

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:  # noqa: ARG002
        """The server's search state: ``weights (N,)`` and the history (never sent as such)."""
        return {WEIGHTS: self._weights.clone(), **{k: v.clone() for k, v in self._history.items()}}

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Apply a search state (``weights (N,)``, ``history_x (H, N)``, ``history_y (H,)``,
        ``history_round (H,)``) to the model.

        Raises:
            CheckpointError: other keys or shapes.
        """
        n = self._n
        keys = {WEIGHTS, HIST_X, HIST_Y, HIST_ROUND}
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        h = shapes.get(HIST_Y, (-1,))[0]
        want = {WEIGHTS: (n,), HIST_X: (h, n), HIST_Y: (h,), HIST_ROUND: (h,)}
        if set(state) != keys or any(shapes[k] != want[k] for k in keys):
            raise CheckpointError(
                f"lorahub state must be {{weights: ({n},), history_x: (H, {n}), history_y: (H,), "
                f"history_round: (H,)}}, got {shapes}"
            )
        self._history = {k: state[k].float().clone() for k in (HIST_X, HIST_Y, HIST_ROUND)}
        self.set_weights(model, state[WEIGHTS].float())

    def _search(self, state: Mapping[str, np.ndarray]) -> WeightSearch:
        """The optimiser after replaying the history."""
        search = WeightSearch(self._n, self._budget, self._seed)
        search.replay(
            np.asarray(state[HIST_X], np.float64),
            np.asarray(state[HIST_Y], np.float64),
            np.asarray(state[HIST_ROUND], np.int64),
        )
        return search

    def server_propose(
        self, state: Mapping[str, np.ndarray], server_round: int, seed: int
    ) -> dict[str, np.ndarray]:
        """``candidates (1 + n_r, N)``: the current weights, then the ``n_r`` asked this round."""
        self._seed = seed
        spent = len(np.asarray(state[HIST_Y]))
        k = min(round_budget(self._budget, self._rounds, server_round), self._budget - spent)
        rows = [np.asarray(state[WEIGHTS], np.float64)]
        if k:
            rows += [c.value for c in self._search(state).ask(k)]
        return {CANDIDATES: np.stack(rows).astype(np.float32)}

    def reply_template(self, sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What a client replies to ``sent``: ``losses (1 + n_r,)`` (zeros; keys and shapes)."""
        return {LOSSES: np.zeros(len(sent[CANDIDATES]), np.float32)}

    def server_update(
        self,
        state: Mapping[str, np.ndarray],
        sent: Mapping[str, np.ndarray],
        mean_reply: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Tell the optimiser the asked rows' loss + L1 score; new weights = its recommendation."""
        cands = np.asarray(sent[CANDIDATES], np.float64)
        losses = np.asarray(mean_reply[LOSSES], np.float64)
        k = len(cands) - 1
        if k == 0:  # budget spent: nothing asked, nothing told
            return {key: np.asarray(v, np.float32) for key, v in state.items()}
        search = self._search(state)
        asked = search.ask(k)
        rnd = float(np.asarray(state[HIST_ROUND]).max(initial=0.0) + 1)
        scores = []
        for cand, x, loss in zip(asked, cands[1:], losses[1:], strict=True):
            if not np.allclose(cand.value, x, atol=1e-5):
                raise CheckpointError("lorahub: the replies answer other candidates than asked")
            scores.append(l1_score(float(loss), cand.value, self._alpha))
            search.tell(cand, scores[-1])
        return {
            WEIGHTS: search.recommendation().astype(np.float32),
            HIST_X: np.vstack([state[HIST_X], cands[1:]]).astype(np.float32),
            HIST_Y: np.concatenate([state[HIST_Y], scores]).astype(np.float32),
            HIST_ROUND: np.concatenate([state[HIST_ROUND], np.full(k, rnd)]).astype(np.float32),
        }

    def local_update(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, torch.Tensor]],
        cfg: RunConfig,
        payload: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Score every candidate (mean response loss on the same batches); return ``losses``.

        Raises:
            CheckpointError: no ``candidates (1 + n_r, N)`` in the payload.
        """
        cands = payload.get(CANDIDATES)
        if cands is None or cands.ndim != 2 or cands.shape[1] != self._n:
            raise CheckpointError(
                f"lorahub payload needs {CANDIDATES}: (1 + n_r, {self._n}); server and client "
                "differ"
            )
        losses = []
        with torch.no_grad():
            for row in cands.float():
                self.set_weights(model, row)
                losses.append(
                    sum(float(response_loss(model, b)) for b in batches) / max(len(batches), 1)
                )
        return {LOSSES: torch.tensor(losses, dtype=torch.float32)}, {"loss": losses[0], "steps": 0}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence cma's notice about asks that outlive their population (several asks per tell)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="orphanated injected solution")
        yield


def _empty_history(n: int) -> dict[str, torch.Tensor]:
    return {HIST_X: torch.zeros(0, n), HIST_Y: torch.zeros(0), HIST_ROUND: torch.zeros(0)}
