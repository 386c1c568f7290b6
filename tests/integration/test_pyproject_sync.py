"""[tool.flwr.app.config] in pyproject.toml lists exactly RunConfig.to_flat()'s keys (Flower
rejects overrides of unknown keys) with smartfed train's defaults except the documented quickstart
job of a bare `flwr run .`; components resolve to the apps."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

from smartfed.config import RunConfig
from smartfed.recipes.deploy_local import app_pyproject

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _app() -> dict:  # type: ignore[type-arg]
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]


def test_config_keys_and_defaults_match_runconfig() -> None:
    """Same keys; same defaults except the documented quickstart job of a bare `flwr run .`."""
    from smartfed.fed.flwr_run import FLWR_RUN_DEFAULTS

    config = _app()["config"]
    assert config == {**RunConfig().to_flat(), **FLWR_RUN_DEFAULTS}
    assert set(FLWR_RUN_DEFAULTS) <= set(RunConfig().to_flat())
    assert RunConfig.from_flat(config).to_flat() == config


def test_flwr_run_default_pool_is_shipped() -> None:
    """The default pool of `flwr run .` resolves to LoRAs shipped with the package."""
    from smartfed_bench.packaged import packaged_by_name

    for name in str(_app()["config"]["pool.lora_pool"]).split(","):
        assert packaged_by_name(name) is not None, name


def test_components_are_flower_apps() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    comps = _app()["components"]
    for key, cls in (("serverapp", ServerApp), ("clientapp", ClientApp)):
        module, _, attr = comps[key].partition(":")
        assert isinstance(getattr(importlib.import_module(module), attr), cls)


def test_generated_job_app_carries_the_run_config() -> None:
    cfg = RunConfig.from_flat({"num_rounds": 7, "lora_pool": 'a,"b"', "output_dir": "/x/y"})
    app = tomllib.loads(app_pyproject(cfg))["tool"]["flwr"]["app"]
    assert RunConfig.from_flat(app["config"]) == cfg
    assert app["components"] == _app()["components"]
