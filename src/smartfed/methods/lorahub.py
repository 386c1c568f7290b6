"""``lorahub``: LoRAHub-style (Huang et al., 2023) gradient-free search of one weight per pool
LoRA, federated.

The model carries the pool concatenated along the rank
(:func:`~smartfed.methods.lora.concat_factors`)
with weight ``w_n`` on LoRA ``n``: ``delta_W_m = sum_n w_n s_n B_n A_n``. The server runs a seeded
(1+lambda) evolution strategy over ``w`` (our own, [D]; LoRAHub uses Nevergrad's CMA-ES):

1. round r, server (:meth:`LoraHub.server_propose`): candidates ``C = [w; w + sigma * eps_j]``,
   ``eps_j ~ N(0, I_N)`` from a generator seeded by ``(seed, r)``, clipped to ``[-1.5, 1.5]``
   [P LoRAHub's bounds]; shape ``(lambda + 1, N)``, ``lambda = 4`` [D]. Row 0 re-evaluates the
   incumbent on this round's clients.
2. clients (:meth:`LoraHub.local_update`): for every candidate, the mean response loss on the
round's
   ``local_steps`` batches (the same batches for all candidates: a paired comparison); returns
   ``losses: (lambda + 1,)``. Nothing is trained.
3. server (:meth:`LoraHub.server_update`): example-weighted mean losses (FedAvg of the replies),
plus
   the L1 penalty ``alpha * mean_n |w_n|`` [P LoRAHub's regulariser, alpha = 0.05]; the best
   candidate becomes ``w``; ``sigma`` grows x1.5 on success and shrinks x0.82 otherwise [D, 1/5th
   rule].

Global state (what the server keeps and checkpoints): ``weights: (N,)`` (init ``1/N``, i.e. the
linear
merge [D]; LoRAHub starts from 0) and ``sigma: (1,)`` (init 0.2 [D]). Bytes per round per sampled
client: down ``(lambda + 1) * N`` float32 candidate weights, up ``lambda + 1`` float32 losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from smartfed.errors import CheckpointError
from smartfed.methods.lora import Merge, concat_factors, set_lora_factors

if TYPE_CHECKING:
    from smartfed.config import RunConfig
    from smartfed.pool.pool import LoraPool

CANDIDATES = "candidates"
LOSSES = "losses"
WEIGHTS = "weights"
SIGMA = "sigma"
POPULATION = 4
SIGMA0 = 0.2
BOUND = 1.5
L1_ALPHA = 0.05
GROW, SHRINK = 1.5, 0.82


class LoraHub(Merge):
    """Federated LoRAHub: clients score candidate weight vectors, the server searches."""

    name = "lorahub"
    start = "mean"

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Inject the concatenated pool (weights ``1/N``) and remember the pool for re-weighting."""
        self._pool = pool
        self._weights = torch.full((len(pool.adapters),), 1.0 / len(pool.adapters))
        self._sigma = torch.tensor([SIGMA0])
        return super().prepare(model, pool, cfg)

    def set_weights(self, model: nn.Module, weights: torch.Tensor) -> None:
        """Apply per-LoRA weights ``(N,)``: ``B`` blocks become ``w_n s_n B_n`` (exact)."""
        set_lora_factors(model, concat_factors(self._pool, weights.tolist()))
        self._weights = weights.detach().float().clone()

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:  # noqa: ARG002
        """The server's search state: ``weights (N,)`` and ``sigma (1,)`` (never sent as such)."""
        return {WEIGHTS: self._weights.clone(), SIGMA: self._sigma.clone()}

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Apply a search state (``weights (N,)``, ``sigma (1,)``) to the model.

        Raises:
            CheckpointError: other keys or shapes.
        """
        n = len(self._pool.adapters)
        if set(state) != {WEIGHTS, SIGMA} or tuple(state[WEIGHTS].shape) != (n,):
            raise CheckpointError(
                f"lorahub state must be {{weights: ({n},), sigma: (1,)}}, got "
                f"{ {k: tuple(v.shape) for k, v in state.items()} }"
            )
        self.set_weights(model, state[WEIGHTS].float())
        self._sigma = state[SIGMA].float().reshape(1).clone()

    def server_propose(
        self, state: Mapping[str, np.ndarray], server_round: int, seed: int
    ) -> dict[str, np.ndarray]:
        """Candidates ``(lambda + 1, N)`` for round ``server_round``: incumbent + seeded
        mutations.
        """
        w, sigma = (
            np.asarray(state[WEIGHTS], np.float64),
            float(np.asarray(state[SIGMA]).reshape(-1)[0]),
        )
        rng = np.random.default_rng([seed, server_round])
        eps = rng.standard_normal((POPULATION, w.size))
        cands = np.clip(np.vstack([w, w + sigma * eps]), -BOUND, BOUND)
        return {CANDIDATES: cands.astype(np.float32)}

    def reply_template(self, sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What a client replies to ``sent``: ``losses (lambda + 1,)`` (zeros; keys and shapes
        only).
        """
        return {LOSSES: np.zeros(len(sent[CANDIDATES]), np.float32)}

    def server_update(
        self,
        state: Mapping[str, np.ndarray],
        sent: Mapping[str, np.ndarray],
        mean_reply: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Pick the best candidate by mean loss + L1 penalty; adapt ``sigma`` (1/5th rule)."""
        cands = np.asarray(sent[CANDIDATES], np.float64)
        score = np.asarray(mean_reply[LOSSES], np.float64) + L1_ALPHA * np.abs(cands).mean(axis=1)
        best = int(np.argmin(score))
        sigma = float(np.asarray(state[SIGMA]).reshape(-1)[0]) * (GROW if best > 0 else SHRINK)
        return {WEIGHTS: cands[best].astype(np.float32), SIGMA: np.array([sigma], np.float32)}

    def local_update(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, torch.Tensor]],
        cfg: RunConfig,
        payload: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Score every candidate (mean response loss on the same batches); return ``losses``.

        Raises:
            CheckpointError: no ``candidates (lambda + 1, N)`` in the payload.
        """
        from smartfed.train.local import response_loss

        cands = payload.get(CANDIDATES)
        if cands is None or cands.ndim != 2 or cands.shape[1] != len(self._pool.adapters):
            raise CheckpointError(
                f"lorahub payload needs {CANDIDATES}: (lambda+1, "
                f"{len(self._pool.adapters)}); server and client differ"
            )
        losses = []
        with torch.no_grad():
            for row in cands.float():
                self.set_weights(model, row)
                losses.append(
                    sum(float(response_loss(model, b)) for b in batches) / max(len(batches), 1)
                )
        return {LOSSES: torch.tensor(losses, dtype=torch.float32)}, {"loss": losses[0], "steps": 0}
