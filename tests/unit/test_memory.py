"""Memory options change memory, not math: activation checkpointing and the chunked LM-head loss
give the same loss and gradients (MoRE routers and every SGD baseline), observers count each token
once, and MoRE under unit routing still equals PEFT with checkpointing on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from factories import load_tiny_base
from smartfed.config import RunConfig, TrainConfig
from smartfed.data.example import Example
from smartfed.data.formatting import collate, encode_for_training
from smartfed.methods import get_method
from smartfed.pool.pool import resolve_pool
from smartfed.train.local import local_train, response_loss
from smartfed.train.memory import activation_checkpointing, chunked_lm_head_loss

SGD_METHODS = (
    "smartfed",
    "smartfed_no_eeqa",
    "fedit",
    "ffa_lora",
    "merge_fedit",
    "pool_fedit",
    "mole",
)


def _batch(tok) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    rows = [
        Example(prompt=f"What is {i} plus {i + 3}?", response=f"The answer is {2 * i + 3}.")
        for i in range(4)
    ]
    return collate([encode_for_training(tok, ex, 48) for ex in rows], tok.pad_token_id)


def _prepared(model_dir: Path, pool: list[Path], method_name: str):  # type: ignore[no-untyped-def]
    model, tok = load_tiny_base(model_dir)
    method = get_method(method_name)
    cfg = RunConfig.from_flat({"topk_experts": 2, "method": method_name})
    method.prepare(model, resolve_pool([str(p) for p in pool]), cfg)
    params = method.trainable_parameters(model)
    with torch.no_grad():  # a non-trivial start (fresh LoRA B is 0, routers near-uniform)
        gen = torch.Generator().manual_seed(1)
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model, tok, params


def _loss_and_grads(model, params, batch, ckpt: bool, chunk: int):  # type: ignore[no-untyped-def]
    for p in params:
        p.grad = None
    with activation_checkpointing(model, ckpt) as active:
        assert active == ckpt
        loss = response_loss(model, batch, chunk)
        loss.backward()
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return loss.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_loss_matches_plain_cross_entropy(dtype: torch.dtype, chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(16, 50, bias=False).to(dtype)
    hidden = torch.randn(9, 16, generator=gen).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 50, (9,), generator=gen)
    ref_h = hidden.detach().clone().requires_grad_(True)

    got = chunked_lm_head_loss(hidden, head, targets, chunk)
    (got * 2.5).backward()
    want = nn.functional.cross_entropy(head(ref_h).float(), targets)
    (want * 2.5).backward()

    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 2e-2}
    torch.testing.assert_close(hidden.grad, ref_h.grad, **tol)


def test_chunked_loss_trains_a_head_weight_like_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    head, ref = nn.Linear(8, 30, bias=False), nn.Linear(8, 30, bias=False)
    ref.load_state_dict(head.state_dict())
    hidden = torch.randn(11, 8, generator=gen)
    targets = torch.randint(0, 30, (11,), generator=gen)
    chunked_lm_head_loss(hidden, head, targets, 4).backward()
    nn.functional.cross_entropy(ref(hidden).float(), targets).backward()
    torch.testing.assert_close(head.weight.grad, ref.weight.grad)


def test_chunked_loss_without_positions_is_nan_and_no_grad_path_works() -> None:
    head = nn.Linear(8, 30, bias=False)
    assert torch.isnan(chunked_lm_head_loss(torch.zeros(0, 8), head, torch.zeros(0).long(), 4))
    with torch.no_grad():
        h, t = torch.randn(5, 8), torch.tensor([1, 2, 3, 4, 5])
        want = nn.functional.cross_entropy(head(h), t)
        torch.testing.assert_close(chunked_lm_head_loss(h, head, t, 2), want)


def test_response_loss_chunked_equals_hf_loss(tiny_model_dir: Path) -> None:
    model, tok = load_tiny_base(tiny_model_dir)
    batch = _batch(tok)
    with torch.no_grad():
        want = model(**batch).loss
        for chunk in (0, 5, 4096):
            torch.testing.assert_close(response_loss(model, batch, chunk), want)


@pytest.mark.parametrize("method_name", SGD_METHODS)
def test_memory_options_keep_loss_and_gradients(
    method_name: str, tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    model, tok, params = _prepared(tiny_model_dir, tiny_pool, method_name)
    batch = _batch(tok)
    loss0, grads0 = _loss_and_grads(model, params, batch, ckpt=False, chunk=0)
    loss1, grads1 = _loss_and_grads(model, params, batch, ckpt=True, chunk=5)
    torch.testing.assert_close(loss1, loss0)
    assert len(grads0) == len(params) > 0
    for g0, g1 in zip(grads0, grads1, strict=True):
        assert (g0 is None) == (g1 is None)  # e.g. MoLE's placeholder gate of a one-LoRA matrix
        if g0 is not None:
            torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-4)
    # the trainable tensors get their gradients through the recomputed layers
    got = [g for g in grads1 if g is not None]
    assert got and all(float(g.abs().sum()) > 0 for g in got)


def test_checkpointing_recomputes_and_restores_the_model(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    from smartfed.model.state import more_layers

    model, tok, params = _prepared(tiny_model_dir, tiny_pool, "smartfed")
    layer = next(iter(more_layers(model).values()))
    calls: list[int] = []
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    batch = _batch(tok)
    flags = [m.training for m in model.modules()]
    _loss_and_grads(model, params, batch, ckpt=False, chunk=0)
    plain = len(calls)
    calls.clear()
    _loss_and_grads(model, params, batch, ckpt=True, chunk=0)
    handle.remove()
    assert plain == 1 and len(calls) == 2  # forward + recompute in backward
    assert [m.training for m in model.modules()] == flags  # training flags restored
    decoder_layers = model.get_decoder().layers
    assert not any(getattr(m, "gradient_checkpointing", False) for m in decoder_layers)


def test_observers_count_each_token_once_with_checkpointing(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    from smartfed.quota.importance import ImportanceTracker

    model, tok, params = _prepared(tiny_model_dir, tiny_pool, "smartfed")
    batch = _batch(tok)
    seen = {}
    for ckpt in (False, True):
        with ImportanceTracker(model) as tracker:
            tracker.set_token_mask(batch["attention_mask"])
            _loss_and_grads(model, params, batch, ckpt=ckpt, chunk=0)
            seen[ckpt] = (tracker.tokens(), tracker.scores(), tracker.usage())
    assert seen[True][0] == seen[False][0]
    assert set(seen[True][0].values()) == {int(batch["attention_mask"].sum())}
    assert seen[True][2] == seen[False][2]
    for name, scores in seen[False][1].items():
        torch.testing.assert_close(torch.tensor(seen[True][1][name]), torch.tensor(scores))


def test_local_train_identical_with_memory_options(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    states, losses = [], []
    for ckpt, chunk in ((False, 0), (True, 3)):
        model, tok, params = _prepared(tiny_model_dir, tiny_pool, "smartfed")
        batch = _batch(tok)
        cfg = TrainConfig(learning_rate=1e-2, gradient_checkpointing=ckpt, loss_chunk_tokens=chunk)
        result = local_train(model, [batch, batch, batch], params, cfg, total=3)
        losses.append(result.losses)
        states.append(get_method("smartfed").trainable_state(model))
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]))
    for k, v in states[0].items():
        torch.testing.assert_close(
            states[1][k], v, atol=1e-5, rtol=1e-4
        )  # AdamW-amplified rounding


def _embedding_scale(model: nn.Module) -> nn.Parameter:
    """A trainable scalar times the embedding output: backward then crosses every layer."""
    scale = nn.Parameter(torch.ones(()))
    model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out * scale)
    return scale


def test_more_unit_routing_equals_peft_with_checkpointing(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    from peft import PeftModel

    from smartfed.model.inject import inject_more
    from smartfed.model.verify import unit_routing

    config = RunConfig.from_flat({"topk_experts": 1}).router
    batch = None
    for i, adapter_dir in enumerate(tiny_pool):
        peft_base, tok = load_tiny_base(tiny_model_dir)
        batch = _batch(tok) if batch is None else batch
        peft = PeftModel.from_pretrained(peft_base, str(adapter_dir)).eval()
        peft.requires_grad_(False)
        more, _ = load_tiny_base(tiny_model_dir)
        inject_more(more, resolve_pool([str(p) for p in tiny_pool]), config, seed=0)
        results = []
        for model in (peft, more):
            scale = _embedding_scale(model)
            with activation_checkpointing(model) as active, unit_routing(more, i):
                assert active
                loss = response_loss(model, batch, 4)
                loss.backward()
            results.append((loss.detach(), scale.grad.detach()))
        torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)
