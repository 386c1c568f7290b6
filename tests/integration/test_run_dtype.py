"""A run resolves ``model.dtype = auto`` once and records the concrete dtype; a resumed run keeps
the recorded one, even where ``auto`` would now resolve otherwise (tiny model, no rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedkit import tiny_config, write_dataset

from smartfed.errors import CheckpointError
from smartfed.model import dtype as dtype_mod
from smartfed.recipes.train import prepare_run


def _cpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool | None) -> None:
    """Fake this CPU: with (True) or without (False) bf16 instructions; None = must not probe."""

    def probe(caps: object = None) -> bool:
        if native_bf16 is None:
            raise AssertionError("auto was resolved again on resume")
        return native_bf16

    monkeypatch.setattr(dtype_mod, "cpu_native_bf16", probe)


def _recorded(out: Path) -> str:
    return str(json.loads((out / "config.json").read_text())["model"]["dtype"])


@pytest.mark.parametrize(("native", "want"), [(False, "float32"), (True, "bfloat16")])
def test_config_json_records_the_concrete_dtype(
    tiny_model_dir: Path,
    tiny_pool: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    native: bool,
    want: str,
) -> None:
    _cpu(monkeypatch, native)
    out = tmp_path / "run"
    data = write_dataset(tmp_path / "d.jsonl")
    cfg = tiny_config(tiny_model_dir, tiny_pool, data, out, dtype="auto", device="cpu")
    app_cfg = prepare_run(cfg)
    assert app_cfg.model.dtype == want and _recorded(out) == want


def test_resume_keeps_the_recorded_dtype(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    data = write_dataset(tmp_path / "d.jsonl")
    cfg = tiny_config(tiny_model_dir, tiny_pool, data, out, dtype="auto", device="cpu")
    _cpu(monkeypatch, True)  # the machine the run started on: bf16 instructions
    prepare_run(cfg)
    assert _recorded(out) == "bfloat16"
    _cpu(monkeypatch, None)  # "another machine": resolving again would fail the test
    resume = tiny_config(
        tiny_model_dir, tiny_pool, data, out, dtype="auto", device="cpu", resume=True
    )
    assert prepare_run(resume).model.dtype == "bfloat16"
    assert _recorded(out) == "bfloat16"
    explicit = tiny_config(
        tiny_model_dir, tiny_pool, data, out, dtype="float32", device="cpu", resume=True
    )
    with pytest.raises(CheckpointError, match=r"model\.dtype='float32'.*'bfloat16'"):
        prepare_run(explicit)


def test_skill_lora_resume_keeps_its_dtype(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartfed.config import ModelConfig
    from smartfed.train.skill_lora import SkillLoraRecipe, train_skill_lora

    recipe = SkillLoraRecipe(
        dataset="cpu_mini.skill.sort", rank=2, max_steps=4, batch_size=2, heldout_rows=4,
        checkpoint_every=2, seed=1,
    )
    cfg = ModelConfig(model_name_or_path=str(tiny_model_dir), device="cpu")  # dtype auto

    class Stop(Exception):
        pass

    def interrupt(step: int, _loss: float) -> None:
        if step == 3:
            raise Stop

    out = tmp_path / "lora"
    _cpu(monkeypatch, True)
    with pytest.raises(Stop):
        train_skill_lora(cfg, recipe, out, progress=False, on_step=interrupt)
    _cpu(monkeypatch, None)
    record = train_skill_lora(cfg, recipe, out, resume=True, progress=False)
    assert record["dtype"] == "bfloat16" and record["resumed_from_step"] == 2
