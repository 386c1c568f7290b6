"""Builders for tiny offline test artefacts: a random Llama, a byte-level tokenizer, PEFT adapters.

Everything is made locally in milliseconds; nothing touches the hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "What is 47 plus 38? The answer is 85.",
    "def add(a, b):\n    return a + b\n",
    "小明有3个苹果，又买了5个，一共有几个？答案是8。",
    "Write the number in French: quatre-vingt-cinq.",
    "Question: Janet has 16 eggs. Answer: 16 - 3 - 4 = 9. The answer is 9.",
] * 4


def make_tokenizer(out_dir: Path | None = None):  # type: ignore[no-untyped-def]
    """Return a tiny byte-level BPE ``PreTrainedTokenizerFast`` with ChatML specials (< 512)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def make_tiny_llama(
    out_dir: Path | None = None,
    *,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    vocab_size: int = 512,
    kv_heads: int = 2,
):  # type: ignore[no-untyped-def]
    """Return a random-init tiny ``LlamaForCausalLM`` (GQA: k/v are hidden -> hidden/2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        intermediate_size=2 * hidden,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    if out_dir is not None:
        model.save_pretrained(out_dir, safe_serialization=True)
        make_tokenizer(out_dir)
    return model


def make_peft_adapter(
    model_dir: Path,
    out_dir: Path,
    *,
    r: int = 4,
    alpha: float = 8.0,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    use_rslora: bool = False,
    seed: int = 0,
    rank_pattern: dict[str, int] | None = None,
) -> Path:
    """Save a PEFT LoRA adapter for the model at ``model_dir``, random A *and* B (nonzero delta)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        use_rslora=use_rslora,
        init_lora_weights=False,
        rank_pattern=rank_pattern or {},
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def pin_task_identity(mp: pytest.MonkeyPatch) -> None:
    """Fix Flower's run, task and node ids, so messages built in a test are the same every run."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        mp.setattr(TaskIdentity, name, value)


def load_tiny(model_dir: Path, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    """The saved tiny model in eval mode and its tokenizer, straight from transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def load_tiny_base(model_dir: Path):  # type: ignore[no-untyped-def]
    """The saved tiny model through SmartFed's loader (frozen, eval, float32, CPU) + tokenizer."""
    from smartfed.config import ModelConfig
    from smartfed.model.base import load_base_model

    return load_base_model(
        ModelConfig(model_name_or_path=str(model_dir), dtype="float32", device="cpu")
    )
