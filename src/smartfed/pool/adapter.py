"""Read one PEFT LoRA adapter from disk without building a model (docs/method.md §1).

A PEFT adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or, from
older PEFT, ``adapter_model.bin``, which is only read with ``torch.load(weights_only=True)``).
Saved keys look like ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``; the module
path in the base model is what sits between ``base_model.model.`` and ``.lora_A``.

Per-module scaling follows PEFT exactly [P: docs/method.md §1]: ``s = alpha / r``
(``alpha / sqrt(r)`` with rsLoRA), where ``r`` and ``alpha`` come from ``rank_pattern`` /
``alpha_pattern`` when a pattern matches the module path.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smartfed.errors import AdapterFileError, PoolCompatibilityError

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)
DELTA_LIMIT = 1e4
"""[D] Largest ``|scaling| x (|B| @ |A|)`` entry accepted: a bound on any entry of the weight
update; trained LoRAs stay far below 1, beyond this the adapter overflows float16/activations."""
_FIX_RESAVE = "re-save it with PeftModel.save_pretrained or copy it again"


@dataclass(frozen=True)
class LoraModule:
    """One adapted matrix of one LoRA: ``delta_W = scaling * B @ A``.

    Attributes:
        A: down projection, shape ``(r, d_in)``, float32, frozen.
        B: up projection, shape ``(d_out, r)``, float32, frozen.
        scaling: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA) for this module [P].
    """

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    @property
    def rank(self) -> int:
        """The rank ``r`` of this module (rows of ``A``)."""
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        """Input features of the adapted matrix."""
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        """Output features of the adapted matrix."""
        return int(self.B.shape[0])


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA adapter read from disk: config facts and one :class:`LoraModule` per matrix.

    ``modules`` is keyed by the module path in the base model
    (``model.layers.3.self_attn.q_proj``).
    """

    name: str
    path: Path
    weights_file: Path
    sha256: str
    base_model_name: str
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    modules: dict[str, LoraModule] = field(repr=False)

    @classmethod
    def from_peft_dir(cls, path: str | Path, name: str | None = None) -> LoraAdapter:
        """Read and check a PEFT LoRA adapter directory.

        Args:
            path: folder with ``adapter_config.json`` and ``adapter_model.safetensors``
                (or ``.bin``).
            name: pool name; default = the folder name.

        Returns:
            The adapter with float32 frozen ``A`` ``(r, d_in)`` and ``B`` ``(d_out, r)`` per module.

        Raises:
            AdapterFileError: missing path, empty dir, missing/corrupt/truncated weights, NaN/Inf.
            PoolCompatibilityError: a PEFT feature SmartFed cannot route (DoRA, bias, ...).
        """
        root = _check_dir(Path(path).expanduser())
        config = _read_config(root / CONFIG_FILE)
        _check_supported(config, root / CONFIG_FILE)
        _check_types(config, root / CONFIG_FILE)
        weights_file = _weights_file(root)
        tensors = _load_tensors(weights_file)
        modules = _build_modules(tensors, config, weights_file)
        return cls(
            name=name or root.name,
            path=root,
            weights_file=weights_file,
            sha256=file_sha256(weights_file),
            base_model_name=str(config.get("base_model_name_or_path") or ""),
            rank=int(config.get("r", 8)),
            alpha=float(config.get("lora_alpha", 8)),
            use_rslora=bool(config.get("use_rslora", False)),
            target_modules=_as_tuple(config.get("target_modules")),
            modules=modules,
        )

    def ranks(self) -> dict[str, int]:
        """Rank of every adapted module (differs from ``rank`` under ``rank_pattern``)."""
        return {m: mod.rank for m, mod in self.modules.items()}


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """Return the ``rank_pattern``/``alpha_pattern`` value for ``module`` (PEFT's matching rule).

    A pattern key matches when the module path ends with it at a ``.`` boundary (the key may be a
    regular expression); the first matching key wins, as in PEFT.
    """
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value or ())


