"""inject_more on whole HF causal LMs: exactness vs PEFT, what is trainable, the report, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bad_adapters import copy_adapter, retarget
from factories import load_tiny, make_peft_adapter, make_tokenizer
from smartfed.config import RouterConfig
from smartfed.errors import PoolCompatibilityError
from smartfed.model.inject import inject_more
from smartfed.model.state import more_layers
from smartfed.model.verify import verify_pool
from smartfed.pool.pool import resolve_pool
from smartfed.routing.layer import MoRELinear


def test_unit_routing_reproduces_peft_logits_for_every_adapter(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    # Arrange
    model = load_tiny(tiny_model_dir)[0]
    tok = make_tokenizer()
    # Act
    checks = verify_pool(model, tok, pool)
    # Assert: every adapter of the heterogeneous pool, through the whole model's logits
    assert [c.name for c in checks] == ["a_qv", "b_attn", "c_mlp"]
    for c in checks:
        assert c.passed and c.max_rel_error < 1e-5, c
        assert c.effect > 0.1, c  # the adapters really change the logits: the check can fail


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_qwen_and_mistral_naming(arch: str, tmp_path: Path) -> None:
    import transformers

    # Arrange: a tiny random model of that family (Qwen2 q/k/v carry biases) and two adapters
    cfg_cls, model_cls = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, vocab_size=512)
    model_cls(cfg).save_pretrained(tmp_path / "m")
    tok = make_tokenizer(tmp_path / "m")
    adapters = [
        make_peft_adapter(tmp_path / "m", tmp_path / "x", r=4, alpha=8, seed=1),
        make_peft_adapter(tmp_path / "m", tmp_path / "y", r=2, alpha=2, seed=2,
                          targets=("k_proj", "o_proj", "down_proj")),
    ]
    # Act
    model = load_tiny(tmp_path / "m")[0]
    checks = verify_pool(model, tok, resolve_pool([str(a) for a in adapters]))
    # Assert
    assert all(c.passed and c.effect > 0.01 for c in checks), checks


def test_report_and_clamped_quotas(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    model = load_tiny(tiny_model_dir)[0]
    cfg = RouterConfig(topk_experts=8, output_scale_mode="rank")  # c = mean source rank
    report = inject_more(model, pool, cfg, seed=0)
    assert report.replaced == pool.matrices() == list(more_layers(model))
    assert report.experts_per_matrix == pool.experts_per_matrix()
    assert report.quotas["model.layers.0.self_attn.q_proj"] == 8
    assert report.quotas["model.layers.0.mlp.down_proj"] == 3  # M = 3 < 8: all experts
    assert sorted(report.clamped) == sorted(m for m in pool.matrices() if "mlp" in m)
    d_in = {m: 128 if "down_proj" in m else 64 for m in pool.matrices()}
    want = sum(report.experts_per_matrix[m] * d_in[m] for m in pool.matrices())
    assert report.router_params == want == 6656
    assert report.router_bytes_fp32 == 4 * want and report.router_bytes_bf16 == 2 * want
    assert report.output_scales["model.layers.0.self_attn.q_proj"] == 6.0  # mean of r=4 and r=8
    assert isinstance(model.get_submodule("model.layers.1.mlp.up_proj"), MoRELinear)


def test_only_router_parameters_train_and_change(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    # Arrange
    model = load_tiny(tiny_model_dir)[0]
    inject_more(model, pool, RouterConfig(topk_experts=4, router_init_std=0.1), seed=0)
    before = {n: t.detach().clone() for n, t in model.state_dict(keep_vars=False).items()}
    banks = {n: layer.bank.A.clone() for n, layer in more_layers(model).items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".router.weight") for n in trainable)
    assert len(trainable) == 14
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 400, (2, 9))
    # Act
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    # Assert
    after = model.state_dict()
    for name, t in before.items():
        changed = not torch.equal(t, after[name])
        assert changed == name.endswith(".router.weight"), name
    for n, layer in more_layers(model).items():
        assert torch.equal(banks[n], layer.bank.A)


def test_seeded_routers_and_bf16_model(tiny_model_dir: Path, pool) -> None:  # type: ignore[no-untyped-def]
    a, b = load_tiny(tiny_model_dir)[0], load_tiny(tiny_model_dir)[0]
    c = load_tiny(tiny_model_dir, torch.bfloat16)[0]
    inject_more(a, pool, RouterConfig(topk_experts=4), seed=3)
    inject_more(b, pool, RouterConfig(topk_experts=4), seed=3)
    inject_more(c, pool, RouterConfig(topk_experts=4), seed=4)
    for (n, la), lb, lc in zip(more_layers(a).items(), more_layers(b).values(),
                               more_layers(c).values(), strict=True):
        assert torch.equal(la.router.weight, lb.router.weight), n
        assert not torch.equal(la.router.weight, lc.router.weight.float()), n
        assert lc.bank.A.dtype == torch.bfloat16 and lc.router.weight.dtype == torch.float32
    ids = torch.randint(0, 400, (2, 9))
    logits = c(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_impossible_topk_and_absent_targets(tiny_model_dir: Path, tiny_pool: list[Path], pool,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    model = load_tiny(tiny_model_dir)[0]
    dense = inject_more(copy.deepcopy(model), pool, RouterConfig(topk_experts=15))  # clamped
    assert dense.quotas == dense.experts_per_matrix and dense.clamped == dense.replaced
    absent = retarget(copy_adapter(tiny_pool[0], tmp_path / "x"), "v_proj", "c_attn")
    with pytest.raises(PoolCompatibilityError, match=r"target_modules=\['q_proj', 'v_proj'\]"):
        inject_more(model, resolve_pool([str(absent)]), RouterConfig(topk_experts=1))
    assert not more_layers(model)  # nothing was half-injected
