"""Which dtype the base model loads in: ``model.dtype = auto`` resolved to a concrete one [D].

``auto`` (the default) picks the fastest dtype this device computes natively:

| device | ``auto`` resolves to |
| --- | --- |
| CUDA | ``bfloat16`` if the GPU has native bf16 (compute capability >= 8; ROCm), else ``float16`` |
| CPU with bf16 matrix instructions (x86 ``avx512_bf16`` or ``amx_bf16``) | ``bfloat16`` |
| any other CPU (e.g. AVX2-only x86, ARM) | ``float32`` |
| anything else (Apple MPS, ...) | ``float32`` |

Why [D]: on a CPU without native bf16 matrix instructions PyTorch emulates bf16 matmuls. Measured
on a 2-core AMD EPYC (AVX2 only, torch 2.13, 2026-12-02; ``benchmarks/dtype_speed.py``): 7.8
GFLOPS bf16 vs 68.5 GFLOPS float32 on one thread (8.8x), and one SmolLM2-135M MoRE training step
(batch 4 x ~94 tokens) took 70 s in bf16 vs 4.5 s in float32 (16x). On a CPU with AVX512-BF16, bf16 was 1.3-1.7x *faster* than
float32. ARM's bf16 extensions are not measured here, so ARM CPUs keep float32 (never
pathological); ``--dtype bfloat16`` asks for it explicitly.

A run resolves ``auto`` once, before anything is keyed on the dtype (the run's ``config.json``,
the bundle cache, skill-LoRA recipe hashes), and records the concrete dtype; a resumed run keeps
the recorded one (:func:`smartfed.io.rundir.with_run_dtype`). The capability checks are the
injectable :class:`DtypeProbe`, so the table above is unit-tested without the hardware.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from smartfed.config import ModelConfig
from smartfed.log import get_logger
from smartfed.model.device import resolve_device

log = get_logger(__name__)

AUTO = "auto"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``torch.cpu.get_capabilities()`` flags of native bf16 matrix instructions (x86)."""
_logged: set[tuple[str, str]] = set()


def cpu_native_bf16(capabilities: Mapping[str, Any] | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (``avx512_bf16`` or ``amx_bf16``).

    Args:
        capabilities: a ``torch.cpu.get_capabilities()`` mapping (default: this machine's).
    """
    if capabilities is None:
        get = getattr(torch.cpu, "get_capabilities", None)
        if get is None:  # a torch without the cpuinfo query: assume emulation (the safe side)
            return False
        capabilities = get()
    return any(bool(capabilities.get(flag, False)) for flag in CPU_BF16_FLAGS)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the CUDA (or ROCm) ``device`` computes bf16 natively (emulation does not count)."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


@dataclass(frozen=True)
class DtypeProbe:
    """The hardware checks behind ``auto`` (tests pass fakes).

    Attributes:
        cuda_bf16: ``(cuda device) -> bool``, native bf16 on that GPU.
        cpu_bf16: ``() -> bool``, native bf16 matrix instructions on this CPU.
    """

    cuda_bf16: Callable[[torch.device], bool]
    cpu_bf16: Callable[[], bool]


def default_probe() -> DtypeProbe:
    """The probe of this machine (looked up at call time, so tests may patch the functions)."""
    return DtypeProbe(cuda_bf16=cuda_native_bf16, cpu_bf16=lambda: cpu_native_bf16())


def choose_dtype(device_type: str, *, cuda_bf16: bool, cpu_bf16: bool) -> str:
    """The table of the module docstring (pure).

    Args:
        device_type: ``torch.device.type`` (``cuda``, ``cpu``, ``mps``, ...).
        cuda_bf16: the GPU has native bf16 (read only for ``cuda``).
        cpu_bf16: the CPU has native bf16 matrix instructions (read only for ``cpu``).
    """
    if device_type == "cuda":
        return "bfloat16" if cuda_bf16 else "float16"
    if device_type == "cpu":
        return "bfloat16" if cpu_bf16 else "float32"
    return "float32"


def resolve_dtype(
    dtype: str, device: str | torch.device = "auto", probe: DtypeProbe | None = None
) -> str:
    """``dtype`` itself, or for ``auto`` the concrete dtype for ``device`` on this machine.

    Args:
        dtype: a ``model.dtype`` value.
        device: a ``--device`` spec (resolved with :func:`~smartfed.model.device.resolve_device`)
            or a torch device.
        probe: the hardware checks (default: this machine's).

    Raises:
        DeviceError: ``device`` names a CUDA/MPS device that is not there.
    """
    if dtype != AUTO:
        return dtype
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    p = probe or default_probe()
    chosen = choose_dtype(
        dev.type,
        cuda_bf16=dev.type == "cuda" and p.cuda_bf16(dev),
        cpu_bf16=dev.type == "cpu" and p.cpu_bf16(),
    )
    if (str(dev), chosen) not in _logged:  # once per process and device
        _logged.add((str(dev), chosen))
        log.info("model.dtype auto -> %s on %s (%s)", chosen, dev, _why(dev.type, chosen))
    return chosen


def _why(device_type: str, chosen: str) -> str:
    if device_type == "cuda":
        return "native bf16" if chosen == "bfloat16" else "no native bf16 on this GPU"
    if device_type == "cpu":
        if chosen == "bfloat16":
            return "CPU with bf16 matrix instructions"
        return "no avx512_bf16/amx_bf16: bf16 matmuls would be emulated, ~7x slower"
    return f"{device_type}: float32"


def resolve_model_config(
    cfg: ModelConfig, probe: DtypeProbe | None = None, recorded: str | None = None
) -> ModelConfig:
    """``cfg`` with ``dtype`` concrete (unchanged when it already is).

    Args:
        cfg: the model config.
        probe: the hardware checks (default: this machine's).
        recorded: the concrete dtype an interrupted run or training recorded: ``auto`` resumes
            in it and is never resolved again (so work continued on another machine keeps its
            numerics); ``None`` or ``auto`` = resolve here.

    Raises:
        DeviceError: ``cfg.device`` names a CUDA/MPS device that is not there.
    """
    if cfg.dtype != AUTO:
        return cfg
    if recorded not in (None, AUTO):
        log.info("resume: model.dtype auto -> %s, the dtype it recorded", recorded)
        return dataclasses.replace(cfg, dtype=recorded)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, dtype=resolve_dtype(cfg.dtype, cfg.device, probe))  # type: ignore[arg-type]
