"""In-process simulation engine: ``flwr.simulation.run_simulation`` with the app factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from smartfed.config import RunConfig


def simulate(cfg: RunConfig, client_mods: Sequence[Callable[..., Any]] = ()) -> None:
    """Run the apps with Flower's simulation runtime (Ray; one CPU per client actor).

    ``num_clients`` virtual SuperNodes (partition-id 0..N-1); ``cores // client_cpus`` actors, each
    keeping its cached model across rounds and partitions.
    """
    from flwr.simulation import run_simulation

    from smartfed.fed.client_app import make_client_app
    from smartfed.fed.server_app import make_server_app

    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    run_simulation(
        server_app=make_server_app(cfg),
        client_app=make_client_app(cfg, client_mods),
        num_supernodes=cfg.fed.num_clients,
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": min(cfg.fed.client_cpus, cores), "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cores,
                "num_gpus": 0,
                "logging_level": "ERROR",
                "log_to_driver": False,
                "include_dashboard": False,
            },
        },
    )
