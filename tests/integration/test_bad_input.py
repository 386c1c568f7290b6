"""Bad input gets the one-line error (exit 2); user files are never overwritten silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedkit import write_dataset

from bad_adapters import copy_adapter, edit_config, edit_tensors
from smartfed.cli.main import main
from smartfed.cli.train import NothingLearnedError, check_learned
from smartfed.config import RunConfig
from smartfed.data.source import load_training_data
from smartfed.errors import AdapterFileError, DataError
from smartfed.pool.adapter import LoraAdapter
from smartfed.pool.registry import add_entry, load_registry


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit 2 with exactly one ``smartfed: error:`` line; return it."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()  # logs come first; the error is last
    assert done.value.code == 2, err
    assert not any("Traceback" in line for line in err), err
    errors = [line for line in err if line.startswith("smartfed: error: ")]
    assert errors == err[-1:], err
    return errors[0]


def _train_flags(model: Path, pool: list[Path], data: Path) -> list[str]:
    return [
        "train", "--model_name_or_path", str(model), "--lora_pool", str(pool[0]),
        "--dataset", str(data), "--dtype", "float32", "--num_clients", "2",
        "--sample_clients", "1", "--num_rounds", "1", "--local_steps", "1", "--batch_size", "2",
        "--max_seq_len", "32", "--heldout_examples", "0", "--no-track_energy",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"r": "four"}, "r="),
        ({"lora_alpha": "x"}, "lora_alpha="),
        ({"lora_alpha": float("nan")}, "lora_alpha="),
        ({"target_modules": 5}, "target_modules="),
        ({"use_rslora": "yes"}, "use_rslora="),
        ({"rank_pattern": {"q_proj": "big"}}, "rank_pattern="),
    ],
)
def test_adapter_config_types(
    tiny_pool: list[Path], tmp_path: Path, change: dict, field: str
) -> None:
    bad = edit_config(copy_adapter(tiny_pool[0], tmp_path / "a"), **change)
    with pytest.raises(AdapterFileError, match=field) as err:
        LoraAdapter.from_peft_dir(bad)
    assert "\n" not in str(err.value)


def test_overflowing_adapter_weights(tiny_pool: list[Path], tmp_path: Path) -> None:
    bad = edit_tensors(
        copy_adapter(tiny_pool[0], tmp_path / "a"), lambda t: {k: v * 1e20 for k, v in t.items()}
    )
    with pytest.raises(AdapterFileError, match="overflows"):
        LoraAdapter.from_peft_dir(bad)


def test_unknown_partition_by_column(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d.jsonl")
    flat = {"dataset": str(data), "partitioner": "dirichlet", "partition_by": "nope"}
    with pytest.raises(DataError, match="partition_by 'nope'"):
        load_training_data(RunConfig.from_flat(flat))
    flat["partition_by"] = "cat"  # a real column still works
    assert load_training_data(RunConfig.from_flat(flat)).label_key == "cat"


def test_cli_paths_and_values(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "d.jsonl")
    flags = _train_flags(tiny_model_dir, tiny_pool, data)
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert "file" in _cli([*flags, "--output_dir", str(a_file)], capsys)
    assert "Not a directory" in _cli([*flags, "--output_dir", str(a_file / "run")], capsys)
    assert "seed" in _cli([*flags, "--seed", "-1", "--output_dir", str(tmp_path / "s")], capsys)
    assert "learning_rate" in _cli(
        [*flags, "--learning_rate", "inf", "--output_dir", str(tmp_path / "lr")], capsys
    )
    assert "directory" in _cli(["train", "--config", str(tmp_path)], capsys)
    bad_text = tmp_path / "latin1.jsonl"
    bad_text.write_bytes(data.read_bytes() + b'{"instruction": "caf\xe9", "output": "x"}\n')
    assert "UTF-8" in _cli(
        [*flags[:6], str(bad_text), *flags[7:], "--output_dir", str(tmp_path / "u")], capsys
    )
    assert a_file.read_text() == "mine"


def test_eval_task_typo_is_found_before_round_1(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    flags = _train_flags(tiny_model_dir, tiny_pool, data)
    assert "gsm8kk" in _cli([*flags, "--eval_task", "gsm8kk", "--output_dir", str(out)], capsys)
    assert not (out / "metrics.jsonl").exists()


def test_pool_add_refuses_to_replace_and_keeps_other_keys(
    tiny_pool: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg.json"
    reg.write_text(json.dumps({"adapters": {}, "note": "mine"}))
    add_entry("qv", str(tiny_pool[0]), reg)
    add_entry("qv", str(tiny_pool[0]), reg)  # the same source again: nothing changes
    msg = _cli(["pool", "add", "--registry", str(reg), "qv", str(tiny_pool[1])], capsys)
    assert "already registered" in msg and "--force" in msg
    assert load_registry(reg)["qv"].source == str(tiny_pool[0])
    assert main(["pool", "add", "--registry", str(reg), "--force", "qv", str(tiny_pool[1])]) == 0
    assert load_registry(reg)["qv"].source == str(tiny_pool[1])
    assert json.loads(reg.read_text())["note"] == "mine"


def test_pool_train_keeps_a_users_readme(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    data = write_dataset(tmp_path / "d.jsonl")
    argv = ["pool", "train", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(data),
            "--rank", "2", "--max_steps", "1", "--output_dir", str(out)]  # fmt: skip
    assert "README.md" in _cli(argv, capsys)
    assert (out / "README.md").read_text() == "my notes"


def test_report_out_refuses_existing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my report")
    assert "--force" in _cli(["report", str(tmp_path / "run"), "--out", str(out)], capsys)
    assert (out / "report.md").read_text() == "my report"


def test_a_run_where_every_client_failed_is_an_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"round": r, "clients": [], "failures": 2, "rejected": {}} for r in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(NothingLearnedError, match="no client update was accepted in any of 2"):
        check_learned(str(run))
    rows[1]["clients"] = [0]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    check_learned(str(run))


def test_corrupt_base_model_safetensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from smartfed.config import ModelConfig
    from smartfed.errors import ModelLoadError
    from smartfed.model.base import load_base_model

    bad = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    for f in bad.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_base_model(ModelConfig(model_name_or_path=str(bad), dtype="float32"))
