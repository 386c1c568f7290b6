"""The ``Method`` contract and the method registry (ARCHITECTURE.md, "Methods").

A method prepares the frozen base model for local training and names exactly the tensors that
travel between clients and server. Register a method with ONE line in :data:`METHODS`.

Optional hooks are explicit protocols (docs/baselines.md), checked with ``isinstance``:
:class:`LocalUpdate` replaces local SGD on clients (merge, lorahub); :class:`ServerSearch` makes the
server run the method's own search (:class:`smartfed.fed.search.SearchStrategy`, lorahub);
:class:`AuxiliaryLoss` adds a term to the local training loss after each forward (mole's gating
balancing loss).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from smartfed.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np
    import torch
    from torch import nn

    from smartfed.config import RunConfig
    from smartfed.pool.pool import LoraPool

# name -> "module:Class"; one line per method (baselines are added here the same way).
METHODS: dict[str, str] = {
    "smartfed": "smartfed.methods.smartfed:SmartFed",
    "smartfed_no_eeqa": "smartfed.methods.smartfed:SmartFedNoEEQA",
    "fedit": "smartfed.methods.lora:FedIT",
    "ffa_lora": "smartfed.methods.lora:FFALoRA",
    "merge": "smartfed.methods.lora:Merge",
    "merge_fedit": "smartfed.methods.lora:MergeFedIT",
    "pool_fedit": "smartfed.methods.lora:PoolFedIT",
    "lorahub": "smartfed.methods.lorahub:LoraHub",
    "mole": "smartfed.methods.mole:MoLE",
}


@runtime_checkable
class Method(Protocol):
    """What the federated runtime needs from a fine-tuning method.

    Attributes:
        name: registry name.
        uses_eeqa: clients report EEQA importance and the server reallocates quotas.
    """

    name: str
    uses_eeqa: bool

    def prepare(self, model: nn.Module, pool: LoraPool, cfg: RunConfig) -> dict[str, int]:
        """Modify ``model`` in place for local training; return M_m per routed matrix."""
        ...

    def trainable_parameters(self, model: nn.Module) -> list[torch.nn.Parameter]:
        """The parameters local training updates (everything else stays frozen)."""
        ...

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Exactly what is sent: float32 CPU copies keyed by stable names."""
        ...

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load tensors produced by :meth:`trainable_state` (same keys and shapes)."""
        ...


@runtime_checkable
class LocalUpdate(Protocol):
    """A method whose clients do not train by SGD: they run :meth:`local_update` instead."""

    def local_update(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, torch.Tensor]],
        cfg: RunConfig,
        payload: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Compute the reply from the round's seeded batches and the server's ``payload``.

        Returns:
            ``(state, metrics)``: the tensors sent back and ``{"loss": float, "steps": int}``.
        """
        ...


@runtime_checkable
class AuxiliaryLoss(Protocol):
    """A method that adds a term to the local training loss after each forward."""

    def auxiliary_loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar added to the task loss of the batch just forwarded."""
        ...


@runtime_checkable
class ServerSearch(Protocol):
    """A method whose server runs its own optimiser over the replies (LoRAHub's search).

    Each round the server sends :meth:`server_propose`'s arrays instead of its state, checks every
    reply against :meth:`reply_template` and turns the example-weighted mean reply into the next
    state with :meth:`server_update` (:class:`smartfed.fed.search.SearchStrategy`).
    """

    def configure_search(self, cfg: RunConfig) -> None:
        """Take the run's search settings (a cached bundle's method is prepared from a partial
        config, so the server calls this once with the full one)."""
        ...

    def server_propose(
        self, state: Mapping[str, np.ndarray], server_round: int, seed: int
    ) -> dict[str, np.ndarray]:
        """What the server sends this round (e.g. candidate weights), seeded by ``(seed,
        round)``."""
        ...

    def reply_template(self, sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zeros with the keys and shapes of a valid reply to ``sent``."""
        ...

    def server_update(
        self,
        state: Mapping[str, np.ndarray],
        sent: Mapping[str, np.ndarray],
        mean_reply: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The next server state from the mean of the accepted replies."""
        ...


def get_method(name: str) -> Method:
    """Instantiate a registered method.

    Raises:
        ConfigError: unknown method name (the message lists the registered ones).
    """
    target = METHODS.get(name)
    if target is None:
        raise ConfigError(f"method={name!r} is not registered; choose one of {sorted(METHODS)}")
    module_name, _, cls_name = target.partition(":")
    method: Method = getattr(importlib.import_module(module_name), cls_name)()
    return method
