"""The ``Method`` contract and the method registry (ARCHITECTURE.md, "Methods").

A method prepares the frozen base model for local training and names exactly the tensors that
travel between clients and server. Register a method with ONE line in :data:`METHODS`.

Optional hooks (docs/baselines.md): ``local_update(model, batches, cfg, payload) -> (state,
{"loss", "steps"})`` replaces local SGD on clients (merge, lorahub); ``server_propose``,
``reply_template`` and ``server_update`` make the server run the method's own search
(:class:`smartfed.fed.search.SearchStrategy`, lorahub); ``auxiliary_loss(model, batch) -> Tensor``
is added to the local training loss after each forward (mole's gating balancing loss).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from smartfed.errors import ConfigError

if TYPE_CHECKING:
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
