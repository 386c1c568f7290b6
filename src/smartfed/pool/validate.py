"""Check a pool against a base model before anything is built (docs/ARCHITECTURE.md, Errors).

Decision [D]: a differing ``base_model_name_or_path`` is a *warning*, not an error. The same
weights are often saved under another name (a local copy, a converted GGUF, a re-upload), so the
name proves nothing; shapes and module names do, and those are errors.
"""

from __future__ import annotations

from torch import nn

from smartfed.errors import PoolCompatibilityError
from smartfed.log import get_logger
from smartfed.pool.adapter import LoraAdapter
from smartfed.pool.pool import LoraPool

log = get_logger(__name__)


def validate_pool(pool: LoraPool, model: nn.Module) -> list[str]:
    """Check every adapted matrix exists in ``model`` as an ``nn.Linear`` of matching shape.

    Args:
        pool: the adapters.
        model: the base model (e.g. a ``LlamaForCausalLM``).

    Returns:
        The adapted module paths in the model's own module order.

    Raises:
        PoolCompatibilityError: a target absent from the model, not an ``nn.Linear``, or with
            other ``(d_out, d_in)`` than the adapter's (another hidden size / another model).
    """
    modules = dict(model.named_modules())
    model_name = _model_name(model)
    for adapter in pool.adapters:
        _check_targets(adapter, modules)
        if adapter.base_model_name and model_name and not _same_name(adapter, model_name):
            log.warning(
                "adapter %s was made for %s, the base model is %s: shapes match, using it anyway",
                adapter.name, adapter.base_model_name, model_name,
            )
    wanted = set(pool.matrices())
    return [name for name in modules if name in wanted]


def _check_targets(adapter: LoraAdapter, modules: dict[str, nn.Module]) -> None:
    missing = [m for m in adapter.modules if m not in modules]
    if missing:
        kinds = sorted({type(mod).__name__ for mod in modules.values()})
        raise PoolCompatibilityError(
            f"adapter {adapter.name} ({adapter.path}): {len(missing)} target module(s) absent "
            f"from the base model, e.g. {missing[0]!r} (target_modules="
            f"{sorted(adapter.target_modules)}; model module types: {', '.join(kinds[:8])}"
            f"{'...' if len(kinds) > 8 else ''}); use an adapter made for this base model"
        )
    for path, lora in adapter.modules.items():
        base = modules[path]
        if not isinstance(base, nn.Linear):
            raise PoolCompatibilityError(
                f"adapter {adapter.name}: target {path} is a {type(base).__name__}, SmartFed "
                "routes only nn.Linear layers; drop this adapter or use one that targets "
                "linear layers"
            )
        expected = (base.out_features, base.in_features)
        got = (lora.d_out, lora.d_in)
        if expected != got:
            raise PoolCompatibilityError(
                f"adapter {adapter.name} ({adapter.weights_file}): matrix {path} is "
                f"(d_out, d_in)={expected} in the base model but the adapter's is {got}; it was "
                f"made for another model ({adapter.base_model_name or 'unknown'}): use an adapter "
                "trained on this base model"
            )


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")


def _same_name(adapter: LoraAdapter, model_name: str) -> bool:
    def norm(s: str) -> str:
        return s.rstrip("/").rsplit("/", 1)[-1].lower()

    return norm(adapter.base_model_name) == norm(model_name)
