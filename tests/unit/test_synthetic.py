"""Random-expert control adapters: same shapes, norms and config; seeded; PEFT-readable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smartfed.errors import AdapterFileError
from smartfed.pool.adapter import LoraAdapter
from smartfed_bench.synthetic import random_like_adapter


def test_random_like_keeps_shapes_norms_and_is_seeded(
    tiny_pool: list[Path], tmp_path: Path
) -> None:
    src = tiny_pool[1]
    a = random_like_adapter(src, tmp_path / "a", seed=3)
    b = random_like_adapter(src, tmp_path / "b", seed=3)
    c = random_like_adapter(src, tmp_path / "c", seed=4)
    orig = load_file(str(src / "adapter_model.safetensors"))
    ta, tb = (load_file(str(d / "adapter_model.safetensors")) for d in (a, b))
    tc = load_file(str(c / "adapter_model.safetensors"))
    assert ta.keys() == orig.keys()
    for k, t in orig.items():
        assert ta[k].shape == t.shape and ta[k].dtype == t.dtype
        assert torch.allclose(ta[k].float().norm(), t.float().norm(), rtol=1e-3)
        assert torch.equal(ta[k], tb[k])
        assert not torch.equal(ta[k], tc[k]) and not torch.equal(ta[k], t)
    read = LoraAdapter.from_peft_dir(a)
    assert read.rank == LoraAdapter.from_peft_dir(src).rank
    assert random_like_adapter(src, tmp_path / "a", seed=3) == a  # reused


def test_random_like_refuses_a_non_adapter(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="not a PEFT adapter dir"):
        random_like_adapter(tmp_path, tmp_path / "out", seed=0)
