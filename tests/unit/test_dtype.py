"""``model.dtype = auto``: the resolution table (hardware faked), the default, and that nothing
keyed on the dtype (skill-LoRA hashes, the bundle cache, the packaged pool lookup) sees ``auto``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from smartfed.config import ModelConfig, RunConfig
from smartfed.model import dtype as dtype_mod
from smartfed.model.dtype import DtypeProbe, cpu_native_bf16, resolve_dtype, resolve_model_config


def _probe(cuda: bool = False, cpu: bool = False) -> DtypeProbe:
    return DtypeProbe(cuda_bf16=lambda _dev: cuda, cpu_bf16=lambda: cpu)


def _no_probe() -> DtypeProbe:
    def fail(*_args: object) -> bool:
        raise AssertionError("the hardware was probed for a dtype that was already concrete")

    return DtypeProbe(cuda_bf16=fail, cpu_bf16=fail)


@pytest.mark.parametrize(
    ("device", "probe", "want"),
    [
        (torch.device("cuda", 0), _probe(cuda=True), "bfloat16"),  # Ampere+ / ROCm
        (torch.device("cuda", 0), _probe(cuda=False, cpu=True), "float16"),  # pre-Ampere GPU
        (torch.device("cpu"), _probe(cpu=True), "bfloat16"),  # avx512_bf16 / amx_bf16
        (torch.device("cpu"), _probe(cpu=False, cuda=True), "float32"),  # emulated bf16 (AVX2)
        (torch.device("mps"), _probe(cuda=True, cpu=True), "float32"),
    ],
    ids=["cuda-bf16", "cuda-no-bf16", "cpu-native-bf16", "cpu-emulated-bf16", "mps"],
)
def test_auto_resolution_table(device: torch.device, probe: DtypeProbe, want: str) -> None:
    assert resolve_dtype("auto", device, probe) == want


@pytest.mark.parametrize("concrete", ["bfloat16", "float32", "float16"])
def test_a_concrete_dtype_is_kept_without_probing(concrete: str) -> None:
    assert resolve_dtype(concrete, torch.device("cpu"), _no_probe()) == concrete
    cfg = ModelConfig(dtype=concrete, device="cpu")  # type: ignore[arg-type]
    assert resolve_model_config(cfg, _no_probe()) is cfg


@pytest.mark.parametrize(
    ("caps", "native"),
    [
        ({"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}, False),
        ({"avx2": True, "avx512_f": True, "avx512_bf16": False}, False),  # AVX-512 without BF16
        ({"avx512_f": True, "avx512_bf16": True}, True),
        ({"amx_tile": True, "amx_bf16": True}, True),
        ({"architecture": "arm64", "bf16": True}, False),  # not measured: float32
        ({}, False),
    ],
)
def test_cpu_native_bf16_reads_the_capability_flags(caps: dict[str, object], native: bool) -> None:
    assert cpu_native_bf16(caps) is native


def test_the_default_is_auto_and_resolves_here_for_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ModelConfig().dtype == "auto" and RunConfig().model.dtype == "auto"
    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: False)
    got = resolve_model_config(ModelConfig(device="cpu"))
    assert got.dtype == "float32" and got.device == "cpu"
    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: True)
    assert resolve_model_config(ModelConfig(device="cpu")).dtype == "bfloat16"


def test_quantized_compute_dtype_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    """4-bit NF4 computes in the resolved dtype (``auto`` never reaches the dtype table)."""
    from smartfed.model.base import quantization_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "bitsandbytes" else real(name, *a),
    )
    cuda = torch.device("cuda", 0)
    for native, want in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(dtype_mod, "cuda_native_bf16", lambda _dev, n=native: n)
        q4 = quantization_config(ModelConfig(quantization="4bit"), cuda)
        assert q4.bnb_4bit_compute_dtype == want


def test_recipe_hash_never_sees_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartfed_bench.pools import cpu_mini_recipe, recipe_hash

    recipe = cpu_mini_recipe("cpu_mini.skill.zh")
    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: False)
    auto = ModelConfig(device="cpu")
    assert recipe_hash(auto, recipe) == recipe_hash(ModelConfig(dtype="float32"), recipe)
    assert recipe_hash(auto, recipe) != recipe_hash(ModelConfig(dtype="bfloat16"), recipe)


def test_bundle_cache_key_is_concrete(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartfed.fed.cache import BundleSpec

    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: False)
    spec = BundleSpec.from_config(RunConfig.from_flat({"device": "cpu"}))
    assert spec.model.dtype == "auto"  # the torch-free spec (worker key) as configured
    resolved = spec.resolved()
    assert resolved.model.dtype == "float32" and resolved.resolved() is resolved
    explicit = BundleSpec.from_config(RunConfig.from_flat({"device": "cpu", "dtype": "float32"}))
    assert resolved == explicit  # one cached bundle for auto and the dtype it resolves to


def test_packaged_pool_serves_the_demo_on_a_float32_base(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The shipped LoRAs were trained on the bfloat16 base; the demo and ``cpu-mini:`` entries
    use them when ``auto`` resolves to float32, a fixed-dtype benchmark lookup does not."""
    from smartfed_bench import demo, pools
    from smartfed_bench.packaged import PACKAGED_ROOT, read_manifest

    shipped = read_manifest("cpu-mini")["adapters"]
    assert {e["dtype"] for e in shipped.values()} == {"bfloat16"}
    want = {skill: PACKAGED_ROOT / "cpu-mini" / e["dir"] for skill, e in shipped.items()}

    def no_training(*_args: object, **_kw: object) -> None:
        raise AssertionError("a shipped LoRA was retrained")

    monkeypatch.setattr(pools, "train_skill_lora", no_training)
    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: False)
    auto = ModelConfig(device="cpu", cache_dir=str(tmp_path))
    assert demo.demo_pool(auto, progress=False) == want
    sources = pools.expand_cpu_mini_sources(["cpu-mini:skill.zh", "x"], auto)
    assert sources == [str(want["cpu_mini.skill.zh"]), "x"]
    with pytest.raises(AssertionError, match="retrained"):  # exact dtype asked for: float32
        pools.ensure_cpu_mini_pool(auto, cache_dir=tmp_path, skills=["cpu_mini.skill.zh"])
    other = ModelConfig(model_name_or_path="some/other-model", dtype="float32")
    with pytest.raises(AssertionError, match="retrained"):  # another base model: not served
        pools.ensure_cpu_mini_pool(
            other, cache_dir=tmp_path, skills=["cpu_mini.skill.zh"], shipped_any_dtype=True
        )


@pytest.mark.parametrize(("native", "want"), [(False, torch.float32), (True, torch.bfloat16)])
def test_eval_loads_and_records_the_resolved_dtype(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, native: bool, want: torch.dtype
) -> None:
    from smartfed.eval.models import load_for_eval

    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", lambda caps=None: native)
    model, _, info = load_for_eval(str(tiny_model_dir), dtype="auto", device="cpu")
    assert next(model.parameters()).dtype == want
    assert info["dtype"] == str(want).removeprefix("torch.")
