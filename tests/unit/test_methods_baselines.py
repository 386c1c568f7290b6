"""Baseline methods: what each sends, and that every pool start equals PEFT's own merge of the
pool.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factories import load_tiny_base
from smartfed.config import RunConfig
from smartfed.errors import CheckpointError
from smartfed.methods import get_method
from smartfed.pool.pool import resolve_pool

CFG = RunConfig.from_flat({"topk_experts": 2, "seed": 3})
IDS = torch.tensor([[1, 5, 9, 20, 33, 41, 7, 2], [3, 3, 8, 60, 12, 4, 5, 6]])


def _prepared(name: str, model_dir: Path, pool_dirs: list[Path]):  # type: ignore[no-untyped-def]
    model, method = load_tiny_base(model_dir)[0], get_method(name)
    method.prepare(model, resolve_pool([str(p) for p in pool_dirs]), CFG)
    return model, method


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


@torch.no_grad()
def _peft_reference(
    model_dir: Path, pool_dirs: list[Path], weights: list[float] | None = None
) -> torch.Tensor:
    """Logits of W0 + sum_n w_n delta_W_n, every delta_W_n computed by PEFT (get_delta_weight).

    ``weights=None``: per matrix, 1 / (number of pool adapters that target it).
    """
    from peft import PeftModel

    ref = load_tiny_base(model_dir)[0]
    deltas: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for n, adapter in enumerate(pool_dirs):
        peft = PeftModel.from_pretrained(load_tiny_base(model_dir)[0], str(adapter))
        for name, mod in peft.base_model.model.named_modules():
            if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
                deltas.setdefault(name, []).append((n, mod.get_delta_weight("default")))
    for name, parts in deltas.items():
        for n, delta in parts:
            ref.get_submodule(name).weight += (weights[n] if weights else 1 / len(parts)) * delta
    return _logits(ref)


def test_fedit_sends_a_and_b_and_starts_at_the_base_model(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, method = _prepared("fedit", tiny_model_dir, tiny_pool)
    state = method.trainable_state(model)
    pool = resolve_pool([str(p) for p in tiny_pool])
    assert {k.rsplit(".lora_", 1)[0] for k in state} == set(pool.matrices())
    assert {v.shape[0] for k, v in state.items() if ".lora_A." in k} == {8}  # r_max of the pool
    assert all(float(v.abs().sum()) == 0 for k, v in state.items() if ".lora_B." in k)  # PEFT init
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if ".lora_A." in k)
    torch.testing.assert_close(_logits(model), _logits(load_tiny_base(tiny_model_dir)[0]))
    params = method.trainable_parameters(model)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
    assert sum(p.numel() for p in params) == sum(v.numel() for v in state.values())


def test_fedit_init_is_seeded(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    a = get_method("fedit").trainable_state(_prepared("fedit", tiny_model_dir, tiny_pool)[0])
    b = get_method("fedit").trainable_state(_prepared("fedit", tiny_model_dir, tiny_pool)[0])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ffa_lora_sends_and_trains_only_b(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    model, method = _prepared("ffa_lora", tiny_model_dir, tiny_pool)
    state = method.trainable_state(model)
    assert state and all(k.endswith(".lora_B.weight") for k in state)
    params = method.trainable_parameters(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_B." in n for n in trainable) and len(trainable) == len(params)


@pytest.mark.parametrize(
    ("name", "mean"), [("pool_fedit", False), ("merge_fedit", True), ("merge", True)]
)
def test_pool_starts_reproduce_peft_sum_or_mean(
    name: str, mean: bool, tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, method = _prepared(name, tiny_model_dir, tiny_pool)
    w = 1 / len(tiny_pool) if mean else 1.0
    ref = _peft_reference(tiny_model_dir, tiny_pool, [w] * len(tiny_pool))
    torch.testing.assert_close(_logits(model), ref, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(
        ref, _logits(load_tiny_base(tiny_model_dir)[0]), atol=1e-3
    )  # the pool matters
    if name == "merge":
        assert method.trainable_state(model) == {} and method.trainable_parameters(model) == []


def test_pool_fedit_rank_is_the_sum_of_the_pool_ranks(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, method = _prepared("pool_fedit", tiny_model_dir, tiny_pool)
    state = method.trainable_state(model)
    assert state["model.layers.0.self_attn.v_proj.lora_A.weight"].shape[0] == 4 + 8 + 2
    assert state["model.layers.0.mlp.down_proj.lora_A.weight"].shape[0] == 3
    with pytest.raises(CheckpointError):
        method.load_trainable_state(model, {"x.lora_A.weight": torch.zeros(1)})


def test_lorahub_weights_are_exact(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    model, method = _prepared("lorahub", tiny_model_dir, tiny_pool)
    torch.testing.assert_close(
        _logits(model), _logits(load_tiny_base(tiny_model_dir)[0])
    )  # w = 0 [P]
    weights = torch.tensor([0.7, -0.3, 1.2])
    state = method.trainable_state(model)
    method.load_trainable_state(model, {**state, "weights": weights})
    ref = _peft_reference(tiny_model_dir, tiny_pool, weights.tolist())
    torch.testing.assert_close(_logits(model), ref, atol=2e-5, rtol=1e-4)


def test_mole_gates_whole_loras_and_starts_at_the_mean_merge(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    from smartfed.model.state import more_layers

    model, method = _prepared("mole", tiny_model_dir, tiny_pool)
    state = method.trainable_state(model)
    v = "model.layers.0.self_attn.v_proj"
    assert state[v + ".router.weight"].shape == (3, 3 * 32)  # 3 LoRAs, gate on their outputs
    assert state["model.layers.0.self_attn.k_proj.router.weight"].shape == (1, 1)  # 1 LoRA
    layer = more_layers(model)[v]
    with torch.no_grad():
        state[v + ".router.weight"].normal_()
    method.load_trainable_state(model, state)
    routing = layer.route(torch.randn(5, 64))
    gates = routing.weights[0]
    groups = layer.bank.adapter_index
    for g in groups.unique():  # every expert of one LoRA shares its LoRA's gate
        assert torch.allclose(
            gates[groups == g], gates[groups == g][0].expand(int((groups == g).sum()))
        )
    # zero gates = uniform over the LoRAs of each matrix, c = 1: the per-matrix mean merge
    method.load_trainable_state(model, {k: torch.zeros_like(t) for k, t in state.items()})
    torch.testing.assert_close(
        _logits(model), _peft_reference(tiny_model_dir, tiny_pool), atol=2e-5, rtol=1e-4
    )
