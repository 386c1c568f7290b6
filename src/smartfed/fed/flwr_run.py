"""``flwr run .`` support: the quickstart defaults and the checks before anything is written.

``[tool.flwr.app.config]`` = ``RunConfig.to_flat()`` updated with :data:`FLWR_RUN_DEFAULTS` (a test
keeps them in sync). An empty ``output_dir`` means ``output/flwr/run-<run id>``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flwr.app import Context

from smartfed.config import RunConfig, Scalar
from smartfed.io.rundir import RunDir, with_run_dtype
from smartfed.meta import run_meta

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
    """The run config of a ``flwr run`` job (an empty ``output_dir`` becomes a per-run folder;
    ``model.dtype auto`` the server's concrete dtype, the recorded one on resume:
    :func:`~smartfed.io.rundir.with_run_dtype`).

    ClientApps read ``context.run_config`` themselves, so under a bare ``flwr run`` with ``auto``
    each node resolves it for its own device (:func:`smartfed.fed.cache.get_bundle`); pass
    ``--run-config "model.dtype='float32'"`` (or ``smartfed train --engine deployment``, which
    sends the resolved dtype) to pin one dtype everywhere.

    Raises:
        ConfigError: an unknown key or an invalid value in ``--run-config``.
        DeviceError: ``model.device`` is not available on the server.
    """
    cfg = RunConfig.from_flat(context.run_config)
    if not cfg.output_dir:
        out = (FLWR_OUTPUT_ROOT / f"run-{context.run_id}").resolve()
        cfg = dataclasses.replace(cfg, output_dir=str(out))
    return with_run_dtype(cfg)


def prepare_flwr_run(cfg: RunConfig) -> None:
    """Check the run dir, then load model/pool/data once, then open the run dir (in that order).

    Raises:
        SmartFedError: any bad input; nothing has been written then.
    """
    from smartfed.fed.cache import BundleSpec, get_bundle

    RunDir.check(cfg)
    get_bundle(BundleSpec.from_config(cfg))
    RunDir.open(cfg, run_meta(engine=cfg.fed.engine))
