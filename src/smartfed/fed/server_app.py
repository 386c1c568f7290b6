"""The SmartFed ServerApp: parse the config, open/resume the run dir, run the rounds.

``make_server_app(cfg)`` closes over a config (in-process simulation, already checked and opened
by ``smartfed train``); the module-level ``app`` parses ``context.run_config`` (``flwr run``, keys =
``RunConfig.to_flat()``, defaults = ``[tool.flwr.app.config]``). Under ``flwr run`` the model, pool
and data are checked before anything is written, so a bad input fails at once with one
``smartfed: error: ...`` line and leaves no run directory behind; an empty ``output_dir`` means
``output/flwr/run-<run id>`` (a fresh folder per run, so a retry is never refused).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from smartfed.config import RunConfig, Scalar
from smartfed.errors import SmartFedError
from smartfed.fed.driver import run_server
from smartfed.fed.grid_poll import fast_poll
from smartfed.io.rundir import RunDir
from smartfed.log import get_logger
from smartfed.meta import run_meta

log = get_logger(__name__)
FLWR_RUN_DEFAULTS: dict[str, Scalar] = {
    "pool.lora_pool": "cpu_mini.skill.zh,cpu_mini.skill.code",
    "data.task": "cpu_mini.zh_code_gap",
    "fed.num_clients": 2,
    "fed.num_rounds": 2,
    "fed.round_timeout_s": 900.0,
    "train.local_steps": 5,
    "train.batch_size": 8,
    "train.learning_rate": 0.005,
    "router.topk_experts": 8,
    "model.max_seq_len": 128,
    "eval.eval_every": 0,
    "eval.eval_limit": 20,
    "eval.max_new_tokens": 40,
    "eval.eval_batch_size": 20,
    "eval.heldout_examples": 32,
    "output_dir": "",
}
"""[D] Where ``[tool.flwr.app.config]`` differs from ``RunConfig()``: a bare ``flwr run .`` is a
short quickstart job (the two cpu-mini skill LoRAs shipped with the package, the Chinese-code
task, 2 clients = the 2 SuperNodes of Flower's default local federation, 2 rounds). Every other key
has ``smartfed train``'s default; override any of them with ``--run-config``."""
FLWR_OUTPUT_ROOT = Path("output") / "flwr"
"""Where ``flwr run`` jobs with an empty ``output_dir`` write (``run-<run id>`` below it)."""


def flwr_run_config(context: Context) -> RunConfig:
    """The run config of a ``flwr run`` job (an empty ``output_dir`` becomes a per-run folder).

    Raises:
        ConfigError: an unknown key or an invalid value in ``--run-config``.
    """
    cfg = RunConfig.from_flat(context.run_config)
    if not cfg.output_dir:
        out = (FLWR_OUTPUT_ROOT / f"run-{context.run_id}").resolve()
        cfg = dataclasses.replace(cfg, output_dir=str(out))
    return cfg


def prepare_flwr_run(cfg: RunConfig) -> None:
    """Check the run dir, then load model/pool/data once, then open the run dir (in that order).

    Raises:
        SmartFedError: any bad input; nothing has been written then.
    """
    from smartfed.fed.cache import BundleSpec, get_bundle

    RunDir.check(cfg)
    get_bundle(BundleSpec.from_config(cfg))
    RunDir.open(cfg, run_meta(engine=cfg.fed.engine))


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
        summary = run_server(fast_poll(grid), run_cfg)  # replies pulled every 0.25 s
        log.info(
            "run finished: %d rounds, %.1f MB sent, final train loss %s; run directory %s",
            summary["rounds"],
            summary["bytes_total"] / 1e6,
            summary.get("final_train_loss"),
            run_cfg.output_dir,
        )

    return app


app = make_server_app()
