from __future__ import annotations

from factories import make_tokenizer
from smartfed.data.example import Example
from smartfed.data.formatting import IGNORE_INDEX, collate, encode_for_training, render_prompt


def test_loss_only_on_response() -> None:
    tok = make_tokenizer()
    ex = Example(prompt="What is 2 plus 3?", response="5")
    enc = encode_for_training(tok, ex, max_len=128)
    # Arrange/Act done; Assert: prompt masked, response (+eos) kept, decodes back
    n_prompt = len(tok(render_prompt(tok, ex.prompt), add_special_tokens=False)["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    target = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(target) == "5" + tok.eos_token
    assert render_prompt(tok, ex.prompt).endswith("<|im_start|>assistant\n")


def test_truncation_keeps_response_and_collate_pads() -> None:
    tok = make_tokenizer()
    long = Example(prompt="word " * 200, response="the answer")
    enc = encode_for_training(tok, long, max_len=32)
    assert len(enc.input_ids) == 32 and len(enc.labels) == 32
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]).startswith("the answer")
    short = encode_for_training(tok, Example(prompt="hi", response="ok"), max_len=32)
    batch = collate([enc, short], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 32)
    assert int(batch["attention_mask"][1].sum()) == len(short.input_ids)
    assert (batch["labels"][1, len(short.input_ids) :] == IGNORE_INDEX).all()


def test_instruction_template_without_chat_template() -> None:
    tok = make_tokenizer()
    tok.chat_template = None
    assert render_prompt(tok, "Q").startswith("### Instruction:\nQ")
