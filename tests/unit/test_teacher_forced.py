"""Teacher-forced exact match equals greedy generation's exact match, and its loss is the response
loss of training, on the tiny random Llama (mixed lengths in one right-padded batch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factories import load_tiny
from smartfed.data.formatting import IGNORE_INDEX, EncodedExample, collate, render_prompt
from smartfed.eval.teacher_forced import teacher_forced_eval
from smartfed.train.local import response_loss

PROMPTS = ["Janet has 16 eggs.", "小明有3个苹果", "Write the number", "Question: 2 + 2 = ?", "ab"]
NEW = 6


def _greedy(model, tok, prompt_ids: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    out = model.generate(
        input_ids=torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return out[0, len(prompt_ids) :].tolist()


def _row(prompt_ids: list[int], target: list[int]) -> EncodedExample:
    return EncodedExample(prompt_ids + target, [IGNORE_INDEX] * len(prompt_ids) + target)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_teacher_forced_em_equals_greedy_em(tiny_model_dir: Path, batch_size: int) -> None:
    model, tok = load_tiny(tiny_model_dir)
    rows, expected = [], []
    for i, prompt in enumerate(PROMPTS):
        ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        greedy = _greedy(model, tok, ids, NEW)
        wrong = (greedy[i % NEW] + 1) % len(tok)
        targets = [
            greedy[: 2 + i % 4],  # a prefix of the greedy output: exact
            greedy,  # the whole greedy output: exact
            greedy[: i % NEW] + [wrong] + greedy[i % NEW + 1 :],  # one token off: not exact
            greedy[:3] + [tok.eos_token_id],  # ends with EOS: exact only if greedy emits it there
        ]
        for t in targets:
            rows.append(_row(ids, t))
            expected.append(greedy[: len(t)] == t)  # greedy generation's exact match, by token
    assert any(expected) and not all(expected)
    got = teacher_forced_eval(model, rows, batch_size, tok.pad_token_id)
    assert got.exact == expected
    assert got.tokens == sum(len(r.input_ids) - r.labels.count(IGNORE_INDEX) for r in rows)


def test_teacher_forced_loss_is_the_response_loss(tiny_model_dir: Path) -> None:
    model, tok = load_tiny(tiny_model_dir)
    rows = []
    for prompt in PROMPTS:
        ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        rows.append(_row(ids, tok(prompt[::-1], add_special_tokens=False)["input_ids"]))
    got = teacher_forced_eval(model, rows, 2, tok.pad_token_id)
    with torch.no_grad():
        ref = float(response_loss(model, collate(rows, tok.pad_token_id)))
    assert got.loss == pytest.approx(ref, rel=1e-5)
    assert got.em == 0.0 and len(got.exact) == len(rows)


def test_empty_rows() -> None:
    model = torch.nn.Linear(1, 1)
    got = teacher_forced_eval(model, [], 4, 0)  # type: ignore[arg-type]
    assert got.exact == [] and got.tokens == 0


def test_val_examples_on_a_task_without_val_rows_fails_at_round_1() -> None:
    from smartfed.config import EvalConfig
    from smartfed.errors import ConfigError
    from smartfed.eval.teacher_forced import round_metrics

    cfg = EvalConfig(val_examples=5)
    with pytest.raises(ConfigError, match="val_examples"):
        round_metrics(None, None, cfg, "gsm8k", None, final=False, rnd=1, cache={})  # type: ignore[arg-type]