def _check_dir(root: Path) -> Path:
    if not root.exists():
        raise AdapterFileError(
            f"adapter path {root} does not exist; pass a PEFT adapter directory "
            f"({CONFIG_FILE} + {SAFETENSORS_FILE}) or a registered name (`smartfed pool list`)"
        )
    if root.is_file():
        raise AdapterFileError(f"adapter path {root} is a file; pass the directory that holds it")
    if not any(root.iterdir()):
        raise AdapterFileError(
            f"adapter directory {root} is empty; save an adapter there with "
            "PeftModel.save_pretrained or point --lora_pool at another directory"
        )
    return root


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AdapterFileError(
            f"{path} not found: {path.parent} is not a PEFT adapter directory; "
            "save one with PeftModel.save_pretrained"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFileError(f"{path} is not valid JSON ({err}); {_FIX_RESAVE}") from err
    if not isinstance(config, dict):
        raise AdapterFileError(f"{path} must hold a JSON object; {_FIX_RESAVE}")
    return config


def _check_supported(config: dict[str, Any], path: Path) -> None:
    """Reject PEFT features whose update is not ``scaling * B @ A`` on an ``nn.Linear``."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise PoolCompatibilityError(
            f"{path}: peft_type={peft_type} is not supported; SmartFed reuses LoRA adapters only"
        )
    unsupported = {
        "use_dora": "DoRA (use_dora=true): its magnitude vector is not a sum of rank-one experts",
        "fan_in_fan_out": "fan_in_fan_out=true (Conv1D/GPT-2 style weights)",
        "lora_bias": "lora_bias=true (a bias on lora_B)",
        "use_qalora": "QALoRA (use_qalora=true)",
        "target_parameters": "target_parameters (LoRA on raw nn.Parameters)",
        "layer_replication": "layer_replication",
        "alora_invocation_tokens": "aLoRA (alora_invocation_tokens)",
        "trainable_token_indices": "trainable_token_indices",
        "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise PoolCompatibilityError(
                f"{path}: unsupported PEFT feature {what}; use a plain LoRA adapter "
                "(save it without this option)"
            )
    bias = str(config.get("bias", "none"))
    if bias != "none":
        raise PoolCompatibilityError(
            f"{path}: unsupported PEFT feature bias={bias!r} (trained biases are not rank-one "
            "experts); use an adapter saved with bias='none'"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_types(config: dict[str, Any], path: Path) -> None:
    """Refuse ``adapter_config.json`` values of the wrong type (``r: "four"``, NaN alpha, ...)."""
    rules: list[tuple[str, Any, str]] = [
        ("r", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("lora_alpha", _is_number, "a finite number"),
        ("use_rslora", lambda v: isinstance(v, bool), "true or false"),
        (
            "target_modules",
            lambda v: (
                v is None
                or isinstance(v, str)
                or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            ),
            "a module name or a list of module names",
        ),
        (
            "rank_pattern",
            lambda v: (
                v is None
                or (isinstance(v, dict) and all(_is_int(x) and x >= 1 for x in v.values()))
            ),
            "an object of module -> integer rank >= 1",
        ),
        (
            "alpha_pattern",
            lambda v: v is None or (isinstance(v, dict) and all(map(_is_number, v.values()))),
            "an object of module -> finite number",
        ),
    ]
    for key, ok, want in rules:
        if key in config and not ok(config[key]):
            raise AdapterFileError(
                f"{path}: {key}={config[key]!r} must be {want}; fix the file or re-save the "
                "adapter with PeftModel.save_pretrained"
            )


def _weights_file(root: Path) -> Path:
    for name in (SAFETENSORS_FILE, BIN_FILE):
        if (root / name).is_file():
            return root / name
    raise AdapterFileError(f"{root} has no {SAFETENSORS_FILE} (or {BIN_FILE}); {_FIX_RESAVE}")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of the weights file on CPU; corrupt or truncated files fail loudly."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path), device="cpu")
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors raises its own error types; pickle many others
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterFileError(f"{path} is corrupt or truncated ({detail}); {_FIX_RESAVE}") from err
    if not isinstance(tensors, dict) or not all(
        isinstance(t, torch.Tensor) for t in tensors.values()
    ):
        raise AdapterFileError(f"{path} does not hold a flat tensor dict; {_FIX_RESAVE}")
    if not tensors:
        raise AdapterFileError(f"{path} holds no tensors; {_FIX_RESAVE}")
    return tensors


def _pair_tensors(
    tensors: dict[str, torch.Tensor], path: Path
) -> dict[str, dict[str, torch.Tensor]]:
    """Group ``lora_A`` / ``lora_B`` tensors by module path; reject anything else."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise PoolCompatibilityError(
                f"{path}: tensor {key!r} is not a LoRA A/B weight (modules_to_save, DoRA "
                "magnitude, embeddings or biases are not supported); save a plain LoRA adapter"
            )
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    return pairs


def _build_modules(
    tensors: dict[str, torch.Tensor], config: dict[str, Any], path: Path
) -> dict[str, LoraModule]:
    """Turn saved tensors into checked float32 :class:`LoraModule` objects."""
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    use_rslora = bool(config.get("use_rslora", False))
    modules: dict[str, LoraModule] = {}
    for module, pair in sorted(_pair_tensors(tensors, path).items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise AdapterFileError(
                f"{path}: module {module} has no {missing} weight; {_FIX_RESAVE}"
            )
        a, b = pair["A"], pair["B"]
        _check_pair(a, b, module, path)
        r = int(pattern_value(rank_pattern, module, config.get("r", a.shape[0])))
        if r != a.shape[0]:
            raise PoolCompatibilityError(
                f"{path}: module {module} has rank {a.shape[0]} but {CONFIG_FILE} says r={r}; "
                "the config and weights do not belong together"
            )
        alpha = float(pattern_value(alpha_pattern, module, config.get("lora_alpha", r)))
        scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        delta_max = float((b.float().abs() @ a.float().abs()).max()) * abs(scaling)
        if not math.isfinite(delta_max) or delta_max > DELTA_LIMIT:
            raise AdapterFileError(
                f"{path}: module {module}: scaling x B @ A reaches {delta_max:.3g} (> "
                f"{DELTA_LIMIT:.0e}: the adapter overflows the model); use a trained adapter"
            )
        modules[module] = LoraModule(
            A=a.detach().to(torch.float32).contiguous(),
            B=b.detach().to(torch.float32).contiguous(),
            scaling=scaling,
        )
    return modules


def _check_pair(a: torch.Tensor, b: torch.Tensor, module: str, path: Path) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] == 0:
        raise PoolCompatibilityError(
            f"{path}: module {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
            "expected (r, d_in) and (d_out, r) for an nn.Linear LoRA"
        )
    for label, t in (("lora_A", a), ("lora_B", b)):
        if not t.is_floating_point():
            raise AdapterFileError(f"{path}: {module}.{label} is not a float tensor; {_FIX_RESAVE}")
        if not bool(torch.isfinite(t).all()):
            raise AdapterFileError(
                f"{path}: {module}.{label} has NaN/Inf values; retrain or re-export the adapter "
                "and drop it from the pool until then"
            )
