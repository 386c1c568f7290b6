"""What a client sends back after one round, as plain data (no torch, no transport).

Local training (:mod:`smartfed.train.client`) builds a :class:`ClientUpdate`; the wire
(:mod:`smartfed.fed.wire`) packs and unpacks it and the strategy checks and aggregates it. It lives
below both so that transport code does not depend on training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass
class ClientUpdate:
    """What a client sends back after one round.

    Attributes:
        partition_id: which data partition trained.
        num_examples: rows in the partition (the FedAvg weight [P]).
        train_loss: mean loss over the local steps.
        routers: trained tensors by key (float32 numpy, shapes as received).
        importance: matrix -> per-expert EEQA importance (empty for methods without EEQA).
        usage: matrix -> top-K selections per source adapter (pool order) over this round's
            real tokens (measured with the importance; empty without EEQA).
        steps: optimizer steps taken.
        train_s: seconds of local training.
        load_s: seconds spent loading the model/data in this message (0 when cached).
        energy_kwh: energy of this round on this client (0 when not tracked).
        step_losses: the loss of every local step, sent only for ``train.report_to`` trackers
            (empty otherwise, so the default reply carries no extra bytes).
    """

    partition_id: int
    num_examples: int
    train_loss: float
    routers: dict[str, np.ndarray]
    importance: dict[str, list[float]] = field(default_factory=dict)
    usage: dict[str, list[int]] = field(default_factory=dict)
    steps: int = 0
    train_s: float = 0.0
    load_s: float = 0.0
    energy_kwh: float = 0.0
    step_losses: list[float] = field(default_factory=list)
