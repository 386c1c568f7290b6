"""The process environment of every Flower run (simulation, ``flwr run`` and local SuperNodes)."""

from __future__ import annotations

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Process environment for every Flower run: no telemetry, no update check, no runtime installs."""
