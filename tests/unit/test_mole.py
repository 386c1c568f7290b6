"""MoLE (Wu et al., ICLR 2024): gates over the LoRAs' outputs, learnable temperature, balancing
loss; only the gates train and travel; a one-hot gate is exactly one LoRA (PEFT)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from factories import load_tiny_base
from smartfed.config import RunConfig, TrainConfig
from smartfed.errors import CheckpointError, ConfigError
from smartfed.methods import get_method
from smartfed.methods.mole import balancing_loss, mole_gates, set_lora_mask
from smartfed.model.state import more_layers
from smartfed.pool.pool import resolve_pool
from smartfed.train.local import local_train

IDS = torch.tensor([[1, 5, 9, 20, 33, 41, 7, 2], [3, 3, 8, 60, 12, 4, 5, 6]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]])
BATCH = {"input_ids": IDS, "attention_mask": MASK, "labels": IDS.masked_fill(MASK == 0, -100)}
V = "model.layers.0.self_attn.v_proj"  # targeted by all three tiny-pool LoRAs (d_out 32)


def _mole(model_dir: Path, pool_dirs: list[Path], **flat: object):  # type: ignore[no-untyped-def]
    cfg = RunConfig.from_flat({"seed": 3, **flat})
    model, method = load_tiny_base(model_dir)[0], get_method("mole")
    method.prepare(model, resolve_pool([str(p) for p in pool_dirs]), cfg)
    return model, method


def _randomize(model: torch.nn.Module, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for gate in mole_gates(model).values():
            if gate.num_loras > 1:
                gate.weight.copy_(torch.randn(gate.weight.shape, generator=gen) * scale)


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


def test_only_gates_train_and_travel(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    model, method = _mole(tiny_model_dir, tiny_pool)
    state = method.trainable_state(model)
    assert state[V + ".router.weight"].shape == (3, 3 * 32)  # e: (N, N * d_out)
    assert state[V + ".router.log_temperature"].shape == (1,)
    # k_proj is adapted by one LoRA only: a constant gate, a (1, 1) placeholder on the wire
    k = "model.layers.0.self_attn.k_proj.router."
    assert [(n, v.shape) for n, v in state.items() if n.startswith(k)] == [(k + "weight", (1, 1))]
    params = method.trainable_parameters(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}
    assert sum(p.numel() for p in params) == sum(v.numel() for v in state.values())
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".router." not in k}
    banks = {n: layer.bank.B.clone() for n, layer in more_layers(model).items()}
    cfg = TrainConfig(learning_rate=0.05)
    result = local_train(
        model, [BATCH] * 3, params, cfg, aux_loss=lambda b: method.auxiliary_loss(model, b)
    )
    assert result.steps == 3
    after = method.trainable_state(model)
    assert any(not torch.equal(after[k], state[k]) for k in state)  # the gates moved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert all(torch.equal(b, more_layers(model)[n].bank.B) for n, b in banks.items())
    with pytest.raises(CheckpointError):
        method.load_trainable_state(model, {V + ".router.weight": torch.zeros(3, 96)})


def test_one_hot_gate_is_exactly_one_peft_lora(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    from peft import PeftModel

    model, _ = _mole(tiny_model_dir, tiny_pool)
    _randomize(model, 1.0)  # strongly non-uniform gates: the mask alone must make them one-hot
    for n, adapter in enumerate(tiny_pool):
        set_lora_mask(model, [n])
        ref = PeftModel.from_pretrained(load_tiny_base(tiny_model_dir)[0], str(adapter))
        torch.testing.assert_close(_logits(model), _logits(ref), atol=2e-5, rtol=1e-4)
    set_lora_mask(model, None)
    assert not torch.allclose(_logits(model), _logits(ref), atol=1e-3)


def test_zero_gates_start_at_the_mean_merge_and_gates_depend_on_lora_outputs(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, _ = _mole(tiny_model_dir, tiny_pool)
    gate = mole_gates(model)[V]
    x = torch.randn(4, 5, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gate.probs(x), torch.full((4, 5, 3), 1 / 3))  # e = 0: uniform
    _randomize(model, 1.0)
    assert not torch.allclose(gate.probs(x), torch.full((4, 5, 3), 1 / 3), atol=1e-3)
    routing = gate(x, 1)  # every expert gets its LoRA's gate
    torch.testing.assert_close(routing.weights, gate.probs(x)[..., gate.groups])
    with torch.no_grad():
        gate.bank.B.zero_()  # no LoRA output -> nothing to gate on: uniform whatever e (x ignored)
    torch.testing.assert_close(gate.probs(x), torch.full((4, 5, 3), 1 / 3))


def test_gate_is_softmax_of_normalised_outputs_over_a_learnable_temperature(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, _ = _mole(tiny_model_dir, tiny_pool, mole_temperature=2.5)
    gate = mole_gates(model)[V]
    assert float(gate.log_temperature.detach().exp()) == pytest.approx(2.5)
    _randomize(model, 0.3)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(2))
    outs = gate.lora_outputs(x)  # (6, 3, 32): E_n = s_n B_n A_n x
    bank = gate.bank
    for n, (i, j) in enumerate(gate.spans):
        expect = x @ bank.A[i:j].T * bank.scaling[i:j] @ bank.B[:, i:j].T
        torch.testing.assert_close(outs[:, n], expect)
    eps = (outs - outs.mean(-1, keepdim=True)) / torch.sqrt(
        outs.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    logits = eps.flatten(-2) @ gate.weight.T
    for tau in (0.05, 1.0, 2.5, 40.0):
        with torch.no_grad():
            gate.log_temperature.fill_(math.log(tau))
        torch.testing.assert_close(gate.probs(x), torch.softmax(logits / tau, -1))
    with torch.no_grad():
        gate.log_temperature.fill_(math.log(1e-4))  # cold: one-hot on the argmax
    assert torch.equal(gate.probs(x).argmax(-1), logits.argmax(-1))
    assert float(gate.probs(x).detach().max(-1).values.min()) > 0.999
    with torch.no_grad():
        gate.log_temperature.zero_()
    gate.probs(x)[:, 0].sum().backward()  # tau is learned
    assert gate.log_temperature.grad is not None and float(gate.log_temperature.grad.abs()) > 0


def test_balancing_loss_is_minus_sum_log_mean_gate_and_pushes_to_balance(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    # a_qv + b_attn: every gate (q_proj, v_proj) holds both LoRAs, so balance = uniform gates
    model, method = _mole(tiny_model_dir, tiny_pool[:2], mole_balance_coef=0.5)
    params = method.trainable_parameters(model)
    model(input_ids=IDS, attention_mask=MASK)  # uniform gates: q_n = 1/N_m in every gate
    uniform = balancing_loss(model, MASK)
    gates = mole_gates(model)
    expect = {}  # pool LoRA -> its gate in every matrix that holds it
    for g in gates.values():
        for n in g.pool_index.tolist():
            if g.num_loras > 1:  # a single-LoRA matrix has no gating function
                expect.setdefault(n, []).append(1 / g.num_loras)
    ref = -sum(math.log(sum(v) / len(v)) for v in expect.values())
    assert float(uniform.detach()) == pytest.approx(ref, rel=1e-5)
    assert ref == pytest.approx(2 * math.log(2))  # the minimum, N log N
    _randomize(model, 1.0)
    model(input_ids=IDS, attention_mask=MASK)
    real = MASK.reshape(-1).bool()
    per_lora: dict[int, list[torch.Tensor]] = {}
    for g in gates.values():
        if g.last_probs is None:  # single-LoRA matrix
            continue
        q = g.last_probs.reshape(-1, g.num_loras)[real].mean(0)  # padding tokens left out
        for j, n in enumerate(g.pool_index.tolist()):
            per_lora.setdefault(n, []).append(q[j])
    manual = -sum(torch.log(torch.stack(v).mean()) for v in per_lora.values())
    aux = method.auxiliary_loss(model, BATCH)
    torch.testing.assert_close(aux, 0.5 * manual)
    assert all(g.last_probs is None for g in gates.values())  # consumed
    assert float(manual) > float(uniform)  # unbalanced gates cost more than balanced ones
    opt = torch.optim.SGD(params, lr=0.5)
    before = float(aux)
    for _ in range(5):  # the balancing loss alone drives the gates back towards balance
        model(input_ids=IDS, attention_mask=MASK)
        opt.zero_grad()
        method.auxiliary_loss(model, BATCH).backward()
        opt.step()
    model(input_ids=IDS, attention_mask=MASK)
    assert float(method.auxiliary_loss(model, BATCH)) < before


def test_mole_refuses_projected_routers(tiny_model_dir: Path, tiny_pool: list[Path]) -> None:
    with pytest.raises(ConfigError, match="router_proj_dim"):
        _mole(tiny_model_dir, tiny_pool, router_proj_dim=8)


def test_balancing_loss_moves_the_gates_but_not_the_reported_loss(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    runs = {}
    for coef in (0.0, 5.0):
        model, method = _mole(tiny_model_dir, tiny_pool, mole_balance_coef=coef)
        _randomize(model, 0.3)
        params = method.trainable_parameters(model)
        aux = lambda b, model=model, method=method: method.auxiliary_loss(model, b)  # noqa: E731
        result = local_train(
            model, [BATCH] * 2, params, TrainConfig(learning_rate=0.05), aux_loss=aux
        )
        runs[coef] = (result.losses, method.trainable_state(model))
    assert runs[0.0][0][0] == pytest.approx(runs[5.0][0][0])  # step 1: same response loss reported
    assert not torch.equal(runs[0.0][1][V + ".router.weight"], runs[5.0][1][V + ".router.weight"])


def test_gate_update_is_the_same_with_activation_checkpointing(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    states = []
    for ckpt in (False, True):  # the gates read last_probs from the first forward; recompute
        model, method = _mole(tiny_model_dir, tiny_pool, mole_balance_coef=1.0)
        _randomize(model, 0.3)
        params = method.trainable_parameters(model)
        aux = lambda b, model=model, method=method: method.auxiliary_loss(model, b)  # noqa: E731
        cfg = TrainConfig(learning_rate=0.05, gradient_checkpointing=ckpt)
        local_train(model, [BATCH] * 2, params, cfg, aux_loss=aux)
        states.append(method.trainable_state(model))
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, atol=1e-6, rtol=1e-5)
