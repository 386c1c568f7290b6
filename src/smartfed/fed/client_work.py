"""One client's training message, done in this process: cached bundle, train, pack the reply.

Used by the ClientApp when no worker is available (and in simulation, where Ray actors keep the
cache) and by the per-node worker (:mod:`smartfed.fed.worker`) for every forwarded message.
"""

from __future__ import annotations

import time

from flwr.app import RecordDict

from smartfed.config import RunConfig
from smartfed.fed import wire
from smartfed.fed.accounting import maybe_measure
from smartfed.fed.cache import BundleSpec, get_bundle
from smartfed.train.client import client_round


def train_content(
    cfg: RunConfig, content: RecordDict, partition_id: int, own: str = "", waited_s: float = 0.0
) -> RecordDict:
    """Train one round on this node's partition and return the reply records.

    Args:
        cfg: the run config.
        content: the train instruction's records (:func:`smartfed.fed.wire.unpack_train_ins`).
        partition_id: the node's ``partition-id``.
        own: the node's own data file (``dataset`` node config; all of it is its partition).
        waited_s: time spent before this call getting a worker ready (added to ``load_s``).

    Raises:
        SmartFedError: model/pool/data or wire problems (the message becomes an error reply).
    """
    t0 = time.perf_counter()
    bundle = get_bundle(BundleSpec.from_config(cfg, dataset=own))
    load_s = time.perf_counter() - t0 + waited_s
    ins = wire.unpack_train_ins(content)
    kwh: list[float] = []
    with maybe_measure(bundle.meter, kwh):
        update = client_round(
            bundle,
            bundle.partition(0 if own else partition_id),
            cfg,
            partition_id=partition_id,
            server_round=ins.server_round,
            routers=ins.routers,
            quotas=ins.quotas,
            local_steps=ins.local_steps,
            batch_size=ins.batch_size,
            learning_rate=ins.learning_rate,
        )
    update.load_s, update.energy_kwh = load_s, kwh[0]
    received = {k: v.numpy() for k, v in ins.routers.items()}  # int8: the update is vs this
    return wire.pack_train_res(update, cfg.fed.wire_dtype, received)
