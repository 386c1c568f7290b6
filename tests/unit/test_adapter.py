"""Reading PEFT adapters: key mapping, per-module scaling (vs PEFT itself), hashes, bad files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from bad_adapters import copy_adapter, corrupt, edit_config, edit_tensors, poison, truncate
from smartfed.errors import AdapterFileError, PoolCompatibilityError
from smartfed.pool.adapter import LoraAdapter, pattern_value


def test_reads_modules_keyed_by_base_model_path(tiny_pool: list[Path]) -> None:
    # Act
    a = LoraAdapter.from_peft_dir(tiny_pool[0])
    # Assert: r=4 on q/v of both layers; GQA v is 64 -> 32
    assert a.name == "a_qv" and a.rank == 4 and a.alpha == 8 and not a.use_rslora
    assert sorted(a.modules) == [
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")
    ]
    v = a.modules["model.layers.0.self_attn.v_proj"]
    assert v.A.shape == (4, 64) and v.B.shape == (32, 4)
    assert v.A.dtype == torch.float32 and not v.A.requires_grad
    assert a.sha256 == hashlib.sha256(a.weights_file.read_bytes()).hexdigest()
    assert LoraAdapter.from_peft_dir(tiny_pool[0], name="math").name == "math"


def test_scaling_matches_peft_for_every_module(tiny_pool: list[Path], tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    """rsLoRA, rank_pattern and alpha_pattern give the same per-module scaling as PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Arrange: the pool plus a copy of a_qv with an alpha_pattern on q_proj
    patterned = edit_config(copy_adapter(tiny_pool[0], tmp_path / "alpha"),
                            alpha_pattern={"q_proj": 32})
    for path in [*tiny_pool, patterned]:
        ours = LoraAdapter.from_peft_dir(path)
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path)
        # Act
        theirs = {
            name.removeprefix("base_model.model."): mod.scaling["default"]
            for name, mod in peft.named_modules()
            if isinstance(getattr(mod, "scaling", None), dict) and "default" in mod.scaling
        }
        # Assert
        assert theirs.keys() == ours.modules.keys()
        for name, mod in ours.modules.items():
            assert math.isclose(mod.scaling, theirs[name]), (path.name, name)
    c = LoraAdapter.from_peft_dir(tiny_pool[2])
    assert c.modules["model.layers.0.mlp.down_proj"].rank == 3
    assert c.modules["model.layers.0.mlp.down_proj"].scaling == pytest.approx(4 / 3)
    b = LoraAdapter.from_peft_dir(tiny_pool[1])
    assert b.modules["model.layers.0.self_attn.o_proj"].scaling == pytest.approx(16 / math.sqrt(8))
    assert LoraAdapter.from_peft_dir(patterned).modules[
        "model.layers.0.self_attn.q_proj"].scaling == pytest.approx(8)


def test_pattern_matching_follows_peft() -> None:
    assert pattern_value({"down_proj": 3}, "model.layers.0.mlp.down_proj", 2) == 3
    assert pattern_value({"down_proj": 3}, "model.layers.0.mlp.xdown_proj", 2) == 2
    assert pattern_value({r"layers\.1\.mlp\.down_proj": 5}, "model.layers.1.mlp.down_proj", 2) == 5


def test_bin_weights_load_with_weights_only(tiny_pool: list[Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # Arrange: the same adapter saved the old way
    d = copy_adapter(tiny_pool[0], tmp_path / "bin")
    torch.save(load_file(str(d / "adapter_model.safetensors")), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()
    # Act
    got = LoraAdapter.from_peft_dir(d)
    # Assert
    want = LoraAdapter.from_peft_dir(tiny_pool[0])
    for name, mod in want.modules.items():
        torch.testing.assert_close(got.modules[name].B, mod.B, rtol=0, atol=0)


def test_bin_with_pickled_objects_is_refused(tiny_pool: list[Path], tmp_path: Path) -> None:
    d = copy_adapter(tiny_pool[0], tmp_path / "evil")
    (d / "adapter_model.safetensors").unlink()
    torch.save({"x": Path("/etc/passwd")}, d / "adapter_model.bin")  # not loadable weights-only
    with pytest.raises(AdapterFileError, match="adapter_model.bin is corrupt"):
        LoraAdapter.from_peft_dir(d)


def _missing(tmp: Path, _src: Path) -> Path:
    return tmp / "nope"


def _empty(tmp: Path, _src: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _no_config(tmp: Path, src: Path) -> Path:
    d = copy_adapter(src, tmp / "noconf")
    (d / "adapter_config.json").unlink()
    return d


def _bad_json(tmp: Path, src: Path) -> Path:
    d = copy_adapter(src, tmp / "badjson")
    (d / "adapter_config.json").write_text("{not json")
    return d


def _no_weights(tmp: Path, src: Path) -> Path:
    d = copy_adapter(src, tmp / "noweights")
    (d / "adapter_model.safetensors").unlink()
    return d


def _half_pair(tmp: Path, src: Path) -> Path:
    drop = "layers.1.self_attn.q_proj.lora_B"
    return edit_tensors(copy_adapter(src, tmp / "half"),
                        lambda t: {k: v for k, v in t.items() if drop not in k})


def _extra_tensor(tmp: Path, src: Path) -> Path:
    return edit_tensors(copy_adapter(src, tmp / "mts"),
                        lambda t: {**t, "base_model.model.lm_head.weight": torch.zeros(2, 2)})


def _rank_mismatch(tmp: Path, src: Path) -> Path:
    return edit_config(copy_adapter(src, tmp / "rank"), r=5)


@pytest.mark.parametrize(("make", "error", "pattern"), [
    (_missing, AdapterFileError, "does not exist"),
    (_empty, AdapterFileError, "is empty"),
    (_no_config, AdapterFileError, "adapter_config.json not found"),
    (_bad_json, AdapterFileError, "not valid JSON"),
    (_no_weights, AdapterFileError, "has no adapter_model.safetensors"),
    (lambda t, s: corrupt(copy_adapter(s, t / "c")), AdapterFileError, "corrupt or truncated"),
    (lambda t, s: truncate(copy_adapter(s, t / "t")), AdapterFileError, "corrupt or truncated"),
    (lambda t, s: poison(copy_adapter(s, t / "n")), AdapterFileError, "NaN/Inf"),
    (lambda t, s: poison(copy_adapter(s, t / "i"), float("inf")), AdapterFileError, "NaN/Inf"),
    (_half_pair, AdapterFileError, "has no lora_B"),
    (_extra_tensor, PoolCompatibilityError, "not a LoRA A/B weight"),
    (_rank_mismatch, PoolCompatibilityError, "says r=5"),
    (lambda t, s: edit_config(copy_adapter(s, t / "d"), use_dora=True), PoolCompatibilityError,
     "DoRA"),
    (lambda t, s: edit_config(copy_adapter(s, t / "b"), bias="all"), PoolCompatibilityError,
     "bias='all'"),
    (lambda t, s: edit_config(copy_adapter(s, t / "f"), fan_in_fan_out=True),
     PoolCompatibilityError, "fan_in_fan_out"),
    (lambda t, s: edit_config(copy_adapter(s, t / "p"), peft_type="IA3"), PoolCompatibilityError,
     "peft_type=IA3"),
])
def test_bad_adapters_fail_with_one_line_naming_the_file(
    make, error: type[Exception], pattern: str, tiny_pool: list[Path], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    # Arrange
    path = make(tmp_path, tiny_pool[0])
    # Act / Assert
    with pytest.raises(error, match=pattern) as info:
        LoraAdapter.from_peft_dir(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
