"""``smartfed pool train``: PEFT loads the adapter, loss falls, exact resume, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from smartfed.cli.main import main
from smartfed.config import ModelConfig
from smartfed.train.skill_lora import RESUME_DIR, SkillLoraRecipe, batch_indices, train_skill_lora

RECIPE: dict[str, Any] = {
    "dataset": "cpu_mini.skill.sort",
    "rank": 4,
    "max_steps": 24,
    "learning_rate": 1e-2,
    "batch_size": 4,
    "heldout_rows": 16,
    "checkpoint_every": 8,
    "seed": 1,
}


def _cfg(model_dir: Path) -> ModelConfig:
    return ModelConfig(model_name_or_path=str(model_dir), dtype="float32")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_adapter_loads_with_peft_and_loss_decreases(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    record = train_skill_lora(_cfg(tiny_model_dir), SkillLoraRecipe(**RECIPE), out, progress=False)
    assert record["steps"] == 24 and record["rows"] == 2000 and record["heldout_rows"] == 16
    assert record["heldout_loss"] < record["initial_heldout_loss"]
    assert record["final_train_loss"] < record["first_train_loss"]
    assert (
        json.loads((out / "training_record.json").read_text())["dataset"] == "cpu_mini.skill.sort"
    )
    assert not (out / RESUME_DIR).exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    peft = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(peft(ids).logits, before)
    assert any(float(t.abs().sum()) > 0 for k, t in _weights(out).items() if "lora_B" in k)


def test_resume_continues_from_saved_step_and_matches_uninterrupted(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = SkillLoraRecipe(**RECIPE)
    straight = tmp_path / "straight"
    train_skill_lora(_cfg(tiny_model_dir), recipe, straight, progress=False)

    class Stop(Exception):
        pass

    def interrupt(step: int, _loss: float) -> None:
        if step == 19:
            raise Stop

    resumed = tmp_path / "resumed"
    with pytest.raises(Stop):
        train_skill_lora(_cfg(tiny_model_dir), recipe, resumed, progress=False, on_step=interrupt)
    assert (resumed / RESUME_DIR / "state.pt").is_file() and not (
        resumed / "adapter_config.json"
    ).exists()
    record = train_skill_lora(_cfg(tiny_model_dir), recipe, resumed, resume=True, progress=False)
    assert record["resumed_from_step"] == 16 and record["steps"] == 24
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_refuses_another_recipe(tiny_model_dir: Path, tmp_path: Path) -> None:
    from smartfed.errors import CheckpointError

    def interrupt(step: int, _loss: float) -> None:
        if step == 9:
            raise KeyboardInterrupt

    out = tmp_path / "lora"
    with pytest.raises(KeyboardInterrupt):
        train_skill_lora(
            _cfg(tiny_model_dir), SkillLoraRecipe(**RECIPE), out, progress=False, on_step=interrupt
        )
    other = SkillLoraRecipe(**{**RECIPE, "rank": 2})
    with pytest.raises(CheckpointError, match="another recipe"):
        train_skill_lora(_cfg(tiny_model_dir), other, out, resume=True, progress=False)


def test_batches_are_a_seeded_function_of_the_step() -> None:
    assert batch_indices(10, 4, 0, 3) == batch_indices(10, 4, 0, 3)
    epoch0 = sum((batch_indices(10, 5, 7, s) for s in range(2)), [])
    assert sorted(epoch0) == list(range(10))
    assert batch_indices(10, 4, 0, 0) != batch_indices(10, 4, 1, 0)


def test_cli_trains_a_jsonl_dataset_and_registers_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": f"Echo {w}", "response": w})
            for w in ("red", "green", "blue", "cyan", "pink", "gold") * 4
        )
    )
    reg = tmp_path / "registry.json"
    rc = main(
        [
            "pool",
            "train",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dtype",
            "float32",
            "--dataset",
            str(data),
            "--rank",
            "2",
            "--max_steps",
            "3",
            "--batch_size",
            "2",
            "--output_dir",
            str(tmp_path / "echo"),
            "--name",
            "echo",
            "--registry",
            str(reg),
            "--no_progress",
        ]
    )
    assert rc == 0
    assert "registered echo" in capsys.readouterr().out
    assert json.loads(reg.read_text())["adapters"]["echo"]["source"] == str(
        (tmp_path / "echo").resolve()
    )


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--dataset", "cpu_mini.skill.sort", "--rank", "0"], "--rank"),
        (
            ["--dataset", "cpu_mini.skill.sort", "--rank", "2", "--learning_rate", "-1"],
            "--learning_rate",
        ),
        (["--dataset", "no/such.jsonl", "--rank", "2"], "does not exist"),
        (["--dataset", "no_such_task", "--rank", "2"], "unknown task"),
        (
            ["--dataset", "cpu_mini.skill.sort", "--rank", "2", "--target_modules", "nope_proj"],
            "nope_proj",
        ),
        (["--dataset", "cpu_mini.skill.sort", "--rank", "2", "--name", "bad/name"], "--name"),
        (["--dataset", "cpu_mini.skill.sort"], "--rank"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    fragment: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "-q",
                "pool",
                "train",
                "--model_name_or_path",
                str(tiny_model_dir),
                "--dtype",
                "float32",
                "--output_dir",
                str(tmp_path / "x"),
                "--no_progress",
                "--max_steps",
                "2",
                *flags,
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    ours = [
        line for line in err.splitlines() if line.startswith("smartfed")
    ]  # library warnings aside
    assert len(ours) == 1 and ours[0].startswith("smartfed: error:") and fragment in ours[0], err
    assert "Traceback" not in err


def test_ensure_cpu_mini_pool_builds_once_then_reuses(tiny_model_dir: Path, tmp_path: Path) -> None:
    from smartfed.errors import ConfigError
    from smartfed_bench.pools import ensure_cpu_mini_pool

    cfg = _cfg(tiny_model_dir)
    first = ensure_cpu_mini_pool(
        cfg, cache_dir=tmp_path, skills=["cpu_mini.skill.reverse"], progress=False
    )
    path = first["cpu_mini.skill.reverse"]
    assert (
        path.parent == tmp_path / "pools" / "cpu-mini"
        and (path / "adapter_model.safetensors").is_file()
    )
    stamp = (path / "adapter_model.safetensors").stat().st_mtime_ns
    again = ensure_cpu_mini_pool(
        cfg, cache_dir=tmp_path, skills=["cpu_mini.skill.reverse"], progress=False
    )
    assert again == first and (path / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    other = ensure_cpu_mini_pool(
        cfg, cache_dir=tmp_path, skills=["cpu_mini.skill.reverse"], seed=1, progress=False
    )
    assert other["cpu_mini.skill.reverse"] != path
    with pytest.raises(ConfigError, match="suite"):
        ensure_cpu_mini_pool(cfg, suite="gpu-maxi", cache_dir=tmp_path)
