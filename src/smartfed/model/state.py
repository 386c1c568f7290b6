"""Router state: exactly what travels between clients and server, and the router checkpoint.

Keys are the MoRE layer's module path plus ``.router.weight``
(``model.layers.0.self_attn.q_proj.router.weight``), float32, shape ``(M_m, d_in)``: stable across
processes for the same base model and pool. A checkpoint directory holds ``routers.safetensors``
(metadata: ``{adapter name: sha256}`` plus the pool order) and ``quotas.json``; both are written
atomically and refused against another pool.

Projected routers (``router_proj_dim = h > 0``) hold ``W_r: (M_m, h)``; the fixed projection ``P``
is a buffer rebuilt from the seed and never saved. Their checkpoint metadata also holds
``__router_proj__ = {"dim": h, "digest": sha256 of every P}``, and loading refuses a projected
checkpoint into full routers, full routers into projected ones, and another projection.

Low-rank routers (``router_rank = r > 0``) send two tensors per matrix, ``.router.weight``
(``U: (M_m, r)``) and ``.router.down`` (``V: (r, d_in)``): every trainable parameter of a router is
in the state, keyed ``<matrix>.router.<parameter>``. Their checkpoints record
``__router_rank__ = r``; loading refuses another rank or another router kind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from smartfed.errors import CheckpointError, ConfigError
from smartfed.files import atomic_write, atomic_write_json
from smartfed.pool.pool import LoraPool
from smartfed.routing.layer import MoRELinear

ROUTERS_FILE = "routers.safetensors"
QUOTAS_FILE = "quotas.json"
POOL_ORDER_KEY = "__pool_order__"
ROUTER_PROJ_KEY = "__router_proj__"
ROUTER_RANK_KEY = "__router_rank__"
_SUFFIX = ".router.weight"


def more_layers(model: nn.Module) -> dict[str, MoRELinear]:
    """Every ``MoRELinear`` of ``model`` by module path, in model order."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, MoRELinear)}


def router_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return every router parameter (float32, CPU, detached copies): exactly what is sent."""
    return {
        f"{name}.router.{pname}": p.detach().to("cpu", torch.float32).clone()
        for name, layer in more_layers(model).items()
        for pname, p in layer.router.named_parameters()
    }


def router_rank(model: nn.Module) -> int:
    """r of the model's low-rank routers; 0 when they are not low-rank."""
    ranks = {int(getattr(layer.router, "rank", 0)) for layer in more_layers(model).values()}
    return max(ranks, default=0)


def router_projection(model: nn.Module) -> dict[str, int | str]:
    """``{"dim": h, "digest": ...}`` of the model's projected routers; ``{}`` for full routers.

    The digest (sha256 over every projection ``P`` in model order, float32 bytes, first 16 hex)
    tells routers built with another seed apart.

    Raises:
        CheckpointError: some layers are projected and others are not, or with different h.
    """
    projs = [getattr(layer.router, "proj", None) for layer in more_layers(model).values()]
    dims = {0 if p is None else int(p.shape[0]) for p in projs}
    if len(dims) > 1:
        raise CheckpointError(f"MoRE layers mix router projection widths {sorted(dims)}")
    if dims in (set(), {0}):
        return {}
    digest = hashlib.sha256()
    for p in projs:
        digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"dim": dims.pop(), "digest": digest.hexdigest()[:16]}


