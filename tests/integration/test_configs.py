"""Every shipped config file parses into a valid RunConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartfed.config import RunConfig

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.toml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses(path: Path) -> None:
    cfg = RunConfig.from_toml(path)
    assert cfg.pool.sources, f"{path} has no lora_pool"
    assert cfg.data.task or cfg.data.dataset
