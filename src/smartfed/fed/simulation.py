"""In-process simulation engine: ``flwr.simulation.run_simulation`` with the app factories.

GPUs: Ray is started with the GPUs torch sees (``CUDA_VISIBLE_DEVICES`` selects them) and every
client actor requests ``fed.client_gpus`` of them (fractional shares a GPU; 0 = auto: one GPU per
client when the run is on CUDA). Ray hides CUDA from an actor that requests no GPU and shows an
actor only the GPU it was given (as ``cuda:0``), so clients of a CUDA run use ``--device cuda``
inside their actor whatever index ``cuda:N`` names; the ServerApp (evaluation, held-out loss) runs
in this process on ``cfg.model.device`` itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from smartfed.config import RunConfig
from smartfed.log import get_logger
from smartfed.model.device import DeviceError, cuda_count, resolve_device

log = get_logger(__name__)


def client_gpu_request(cfg: RunConfig, gpus: int) -> float:
    """GPUs each client actor asks Ray for (``fed.client_gpus``, 0 = auto).

    Args:
        cfg: the run config (``model.device``, ``fed.client_gpus``).
        gpus: GPUs visible to this process.

    Returns:
        0.0 for a CPU/MPS run; otherwise ``client_gpus`` (auto: 1.0).

    Raises:
        DeviceError: ``client_gpus`` set for a run that is not on CUDA, CUDA asked for without a
            GPU, or a request larger than the GPUs present.
    """
    device, want = cfg.model.device, cfg.fed.client_gpus
    on_cuda = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if not on_cuda:
        if want > 0:
            where = "no GPU is visible" if device == "auto" else f"--device is {device}"
            raise DeviceError(
                f"--client_gpus {want:g} needs clients on CUDA, but {where}; "
                "use --device cuda on a GPU machine or drop --client_gpus"
            )
        return 0.0
    if gpus == 0:
        resolve_device(device)  # raises the "CUDA is not available" error
    request = want if want > 0 else 1.0
    if request > gpus:
        raise DeviceError(
            f"--client_gpus {request:g}: only {gpus} GPU(s) visible, so no client could start; "
            f"use --client_gpus <= {gpus} (fractions share a GPU, e.g. 0.5)"
        )
    return request


def client_config(cfg: RunConfig, gpu_request: float) -> RunConfig:
    """The config the client actors run with: on CUDA, the GPU Ray assigned them (``cuda``)."""
    device = cfg.model.device
    if gpu_request <= 0 or not device.startswith("cuda:"):
        return cfg
    if device != "cuda:0":
        log.warning(
            "--device %s: simulation clients run on the GPUs Ray assigns them (select GPUs with "
            "CUDA_VISIBLE_DEVICES); the server evaluates on %s",
            device,
            device,
        )
    model = dataclasses.replace(cfg.model, device="cuda")
    return dataclasses.replace(cfg, model=model)


def backend_config(cfg: RunConfig, cores: int, gpus: int) -> dict[str, dict[str, Any]]:
    """The Ray backend config: ``cores`` CPUs and ``gpus`` GPUs, per-client CPU/GPU requests.

    Actors running at once = ``min(cores // client_cpus, gpus // client_gpus)`` (Ray's rule).

    Raises:
        DeviceError: see :func:`client_gpu_request`.
    """
    request = client_gpu_request(cfg, gpus)
    return {
        "client_resources": {
            "num_cpus": min(cfg.fed.client_cpus, cores),
            "num_gpus": float(request),
        },
        "init_args": {
            "num_cpus": cores,
            "num_gpus": gpus,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "include_dashboard": False,
        },
    }


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def preflight(cfg: RunConfig) -> None:
    """Fail before Ray starts when the device or quantisation cannot run here.

    Raises:
        DeviceError: see :func:`smartfed.model.device.resolve_device` and
            :func:`smartfed.model.base.quantization_config`.
    """
    from smartfed.model.base import quantization_config

    quantization_config(cfg.model, resolve_device(cfg.model.device))


def simulate(cfg: RunConfig, client_mods: Sequence[Callable[..., Any]] = ()) -> None:
    """Run the apps with Flower's simulation runtime (Ray; ``client_cpus``/``client_gpus`` each).

    ``num_clients`` virtual SuperNodes (partition-id 0..N-1); each actor keeps its cached model
    across rounds and partitions.

    Raises:
        DeviceError: the device, quantisation or GPU request cannot run on this machine.
    """
    from flwr.simulation import run_simulation

    from smartfed.fed.client_app import make_client_app
    from smartfed.fed.server_app import make_server_app

    preflight(cfg)
    gpus = cuda_count()
    backend = backend_config(cfg, available_cores(), gpus)
    request = float(backend["client_resources"]["num_gpus"])
    log.info(
        "simulation: %d CPUs, %d GPUs; each client requests %s CPU(s), %g GPU(s)",
        backend["init_args"]["num_cpus"],
        gpus,
        backend["client_resources"]["num_cpus"],
        request,
    )
    run_simulation(
        server_app=make_server_app(cfg),
        client_app=make_client_app(client_config(cfg, request), client_mods),
        num_supernodes=cfg.fed.num_clients,
        backend_name="ray",
        backend_config=backend,
    )
