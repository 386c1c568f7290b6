"""Devices without a GPU: resolution, clear errors for absent CUDA/MPS/bitsandbytes, and the GPU
resources a CUDA run requests in simulation (Ray) and in deploy-local (one GPU per SuperNode)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from smartfed.config import ModelConfig, RunConfig
from smartfed.errors import ConfigError, SmartFedError
from smartfed.fed.simulation import backend_config, client_config, client_gpu_request
from smartfed.model import device as device_mod
from smartfed.model.base import load_base_model, quantization_config
from smartfed.model.device import DeviceError, resolve_device
from smartfed.recipes.deploy_local import supernode_gpu_env

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")


def _cfg(**flat: object) -> RunConfig:
    return RunConfig.from_flat(flat)


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(device_mod, "cuda_count", lambda: n)


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_config_accepts_device_specs(spec: str) -> None:
    assert RunConfig.from_flat({"device": spec}).model.device == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:-1", "cpu:0", ""])
def test_config_rejects_bad_device_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match="device="):
        ModelConfig(device=spec)


def test_config_rejects_bad_memory_and_gpu_values() -> None:
    with pytest.raises(ConfigError, match="quantization"):
        RunConfig.from_flat({"quantization": "2bit"})
    with pytest.raises(ConfigError, match="client_gpus"):
        RunConfig.from_flat({"client_gpus": -0.5})
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        RunConfig.from_flat({"loss_chunk_tokens": -1})


def test_defaults_are_auto_and_memory_lean() -> None:
    cfg = RunConfig()
    assert cfg.model.device == "auto" and cfg.model.quantization == "none"
    assert cfg.train.gradient_checkpointing and cfg.train.loss_chunk_tokens > 0
    assert cfg.fed.client_gpus == 0.0


def test_resolution_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    _fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(device_mod, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(device_mod, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_gpu_index_beyond_the_gpus_present(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(DeviceError, match=r"--device cuda:2: only 2 GPU\(s\) visible"):
        resolve_device("cuda:2")


@NO_CUDA
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_asked_for_and_absent_is_a_clear_error(spec: str) -> None:
    with pytest.raises(DeviceError, match=f"--device {spec}: CUDA is not available") as err:
        resolve_device(spec)
    assert isinstance(err.value, SmartFedError) and "\n" not in str(err.value)
    assert "--device auto" in str(err.value)


def test_mps_asked_for_and_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "mps_available", lambda: False)
    with pytest.raises(DeviceError, match="--device mps: Apple MPS is not available"):
        resolve_device("mps")


@NO_CUDA
def test_load_base_model_refuses_cuda_before_loading(tiny_model_dir: Path) -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), device="cuda"))


def test_quantization_refused_off_cuda_and_without_bitsandbytes() -> None:
    assert quantization_config(ModelConfig(), torch.device("cpu")) is None
    with pytest.raises(DeviceError, match="--quantization 4bit needs a CUDA GPU"):
        quantization_config(ModelConfig(quantization="4bit"), torch.device("cpu"))
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(DeviceError, match=r"pip install 'smartfed\[quant\]'"):
            quantization_config(ModelConfig(quantization="8bit"), torch.device("cuda", 0))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_quantization_config_fields() -> None:
    q4 = quantization_config(
        ModelConfig(quantization="4bit", dtype="bfloat16"), torch.device("cuda", 0)
    )
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4"
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    q8 = quantization_config(ModelConfig(quantization="8bit"), torch.device("cuda", 0))
    assert q8.load_in_8bit


# --- simulation: what Ray is asked for ----------------------------------------------------------


def test_cuda_run_requests_gpus_from_ray() -> None:
    backend = backend_config(_cfg(device="cuda", client_cpus=2), cores=16, gpus=8)
    assert backend["client_resources"] == {"num_cpus": 2, "num_gpus": 1.0}
    assert backend["init_args"]["num_gpus"] == 8 and backend["init_args"]["num_cpus"] == 16


def test_fractional_and_auto_gpu_requests() -> None:
    frac = backend_config(_cfg(device="cuda:0", client_gpus=0.25), cores=4, gpus=1)
    assert frac["client_resources"]["num_gpus"] == 0.25
    assert client_gpu_request(_cfg(device="auto"), gpus=2) == 1.0
    assert client_gpu_request(_cfg(device="auto", client_gpus=0.5), gpus=2) == 0.5


def test_cpu_run_requests_no_gpu_even_on_a_gpu_machine() -> None:
    backend = backend_config(_cfg(device="cpu"), cores=4, gpus=2)
    assert backend["client_resources"]["num_gpus"] == 0.0
    assert backend["init_args"]["num_gpus"] == 2  # Ray still sees what is there
    assert client_gpu_request(_cfg(device="auto"), gpus=0) == 0.0
    assert client_gpu_request(_cfg(device="mps"), gpus=0) == 0.0


def test_bad_gpu_requests_are_clear_errors() -> None:
    with pytest.raises(DeviceError, match="--client_gpus 2: only 1 GPU"):
        client_gpu_request(_cfg(device="cuda", client_gpus=2), gpus=1)
    with pytest.raises(DeviceError, match="--client_gpus 1 needs clients on CUDA.*--device is cpu"):
        client_gpu_request(_cfg(device="cpu", client_gpus=1), gpus=2)
    with pytest.raises(DeviceError, match="no GPU is visible"):
        client_gpu_request(_cfg(device="auto", client_gpus=1), gpus=0)


@NO_CUDA
def test_cuda_run_without_gpu_fails_before_ray_starts(tmp_path: Path) -> None:
    import ray

    from smartfed.fed.simulation import simulate

    with pytest.raises(DeviceError, match="CUDA is not available"):
        backend_config(_cfg(device="cuda"), cores=2, gpus=0)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        simulate(_cfg(device="cuda", output_dir=str(tmp_path / "run")))
    assert not ray.is_initialized()


def test_clients_use_the_gpu_ray_assigns() -> None:
    cfg = _cfg(device="cuda:3")
    assert client_config(cfg, 1.0).model.device == "cuda"
    assert client_config(cfg, 1.0).fed == cfg.fed
    assert client_config(_cfg(device="cuda"), 1.0).model.device == "cuda"
    assert client_config(_cfg(device="cpu"), 0.0).model.device == "cpu"


# --- deploy-local: one GPU per SuperNode ------------------------------------------------------


def test_cuda_supernodes_get_one_gpu_each_round_robin() -> None:
    envs = [supernode_gpu_env("cuda", pid, gpus=2, visible="") for pid in range(3)]
    assert envs == [{"CUDA_VISIBLE_DEVICES": v} for v in ("0", "1", "0")]
    picked = [supernode_gpu_env("auto", pid, gpus=2, visible="4,6") for pid in range(2)]
    assert picked == [{"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "6"}]


def test_supernode_env_unchanged_for_pinned_cpu_or_single_gpu() -> None:
    assert supernode_gpu_env("cuda:1", 0, gpus=4, visible="") == {}
    assert supernode_gpu_env("cpu", 1, gpus=4, visible="") == {}
    assert supernode_gpu_env("cuda", 1, gpus=1, visible="") == {}
    assert supernode_gpu_env("auto", 1, gpus=0, visible="") == {}


def test_help_documents_device_and_memory_flags() -> None:
    import argparse

    from smartfed.cli.config_flags import add_config_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    text = " ".join(parser.format_help().split())
    for flag in (
        "--device",
        "--quantization",
        "--client_gpus",
        "--gradient_checkpointing",
        "--loss_chunk_tokens",
    ):
        assert flag in text
    assert "CUDA if available" in text and "smartfed[quant]" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_model_trains_on_cuda(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    from smartfed.data.example import Example
    from smartfed.data.formatting import collate, encode_for_training
    from smartfed.methods import get_method
    from smartfed.pool.pool import resolve_pool
    from smartfed.train.local import local_train

    model, tok = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), device="cuda"))
    method = get_method("smartfed")
    method.prepare(model, resolve_pool([str(p) for p in tiny_pool]), _cfg(topk_experts=2))
    rows = [encode_for_training(tok, Example(prompt="1+1?", response="2"), 32)] * 4
    params = method.trainable_parameters(model)
    assert all(p.device.type == "cuda" for p in params)
    result = local_train(model, [collate(rows, tok.pad_token_id)], params, RunConfig().train)
    assert result.steps == 1
    assert all(t.device.type == "cpu" for t in method.trainable_state(model).values())
