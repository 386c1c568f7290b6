"""LoraPool bookkeeping and validate_pool against the base model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bad_adapters import copy_adapter, edit_config, retarget
from factories import make_peft_adapter, make_tiny_llama
from smartfed.errors import ConfigError, PoolCompatibilityError
from smartfed.pool.adapter import LoraAdapter
from smartfed.pool.pool import LoraPool, resolve_pool
from smartfed.pool.validate import validate_pool


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def test_heterogeneous_pool_counts_experts_per_matrix(tiny_pool: list[Path], tiny_model) -> None:  # type: ignore[no-untyped-def]
    # Act
    pool = resolve_pool([str(p) for p in tiny_pool])
    # Assert: q = 4 + 8, k = 8, v = 4 + 8 + 2, o = 8, MLP 2 (down_proj 3 by rank_pattern)
    sizes = pool.experts_per_matrix()
    layer0 = {k.rsplit(".", 1)[1]: v for k, v in sizes.items() if ".0." in k}
    assert layer0 == {"q_proj": 12, "k_proj": 8, "v_proj": 14, "o_proj": 8,
                      "gate_proj": 2, "up_proj": 2, "down_proj": 3}
    assert len(sizes) == 14
    assert pool.matrices() == validate_pool(pool, tiny_model)  # model order
    assert list(pool.fingerprint()) == ["a_qv", "b_attn", "c_mlp"]
    assert [i for i, _ in pool.modules_for("model.layers.1.self_attn.v_proj")] == [0, 1, 2]


def test_pool_rejects_empty_and_duplicate_names(tiny_pool: list[Path]) -> None:
    a = LoraAdapter.from_peft_dir(tiny_pool[0])
    with pytest.raises(ConfigError, match="empty"):
        LoraPool(())
    with pytest.raises(PoolCompatibilityError, match="two pool adapters are named 'a_qv'"):
        LoraPool((a, a))


def test_check_topk(tiny_pool: list[Path]) -> None:
    pool = resolve_pool([str(p) for p in tiny_pool])
    assert pool.check_topk(14) == 14
    assert pool.check_topk(15) == 14  # one rule: clamped to M per matrix, with a logged note
    with pytest.raises(ConfigError, match="topk_experts=0: must be >= 1"):
        pool.check_topk(0)


def test_adapter_for_another_hidden_size_names_adapter_matrix_and_shapes(
    tiny_model, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    # Arrange: a LoRA made for a hidden-32 Llama
    other = make_tiny_llama(tmp_path / "h32", hidden=32)
    del other
    adapter = make_peft_adapter(tmp_path / "h32", tmp_path / "small", r=2, alpha=4)
    pool = resolve_pool([str(adapter)])
    # Act / Assert
    with pytest.raises(PoolCompatibilityError) as info:
        validate_pool(pool, tiny_model)
    msg = str(info.value)
    assert "adapter small" in msg and "model.layers.0.self_attn.q_proj" in msg
    assert "(64, 64)" in msg and "(32, 32)" in msg


def test_target_absent_or_not_linear(tiny_pool: list[Path], tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    absent = retarget(copy_adapter(tiny_pool[0], tmp_path / "x"), "q_proj", "qkv_proj")
    with pytest.raises(PoolCompatibilityError, match="absent from the base model.*qkv_proj.*"
                       "target_modules.*LlamaDecoderLayer"):
        validate_pool(resolve_pool([str(absent)]), tiny_model)
    norm = retarget(copy_adapter(tiny_pool[0], tmp_path / "n"), "self_attn.q_proj",
                    "input_layernorm")
    with pytest.raises(PoolCompatibilityError, match="is a LlamaRMSNorm, SmartFed routes only"):
        validate_pool(resolve_pool([str(norm)]), tiny_model)


def test_other_base_model_name_only_warns(tiny_pool: list[Path], tiny_model, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("smartfed"), "propagate", True)  # the CLI turns it off
    renamed = edit_config(copy_adapter(tiny_pool[0], tmp_path / "r"),
                          base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    with caplog.at_level(logging.WARNING, logger="smartfed"):
        validate_pool(resolve_pool([str(renamed)]), tiny_model)
    assert "was made for meta-llama/Llama-2-7b-hf" in caplog.text