def load_router_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy router weights into the model; keys and shapes must match exactly.

    Raises:
        CheckpointError: missing or unexpected keys, or another shape.
    """
    layers = more_layers(model)
    params = {
        f"{name}.router.{pname}": p
        for name, layer in layers.items()
        for pname, p in layer.router.named_parameters()
    }
    expected = set(params)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"router state does not fit this model: {len(missing)} missing (e.g. "
            f"{missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]}); use routers "
            "trained with the same base model and pool"
        )
    for key, param in params.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(param.shape):
            name, _, pname = key.rpartition(".router.")
            raise CheckpointError(
                f"router {name}: shape {tuple(tensor.shape)} != {tuple(param.shape)} of its "
                f"{pname} in this model; use routers trained with the same pool, router_proj_dim "
                "and router_rank"
            )
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])


def get_quotas(model: nn.Module) -> dict[str, int]:
    """K_m of every MoRE layer."""
    return {name: layer.k for name, layer in more_layers(model).items()}


def set_quotas(model: nn.Module, quotas: Mapping[str, int]) -> None:
    """Set K_m per matrix (unlisted matrices keep theirs).

    Raises:
        ConfigError: an unknown matrix or an impossible K_m.
    """
    layers = more_layers(model)
    unknown = sorted(set(quotas) - set(layers))
    if unknown:
        raise ConfigError(
            f"quotas name {len(unknown)} matrices with no MoRE layer, e.g. {unknown[0]}; "
            "use quotas saved for this pool"
        )
    for name, k in quotas.items():
        layers[name].set_quota(k)


def save_routers(
    out_dir: str | Path, model: nn.Module, pool: LoraPool, quotas: Mapping[str, int] | None = None
) -> Path:
    """Write ``routers.safetensors`` (+ pool hashes) and ``quotas.json`` into ``out_dir``.

    Args:
        out_dir: checkpoint folder (created).
        model: the MoRE model.
        pool: the pool the routers were built for; its hashes go into the file metadata.
        quotas: K_m per matrix; ``None`` = the model's current quotas.

    Returns:
        The path of ``routers.safetensors``.
    """
    out = Path(out_dir)
    metadata = dict(pool.fingerprint())
    metadata[POOL_ORDER_KEY] = json.dumps(pool.names)
    proj = router_projection(model)
    if proj:  # full routers keep the metadata they always had
        metadata[ROUTER_PROJ_KEY] = json.dumps(proj, sort_keys=True)
    if router_rank(model):
        metadata[ROUTER_RANK_KEY] = str(router_rank(model))
    state = router_state_dict(model)
    path = atomic_write(out / ROUTERS_FILE, lambda p: save_file(state, str(p), metadata=metadata))
    atomic_write_json(out / QUOTAS_FILE, dict(quotas if quotas is not None else get_quotas(model)))
    return path


def load_routers(in_dir: str | Path, model: nn.Module, pool: LoraPool) -> dict[str, int]:
    """Load routers and quotas saved by :func:`save_routers`, refusing another pool.

    Returns:
        The quotas that were applied.

    Raises:
        CheckpointError: missing/corrupt files, or a pool that differs (named adapter).
    """
    path = Path(in_dir) / ROUTERS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass a checkpoint folder written by SmartFed")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for bad files
        raise CheckpointError(
            f"{path} is corrupt or truncated ({err}); use another checkpoint"
        ) from err
    _check_pool(metadata, pool, path)
    _check_projection(metadata, model, path)
    load_router_state_dict(model, state)
    quotas = _read_quotas(Path(in_dir) / QUOTAS_FILE)
    set_quotas(model, quotas)
    return get_quotas(model)


def _check_pool(metadata: dict[str, str], pool: LoraPool, path: Path) -> None:
    saved = {
        k: v
        for k, v in metadata.items()
        if k not in (POOL_ORDER_KEY, ROUTER_PROJ_KEY, ROUTER_RANK_KEY, "format")
    }
    current = pool.fingerprint()
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            why = "is not in the current pool"
        elif name not in saved:
            why = "was not in the pool these routers were trained with"
        elif saved[name] != current[name]:
            why = f"has other weights (sha256 {current[name][:12]} != saved {saved[name][:12]})"
        else:
            continue
        raise CheckpointError(
            f"{path}: adapter {name!r} {why}; load these routers with the pool they were trained "
            f"with ({', '.join(sorted(saved))})"
        )
    order = json.loads(metadata.get(POOL_ORDER_KEY, "[]"))
    if order and order != pool.names:
        raise CheckpointError(
            f"{path}: pool order {order} differs from {pool.names}; expert ids depend on it: "
            f"pass --lora_pool {','.join(order)}"
        )


def _check_projection(metadata: dict[str, str], model: nn.Module, path: Path) -> None:
    """Refuse routers saved with another router projection (or low-rank rank) than the model's."""
    saved_rank, rank = int(metadata.get(ROUTER_RANK_KEY, "0") or 0), router_rank(model)
    if saved_rank != rank:
        raise CheckpointError(
            f"{path}: routers saved with router_rank={saved_rank}, this model has "
            f"router_rank={rank}; build the model with --router_rank {saved_rank}"
        )
    try:
        saved = json.loads(metadata[ROUTER_PROJ_KEY]) if ROUTER_PROJ_KEY in metadata else {}
        saved_dim = int(saved.get("dim", 0))
    except (ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable {ROUTER_PROJ_KEY} metadata ({err})") from err
    current = router_projection(model)
    dim = int(current.get("dim", 0))
    if saved_dim != dim:
        raise CheckpointError(
            f"{path}: routers saved with router_proj_dim={saved_dim}, this model has "
            f"router_proj_dim={dim}; build the model with --router_proj_dim {saved_dim}"
        )
    if dim and saved.get("digest") != current["digest"]:
        raise CheckpointError(
            f"{path}: router projections differ from the saved ones (another seed); build the "
            "model with the seed these routers were trained with"
        )


def _read_quotas(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise CheckpointError(
            f"{path} is not a valid quotas file ({err}); re-save the checkpoint"
        ) from err
