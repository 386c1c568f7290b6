"""Which torch device a run uses: ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps``.

``auto`` [D] picks CUDA when torch sees a GPU, else Apple's MPS, else the CPU. An explicit CUDA or
MPS device that is not there is a :class:`DeviceError` naming ``--device`` and what to do, raised
before any model is loaded (clients, server and ``deploy-local`` all resolve through here).
"""

from __future__ import annotations

import os

import torch

from smartfed.errors import SmartFedError
from smartfed.log import get_logger

log = get_logger(__name__)


class DeviceError(SmartFedError):
    """A device that was asked for and is not available (or an option it cannot run)."""


def cuda_count() -> int:
    """GPUs torch sees (after ``CUDA_VISIBLE_DEVICES``); 0 without a CUDA build or driver."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend is usable."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str) -> torch.device:
    """Turn a ``--device`` value into a torch device that exists on this machine.

    Args:
        spec: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The device; ``cuda`` resolves to ``cuda:0`` (inside a Ray client actor that is the GPU Ray
        assigned it).

    Raises:
        DeviceError: CUDA/MPS asked for and absent, a GPU index beyond the GPUs present, or an
            unknown spec.
    """
    spec = spec.strip()
    if spec == "auto":
        if cuda_count() > 0:
            return torch.device("cuda", 0)
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_available():
            raise DeviceError(
                "--device mps: Apple MPS is not available on this machine; "
                "use --device auto or --device cpu"
            )
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = 0 if spec == "cuda" else _index(spec)
        n = cuda_count()
        if n == 0:
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
            raise DeviceError(
                f"--device {spec}: CUDA is not available ({build}; CUDA_VISIBLE_DEVICES="
                f"{_visible()}); install a CUDA build of torch on a GPU machine "
                "(docs/gpu.md) or use --device auto / --device cpu"
            )
        if index >= n:
            raise DeviceError(
                f"--device {spec}: only {n} GPU(s) visible (cuda:0..cuda:{n - 1}); "
                "choose one of them or check CUDA_VISIBLE_DEVICES"
            )
        return torch.device("cuda", index)
    raise DeviceError(f"--device {spec!r}: choose auto, cpu, cuda, cuda:N or mps")


def _index(spec: str) -> int:
    tail = spec.partition(":")[2]
    if not tail.isdigit():
        raise DeviceError(f"--device {spec!r}: write cuda:N with a GPU index N >= 0")
    return int(tail)


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>") or "''"


def is_cuda(spec: str) -> bool:
    """Whether ``spec`` runs on CUDA on this machine (``cuda*``, or ``auto`` with a GPU present)."""
    return spec.startswith("cuda") or (spec == "auto" and cuda_count() > 0)
