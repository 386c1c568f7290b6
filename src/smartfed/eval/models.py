"""Load what ``smartfed eval`` scores: a base model, base + PEFT adapter, or a SmartFed run's
routers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smartfed.config import ModelConfig, RunConfig
from smartfed.errors import AdapterFileError, CheckpointError, ConfigError
from smartfed.log import get_logger
from smartfed.methods.assemble import apply_method
from smartfed.model.base import load_base_model
from smartfed.model.dtype import resolve_model_config
from smartfed.model.state import load_routers

log = get_logger(__name__)

ROUTING_METHODS = ("smartfed", "smartfed_no_eeqa")
"""Methods whose run checkpoint is a router checkpoint (``checkpoint/routers.safetensors``)."""


def load_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """Wrap ``model`` with a PEFT LoRA adapter (inference mode).

    Raises:
        AdapterFileError: the folder has no ``adapter_config.json`` or PEFT cannot read it.
    """
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise AdapterFileError(
            f"{path}/adapter_config.json not found; --adapter must be a PEFT adapter folder"
        )
    try:
        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AdapterFileError(
            f"cannot load adapter {path}: {first} (is it made for this base model?)"
        ) from err
    wrapped.eval()
    return wrapped


def run_config(run_dir: str | Path) -> RunConfig:
    """Read ``RUN_DIR/config.json``.

    Raises:
        CheckpointError: the folder is not a run directory.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found; --run must be a `smartfed train` --output_dir")
    return RunConfig.load_json(path)


def load_run(model: Any, run_dir: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """Inject MoRE layers over the run's pool and load its trained routers and quotas (in place).

    Returns:
        Information for the summary (method, pool fingerprint, quotas applied).

    Raises:
        ConfigError: the run used a method whose checkpoint is not a router checkpoint.
        CheckpointError / AdapterFileError / PoolCompatibilityError: unusable checkpoint or pool.
    """
    method = cfg.train.method
    if method not in ROUTING_METHODS:
        raise ConfigError(
            f"--run {run_dir}: method {method!r} has no router checkpoint; "
            f"--run supports {ROUTING_METHODS} "
            "(evaluate other baselines through their PEFT adapter with --adapter)"
        )
    pool, routed, experts = apply_method(model, cfg)  # the routers the run trained, reseeded
    quotas = load_routers(Path(run_dir) / "checkpoint", model, pool)
    log.info("loaded routers for %d matrices from %s", len(quotas), run_dir)
    return {
        "method": method,
        "pool": pool.fingerprint(),
        "replaced_modules": len(experts),
        "router_params": sum(v.numel() for v in routed.trainable_state(model).values()),
    }


def load_for_eval(
    model_name_or_path: str | None,
    *,
    adapter: str = "",
    run: str = "",
    dtype: str = "auto",
    device: str = "cpu",
) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model to evaluate.

    Args:
        model_name_or_path: base model; None = the run's base model (with ``run``) or ``default``.
        adapter: PEFT adapter folder (exclusive with ``run``).
        run: SmartFed run directory (exclusive with ``adapter``).
        dtype: weights dtype; ``auto`` = the fastest native one of ``device`` here
            (:func:`smartfed.model.dtype.resolve_dtype`; evaluating is not resuming, so a run
            is evaluated in this machine's dtype). The summary records the concrete one.
        device: torch device.

    Returns:
        ``(model, tokenizer, info)`` where ``info`` goes into the summary.
    """
    if adapter and run:
        raise ConfigError("--adapter and --run are exclusive: pass one of them")
    cfg = run_config(run) if run else None
    name = model_name_or_path or (cfg.model.model_name_or_path if cfg else "default")
    mcfg = resolve_model_config(
        ModelConfig(model_name_or_path=name, dtype=dtype, device=device)  # type: ignore[arg-type]
    )
    model, tok = load_base_model(mcfg)
    dtype = mcfg.dtype
    info: dict[str, Any] = {
        "model": name,
        "adapter": adapter or None,
        "run": run or None,
        "dtype": dtype,
    }
    if adapter:
        model = load_adapter(model, adapter)
    if cfg is not None:
        info["run_info"] = load_run(model, run, cfg)
    return model, tok, info
