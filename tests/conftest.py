"""Shared fixtures: tiny random models and PEFT adapters built offline, fixed seeds."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from factories import make_peft_adapter, make_tiny_llama, pin_task_identity  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Llama (hidden 64, 2 layers, GQA k/v 64->32) with a ChatML tokenizer."""
    out = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(out)
    return out


@pytest.fixture(scope="session")
def tiny_pool(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A heterogeneous pool: r=4 q/v, r=8 rsLoRA q/k/v/o, r=2 MLP+v with a rank pattern."""
    root = tmp_path_factory.mktemp("tiny-pool")
    return [
        make_peft_adapter(tiny_model_dir, root / "a_qv", r=4, alpha=8, seed=1),
        make_peft_adapter(
            tiny_model_dir, root / "b_attn", r=8, alpha=16, use_rslora=True, seed=2,
            targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        ),
        make_peft_adapter(
            tiny_model_dir, root / "c_mlp", r=2, alpha=4, seed=3,
            targets=("gate_proj", "up_proj", "down_proj", "v_proj"),
            rank_pattern={"down_proj": 3},
        ),
    ]


@pytest.fixture(scope="session")
def pool(tiny_pool: list[Path]):  # type: ignore[no-untyped-def]
    """``tiny_pool`` resolved as a ``LoraPool`` (read-only: shared by the whole session)."""
    from smartfed.pool.pool import resolve_pool

    return resolve_pool([str(p) for p in tiny_pool])


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's run/task/node ids pinned (``factories.pin_task_identity``) for this test."""
    pin_task_identity(monkeypatch)
