"""The SmartFed ServerApp: parse the config, open/resume the run dir, run the rounds.

``make_server_app(cfg)`` closes over a config (in-process simulation); the module-level ``app``
parses ``context.run_config`` (``flwr run``, keys = ``RunConfig.to_flat()``).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from smartfed.config import RunConfig
from smartfed.fed.driver import run_server
from smartfed.io.rundir import RunDir
from smartfed.log import get_logger
from smartfed.meta import run_meta

log = get_logger(__name__)


def make_server_app(cfg: RunConfig | None = None) -> ServerApp:
    """Build the ServerApp (``cfg=None``: read ``context.run_config``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg or RunConfig.from_flat(context.run_config)
        RunDir.open(run_cfg, run_meta(engine=run_cfg.fed.engine))
        summary = run_server(grid, run_cfg)
        log.info(
            "run finished: %d rounds, %.1f MB sent, final train loss %s",
            summary["rounds"],
            summary["bytes_total"] / 1e6,
            summary.get("final_train_loss"),
        )

    return app


app = make_server_app()
