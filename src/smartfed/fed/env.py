"""The process environment of every Flower run (simulation, ``flwr run`` and local SuperNodes)."""

from __future__ import annotations

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_worker_niceness": "0",
}
"""Process environment for every Flower run: no telemetry, no update check, no runtime installs.
Ray starts its workers at nice 15 by default; the simulation's clients do the run's work, so they
run at the server's priority [D]."""
