"""``smartfed pool`` end to end: verify/inspect/add/list, and every bad input of an adapter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bad_adapters import copy_adapter, corrupt, poison, retarget, truncate
from factories import make_peft_adapter, make_tiny_llama
from smartfed.cli.main import main


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTFED_CACHE", str(tmp_path / "cache"))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["-q", *argv])
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    """The single ``smartfed: error:`` line, last on stderr; no traceback.

    transformers' "Loading weights" progress bar may precede it when a model is loaded.
    """
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert lines[-1].startswith("smartfed: error: ") and "Traceback" not in err
    assert all(ln.startswith("Loading weights") for ln in lines[:-1]), err
    return lines[-1]


def _pool(paths: list[Path]) -> str:
    return ",".join(str(p) for p in paths)


def test_verify_passes_for_every_adapter_of_the_tiny_pool(
    tiny_model_dir: Path, tiny_pool: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Act
    code, out, _ = _run(["pool", "verify", "--model_name_or_path", str(tiny_model_dir),
                         "--lora_pool", _pool(tiny_pool)], capsys)
    # Assert
    assert code == 0, out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.endswith(("PASS", "FAIL"))}
    assert set(lines) == {"a_qv", "b_attn", "c_mlp"}
    for line in lines.values():
        assert line.endswith("PASS") and float(line.split()[1]) < 1e-5
    assert "(float32)" in out and "verify: all 3 adapters pass" in out


def test_verify_fails_with_exit_1_beyond_tolerance(
    tiny_model_dir: Path, tiny_pool: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(["pool", "verify", "--model_name_or_path", str(tiny_model_dir),
                         "--lora_pool", str(tiny_pool[1]), "--tolerance", "1e-12"], capsys)
    assert code == 1 and "FAIL" in out


def test_inspect_add_list(tiny_pool: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code, out, _ = _run(["pool", "inspect", "--lora_pool", _pool(tiny_pool),
                         "--topk_experts", "8"], capsys)
    # Assert
    assert code == 0
    assert "pool: 3 adapters, 14 matrices, 98 experts" in out
    assert "router parameters: 6,656" in out and "fp32 26,624" in out and "bf16 13,312" in out
    assert any(ln.startswith("b_attn") and " yes " in ln for ln in out.splitlines())  # rsLoRA
    assert any(ln.startswith("c_mlp") and ln.split()[1] == "2/3" for ln in out.splitlines())
    # Arrange/Act: the registry
    assert _run(["pool", "add", "en_math", str(tiny_pool[0])], capsys)[0] == 0
    assert _run(["pool", "add", "cn_chat", str(tiny_pool[1])], capsys)[0] == 0
    code, out, _ = _run(["pool", "list"], capsys)
    assert code == 0 and "en_math" in out and str(tiny_pool[1]) in out
    code, out, _ = _run(["pool", "inspect", "--lora_pool", "cn_chat,en_math"], capsys)
    assert code == 0 and "pool: 2 adapters" in out and out.index("cn_chat") < out.index("en_math")


def test_inspect_prints_bytes_per_round_of_the_run_settings(
    tiny_pool: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--router_proj_dim", "16", "--wire_dtype", "int8", "--wire_delta",
             "--wire_error_feedback", "--num_clients", "3", "--sample_clients", "2"]
    code, out, _ = _run(["pool", "inspect", "--lora_pool", _pool(tiny_pool), *flags], capsys)
    assert code == 0
    lines = out.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith("bytes per round"))
    assert "(2 of 3 clients sampled" in lines[i]
    this, paper, fedit = lines[i + 2], lines[i + 3], lines[i + 4]
    # 98 experts x h=16 int8 values + 14 scales (9 B each) per client up: 1,694 B
    assert this.startswith("this run: projected h=16, int8 updates, delta down, error feedback")
    assert this.split()[-11:-9] == ["1.69", "kB"] and this.endswith("1.0x")  # up per client
    assert paper.startswith("paper-faithful: full router, float32")
    assert paper.split()[-11:-9] == ["26.6", "kB"]  # 4 x 6,656 B per client
    assert fedit.startswith("FedIT: LoRA r=8 on the same 14 matrices, float32")
    assert lines[i + 5].startswith("down with wire_delta:")


@pytest.fixture(scope="module")
def bad(tiny_model_dir: Path, tiny_pool: list[Path],
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One broken adapter (or path) per docs/ARCHITECTURE.md, Errors case."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    make_tiny_llama(root / "h32", hidden=32)
    src = tiny_pool[0]
    return {
        "missing": root / "does-not-exist",
        "empty": root / "empty",
        "corrupt": corrupt(copy_adapter(src, root / "corrupt")),
        "truncated": truncate(copy_adapter(src, root / "truncated")),
        "nan": poison(copy_adapter(src, root / "nan")),
        "other_hidden": make_peft_adapter(root / "h32", root / "other_hidden", r=2, alpha=4),
        "absent": retarget(copy_adapter(src, root / "absent"), "q_proj", "qkv_proj"),
    }


@pytest.mark.parametrize(("case", "action", "with_model", "expect"), [
    ("missing", "inspect", False, "does not exist"),
    ("empty", "inspect", False, "is empty"),
    ("corrupt", "inspect", False, "corrupt or truncated"),
    ("truncated", "inspect", False, "corrupt or truncated"),
    ("nan", "inspect", False, "NaN/Inf"),
    ("other_hidden", "verify", True, "made for another model"),
    ("absent", "inspect", True, "absent from the base model"),
    ("nan", "verify", True, "NaN/Inf"),
])
def test_bad_input_is_one_error_line_exit_2(
    case: str, action: str, with_model: bool, expect: str, bad: dict[str, Path],
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Arrange
    argv = ["pool", action, "--lora_pool", str(bad[case])]
    if with_model:
        argv += ["--model_name_or_path", str(tiny_model_dir)]
    # Act
    code, _, err = _run(argv, capsys)
    # Assert
    assert code == 2
    line = _one_error_line(err)
    assert expect in line and str(bad[case]) in line


@pytest.mark.parametrize("argv", [
    ["pool", "inspect", "--lora_pool", "{a}", "--topk_experts", "0"],
    ["pool", "inspect", "--lora_pool", "not_registered"],
    ["pool", "verify", "--lora_pool", "{a}", "--model_name_or_path", "/no/such/model"],
    ["pool", "add", "x", "/no/such/dir"],
])
def test_impossible_topk_and_other_mistakes(argv: list[str], tiny_pool: list[Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run([a.format(a=tiny_pool[0]) for a in argv], capsys)
    assert code == 2
    line = _one_error_line(err)
    if "0" in argv:
        assert "topk_experts=0: must be >= 1" in line


def test_real_process_exit_status_and_stderr(tmp_path: Path) -> None:
    env = {**os.environ, "SMARTFED_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "smartfed.cli.main", "pool", "inspect", "--lora_pool",
         str(tmp_path / "missing")], capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("smartfed: error: adapter path")
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two r=8 PEFT adapters on the real SmolLM2-135M (random A and B, seeded)."""
    from smartfed.config import ModelConfig
    from smartfed.model.base import local_model_dir

    model_dir = Path(local_model_dir(ModelConfig()).location)
    root = tmp_path_factory.mktemp("smol")
    return [
        make_peft_adapter(model_dir, root / "qv", r=8, alpha=16, seed=1),
        make_peft_adapter(model_dir, root / "attn_mlp", r=8, alpha=16, seed=2, use_rslora=True,
                          targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verify_on_smollm2(dtype: str, smol_adapters: list[Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["pool", "verify", "--model_name_or_path", "default", "--lora_pool",
                         _pool(smol_adapters), "--dtype", dtype], capsys)
    assert code == 0, out
    rows = [ln.split() for ln in out.splitlines() if ln.endswith("PASS")]
    assert [r[0] for r in rows] == ["qv", "attn_mlp"]
    if dtype == "float32":
        assert all(float(r[1]) < 5e-5 for r in rows)
