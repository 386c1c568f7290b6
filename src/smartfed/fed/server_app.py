"""The SmartFed ServerApp: parse the config, open/resume the run dir, run the rounds.

``make_server_app(cfg)`` closes over a config (in-process simulation, already checked and opened
by ``smartfed train``); the module-level ``app`` parses ``context.run_config`` (``flwr run``, keys =
``RunConfig.to_flat()``, defaults = ``[tool.flwr.app.config]``). Under ``flwr run`` the model, pool
and data are checked before anything is written, so a bad input fails at once with one
``smartfed: error: ...`` line and leaves no run directory behind (:mod:`smartfed.fed.flwr_run`).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from smartfed.config import RunConfig
from smartfed.errors import SmartFedError
from smartfed.fed.driver import run_server
from smartfed.fed.flwr_run import flwr_run_config, prepare_flwr_run
from smartfed.fed.grid_poll import deployment_grid
from smartfed.io.rundir import RunDir
from smartfed.log import get_logger
from smartfed.meta import run_meta

log = get_logger(__name__)


def make_server_app(cfg: RunConfig | None = None) -> ServerApp:
    """Build the ServerApp (``cfg=None``: read ``context.run_config``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is not None:
            RunDir.open(cfg, run_meta(engine=cfg.fed.engine))
            run_cfg = cfg
        else:
            from smartfed.log import configure_logging

            configure_logging()  # flwr run: our INFO lines (run dir, EEQA, summary) in the stream
            try:
                run_cfg = flwr_run_config(context)
                prepare_flwr_run(run_cfg)
            except SmartFedError as err:
                line = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.error("smartfed: error: %s", line)
                # Flower logs the exception with its traceback and marks the run failed; keep that
                # traceback to this frame (the line above is the message for the user).
                raise type(err)(line) from None
            log.info("SmartFed run directory: %s", run_cfg.output_dir)
        summary = run_server(deployment_grid(grid), run_cfg)  # sealed messages, 0.25 s reply poll
        log.info(
            "run finished: %d rounds, %.1f MB sent, final train loss %s; run directory %s",
            summary["rounds"],
            summary["bytes_total"] / 1e6,
            summary.get("final_train_loss"),
            run_cfg.output_dir,
        )

    return app


app = make_server_app()
