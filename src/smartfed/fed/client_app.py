"""The SmartFed ClientApp: a thin forwarder to this node's worker, or in-process training.

``make_client_app(cfg)`` closes over a config (in-process simulation hands apps an empty
``run_config``; Ray actors keep the model cached) and always trains in-process. The module-level
``app`` parses ``context.run_config`` (``flwr run``, one process per message) and forwards each
train message to the node's long-lived worker (:mod:`smartfed.fed.forwarder`; no torch imported
here), training in-process only when no worker can be used. An instruction that arrives sealed
(:mod:`smartfed.fed.envelope`, the deployment ServerApp's grid) is opened first and its reply is
sealed the same way.
A SuperNode's ``--node-config`` gives ``partition-id`` and optionally ``dataset`` (its own file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from smartfed.config import RunConfig
from smartfed.fed.envelope import is_sealed, open_content, seal
from smartfed.fed.forwarder import forward_train
from smartfed.fed.wire_state import ClientWire


def _partition_id(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


def _reply(msg: Message, content: RecordDict) -> Message:
    """The reply to ``msg``, sealed when ``msg`` came sealed."""
    return Message(seal(content) if is_sealed(msg.content) else content, reply_to=msg)


def _train(cfg: RunConfig | None, msg: Message, context: Context) -> Message:
    run_cfg = cfg or RunConfig.from_flat(context.run_config)
    cw = ClientWire(run_cfg.fed, context.state)  # fed.wire_delta / wire_error_feedback
    content, run_cfg = cw.receive(open_content(msg.content)), cw.inner_config(run_cfg)
    own = str(context.node_config.get("dataset", ""))
    pid = _partition_id(context)
    if cfg is None:  # flwr run: a worker keeps the model between messages
        out = forward_train(run_cfg, content, context.node_config, pid, own)
        if out is not None:
            return _reply(msg, cw.reply(out))
    from smartfed.fed.client_work import train_content

    return _reply(msg, cw.reply(train_content(run_cfg, content, pid, own)))


def make_client_app(
    cfg: RunConfig | None = None, mods: Sequence[Callable[..., Any]] = ()
) -> ClientApp:
    """Build the ClientApp (``cfg=None``: read ``context.run_config``; ``mods``: Flower mods)."""
    app = ClientApp(mods=list(mods))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from smartfed.fed import wire  # torch: once per run (start-of-run query), not per round

        return _reply(msg, wire.pack_hello(_partition_id(context)))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(cfg, msg, context)

    return app


app = make_client_app()
