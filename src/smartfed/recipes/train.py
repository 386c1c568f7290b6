"""``smartfed train``: open the run dir, check model/pool/data once, run the Flower job.

Engines: ``simulation`` (default) = ``flwr.simulation.run_simulation`` in this process with the app
factories; ``deployment`` = the same apps on a SuperLink (``fed.superlink``) or, when no address is
given, on a loopback SuperLink + ``num_clients`` SuperNodes (:mod:`smartfed.recipes.deploy_local`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from smartfed.config import RunConfig
from smartfed.errors import SmartFedError
from smartfed.fed.env import FLOWER_ENV
from smartfed.io.rundir import SUMMARY_FILE, RunDir, with_run_dtype
from smartfed.log import get_logger
from smartfed.meta import run_meta

log = get_logger(__name__)


class RunIncompleteError(SmartFedError):
    """The Flower job ended before ``num_rounds`` rounds completed."""


def prepare_run(cfg: RunConfig) -> RunConfig:
    """Open (or resume) the run dir and load model/pool/data once, so bad input fails here.

    Returns:
        The config the apps get (``resume=True``: they continue the run dir opened here), with
        ``model.dtype`` concrete (:func:`~smartfed.io.rundir.with_run_dtype`).
    """
    from smartfed.fed.cache import BundleSpec, get_bundle
    from smartfed.fed.candidates import round_bytes_line
    from smartfed.methods.smartfed import SmartFed

    RunDir.check(cfg)  # before any loading: a non-empty dir without --resume fails at once
    cfg = with_run_dtype(cfg)  # no-op after run_train; config.json, bundle key: concrete
    bundle = get_bundle(BundleSpec.from_config(cfg))  # bad input fails before the dir is created
    if isinstance(bundle.method, SmartFed):  # routers travel: what a round costs, vs FedIT
        log.info("%s", round_bytes_line(cfg, bundle.pool))
    RunDir.open(cfg, run_meta(engine=cfg.fed.engine))
    return dataclasses.replace(cfg, resume=True)


def run_train(cfg: RunConfig, client_mods: Sequence[Callable[..., Any]] = ()) -> dict[str, Any]:
    """Run a federated SmartFed job and return its ``summary.json``.

    Args:
        cfg: the run config.
        client_mods: Flower client mods (simulation only; e.g. fault injection in tests).

    Raises:
        SmartFedError: bad input, or a job that stopped early (resume with ``--resume``).
    """
    os.environ.update(FLOWER_ENV)
    # ``model.dtype auto`` -> the run's concrete dtype (the stored one on --resume), before the
    # extension pools hash it and the bundle, the run dir and the apps see it.
    cfg = with_extension_pool(with_run_dtype(cfg))
    app_cfg = prepare_run(cfg)
    if cfg.fed.engine == "deployment":
        from smartfed.recipes.deploy_local import run_deployment

        run_deployment(app_cfg)
    else:
        from smartfed.fed.simulation import simulate

        simulate(app_cfg, client_mods)
    return read_summary(cfg)


def with_extension_pool(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the pool entries an installed extension builds replaced by adapter dirs.

    E.g. ``cpu-mini:<skill>[@<pool seed>]`` (``smartfed.pool_sources`` entry points of
    ``smartfed_bench``; built first if not cached). Other entries stay as they are.

    Raises:
        SmartFedError: an entry the extension rejects (e.g. a malformed ``cpu-mini:`` entry).
    """
    from smartfed.plugins import expand_pool_sources

    sources = expand_pool_sources(cfg.pool.sources, cfg.model)
    if sources == list(cfg.pool.sources):
        return cfg
    return dataclasses.replace(cfg, pool=dataclasses.replace(cfg.pool, lora_pool=",".join(sources)))


def read_summary(cfg: RunConfig) -> dict[str, Any]:
    """Return the finished run's summary.

    Raises:
        RunIncompleteError: no summary, or fewer rounds than ``num_rounds``.
    """
    path = RunDir(cfg.output_dir).path / SUMMARY_FILE
    rows = RunDir(cfg.output_dir).metrics()
    done = rows[-1]["round"] if rows else 0
    if not path.is_file() or done < cfg.fed.num_rounds:
        raise RunIncompleteError(
            f"the run stopped after round {done} of {cfg.fed.num_rounds} (see the log above); "
            f"continue it with --resume --output_dir {cfg.output_dir}"
        )
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary


def run_request(request: str) -> int:
    """Child-process entry of the bench and the demo: run one config from a JSON request file.

    Returns:
        0 when the run finished, 2 after a ``SmartFedError`` (its one line is on stderr).
    """
    import sys

    from smartfed.log import configure_logging

    configure_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_train(RunConfig.load_json(request))
    except SmartFedError as err:
        print(f"smartfed: error: {err}", file=sys.stderr)
        return 2
    return 0
