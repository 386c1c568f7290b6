"""``SearchStrategy``: the server runs a method's own optimiser (LoRAHub's search) over client
replies.

For a :class:`~smartfed.methods.base.ServerSearch` method (``configure_search(cfg)``, called once
with the run config since a cached bundle's method is prepared from a partial one;
``server_propose(state, round, seed) -> sent``, ``reply_template(sent) -> zeros`` and
``server_update(state, sent, mean_reply) -> state``): each round the server sends ``sent`` (e.g.
candidate weights) instead of its state, checks every reply against ``reply_template`` (keys,
shapes, finiteness), averages the accepted replies example-weighted (FedAvg, unchanged) and turns
the mean into the next state. Bytes are counted by
:class:`~smartfed.fed.strategy.SmartFedStrategy` as for any method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from smartfed.config import RunConfig
from smartfed.fed import wire
from smartfed.fed.strategy import SmartFedStrategy
from smartfed.methods.base import ServerSearch


class SearchStrategy(SmartFedStrategy):
    """SmartFedStrategy whose down-link and aggregation are the method's search steps.

    Args:
        method: a :class:`~smartfed.methods.base.ServerSearch` method.
        cfg: the run config.
        node_partitions: node id -> partition id.
        round_offset: rounds already completed (resume).
    """

    def __init__(
        self,
        method: ServerSearch,
        cfg: RunConfig,
        node_partitions: dict[int, int],
        *,
        round_offset: int = 0,
    ) -> None:
        super().__init__(
            cfg, node_partitions, {}, None, round_offset=round_offset, max_update_norm=math.inf
        )
        self.method = method
        method.configure_search(cfg)  # the run's own settings (budget, rounds, seed)
        self._state: dict[str, np.ndarray] = {}
        self._sent_state: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the method's proposal for this round (seeded by ``(seed, round)``)."""
        self._state = {k: arrays[k].numpy() for k in arrays}
        self._sent_state = self.method.server_propose(
            self._state, server_round + self.offset, self.cfg.train.seed
        )
        msgs = super().configure_train(
            server_round, wire.arrays_from_numpy(self._sent_state), config, grid
        )
        self._global = self.method.reply_template(self._sent_state)  # what a valid reply looks like
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the replies (e.g. candidate losses), then the method's update of the state."""
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None:
            return None, None
        new = self.method.server_update(
            self._state, self._sent_state, {k: mean[k].numpy() for k in mean}
        )
        return wire.arrays_from_numpy(new), metrics
