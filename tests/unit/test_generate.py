"""Batched greedy generation: same text as one-by-one, input order, stop strings, MoRE models."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import load_tiny
from smartfed.eval.generate import generate, truncate_at_stop

PROMPTS = ["Janet has 16 eggs.", "小明有3个苹果", "Write the number", "Question: 2 + 2 = ?"]


def test_truncate_at_stop() -> None:
    assert truncate_at_stop("a\nQuestion: b", ["\nQuestion:"]) == "a"
    assert truncate_at_stop("abc", ["x", "c", "b"]) == "a"
    assert truncate_at_stop("abc", []) == "abc" and truncate_at_stop("abc", [""]) == "abc"


def test_batched_equals_one_by_one_and_keeps_order(tiny_model_dir: Path) -> None:
    model, tok = load_tiny(tiny_model_dir)
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    single = [
        generate(model, tok, [p], max_new_tokens=6, batch_size=1, progress=False)[0]
        for p in PROMPTS
    ]
    assert batched == single and len(batched) == len(PROMPTS)


def test_max_new_tokens_and_stop(tiny_model_dir: Path) -> None:
    model, tok = load_tiny(tiny_model_dir)
    outs = generate(model, tok, PROMPTS[:2], max_new_tokens=5, batch_size=2, progress=False)
    for out in outs:
        assert len(tok(out, add_special_tokens=False)["input_ids"]) <= 6
    first = outs[0]
    assert len(first) >= 2, first  # a random model still emits 5 tokens
    stop = first[1:3]
    cut = generate(model, tok, PROMPTS[:1], max_new_tokens=5, stop=[stop], progress=False)[0]
    assert cut == first[: first.index(stop)]


def test_stop_strings_match_only_generated_text(tiny_model_dir: Path) -> None:
    """The chat prompt ends with a newline: a stop string made of the prompt's last character plus
    the first generated one must not end generation (HF's stop_strings did)."""
    from smartfed.data.formatting import render_prompt

    model, tok = load_tiny(tiny_model_dir)
    full = generate(model, tok, PROMPTS[:1], max_new_tokens=5, progress=False)[0]
    tail = render_prompt(tok, PROMPTS[0])[-1]
    straddling = tail + full[:1]
    assume_new = straddling not in full
    out = generate(model, tok, PROMPTS[:1], max_new_tokens=5, stop=[straddling], progress=False)[0]
    if assume_new:
        assert out == full
    else:
        assert out == full[: full.index(straddling)]


def test_padding_side_is_restored(tiny_model_dir: Path) -> None:
    model, tok = load_tiny(tiny_model_dir)
    tok.padding_side = "right"
    generate(model, tok, PROMPTS[:2], max_new_tokens=2, progress=False)
    assert tok.padding_side == "right"


def test_more_model_generates_through_the_same_path(
    tiny_model_dir: Path, tiny_pool: list[Path]
) -> None:
    from smartfed.config import RouterConfig
    from smartfed.model.inject import inject_more
    from smartfed.pool.pool import resolve_pool

    model, tok = load_tiny(tiny_model_dir)
    base_out = generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=4, progress=False)
    inject_more(
        model, resolve_pool([str(p) for p in tiny_pool]), RouterConfig(topk_experts=2), seed=0
    )
    batched = generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=4, progress=False)
    single = [
        generate(model, tok, [p], max_new_tokens=4, batch_size=1, progress=False)[0]
        for p in PROMPTS
    ]
    assert batched == single and len(batched) == len(base_out)


@pytest.mark.slow
def test_smollm2_answers_in_chat_format() -> None:
    from smartfed.config import ModelConfig
    from smartfed.model.base import load_base_model

    model, tok = load_base_model(ModelConfig(model_name_or_path="default", dtype="float32"))
    out = generate(
        model, tok, ["What is 2 + 3? Answer with a number."], max_new_tokens=12, progress=False
    )
    assert out[0].strip() and "<|im_end|>" not in out[0] and "<|im_start|>" not in out[0]
