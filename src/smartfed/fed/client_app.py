"""The SmartFed ClientApp: unpack, call :func:`smartfed.train.client.client_round`, pack.

``make_client_app(cfg)`` closes over a config (in-process simulation hands apps an empty
``run_config``); the module-level ``app`` parses ``context.run_config`` instead (``flwr run``).
A SuperNode's ``--node-config`` gives ``partition-id`` and optionally ``dataset`` (its own file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from smartfed.config import RunConfig
from smartfed.fed import wire
from smartfed.fed.accounting import maybe_measure
from smartfed.fed.cache import BundleSpec, get_bundle
from smartfed.fed.wire_state import ClientWire
from smartfed.train.client import client_round


def _partition_id(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


def _train(cfg: RunConfig | None, msg: Message, context: Context) -> Message:
    run_cfg = cfg or RunConfig.from_flat(context.run_config)
    cw = ClientWire(run_cfg.fed, context.state)  # fed.wire_delta / wire_error_feedback
    content, run_cfg = cw.receive(msg.content), cw.inner_config(run_cfg)
    own = str(context.node_config.get("dataset", ""))
    t0 = time.perf_counter()
    bundle = get_bundle(BundleSpec.from_config(run_cfg, dataset=own))
    load_s = time.perf_counter() - t0
    pid = _partition_id(context)
    ins = wire.unpack_train_ins(content)
    kwh: list[float] = []
    with maybe_measure(bundle.meter, kwh):
        update = client_round(
            bundle,
            bundle.partition(0 if own else pid),
            run_cfg,
            partition_id=pid,
            server_round=ins.server_round,
            routers=ins.routers,
            quotas=ins.quotas,
            local_steps=ins.local_steps,
            batch_size=ins.batch_size,
            learning_rate=ins.learning_rate,
        )
    update.load_s, update.energy_kwh = load_s, kwh[0]
    received = {k: v.numpy() for k, v in ins.routers.items()}  # int8: the update is vs this
    reply = wire.pack_train_res(update, run_cfg.fed.wire_dtype, received)
    return Message(cw.reply(reply), reply_to=msg)


def make_client_app(
    cfg: RunConfig | None = None, mods: Sequence[Callable[..., Any]] = ()
) -> ClientApp:
    """Build the ClientApp (``cfg=None``: read ``context.run_config``; ``mods``: Flower mods)."""
    app = ClientApp(mods=list(mods))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(wire.pack_hello(_partition_id(context)), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(cfg, msg, context)

    return app


app = make_client_app()
