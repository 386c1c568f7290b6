"""``smartfed export --merged``: PEFT loads the folded LoRA, which equals the run under its average
routing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_methods_one_round import run_one_round

from factories import pin_task_identity
from smartfed.cli.main import main
from smartfed.config import ModelConfig
from smartfed.eval.models import load_adapter, load_run
from smartfed.io.export import export_merged
from smartfed.model.base import load_base_model
from smartfed.model.state import more_layers
from smartfed.routing.router import FixedRouter

IDS = torch.tensor([[1, 5, 9, 20, 33, 41, 7, 2], [3, 3, 8, 60, 12, 4, 5, 6]])


@pytest.fixture(scope="module")
def run(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A 1-round smartfed run with DENSE routing (K = M on every matrix, topk 14 >= every M_m)."""
    mp = pytest.MonkeyPatch()
    pin_task_identity(mp)
    root = tmp_path_factory.mktemp("export")
    out = run_one_round(
        tiny_model_dir, tiny_pool, root, "smartfed", topk_experts=14, enable_eeqa=False
    )
    mp.undo()
    return out["cfg"]


def _model(cfg: Any) -> Any:
    return load_base_model(
        ModelConfig(model_name_or_path=cfg.model.model_name_or_path, dtype="float32")
    )[0]


def test_export_loads_with_peft_and_equals_fixed_average_routing(run: Any, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    report = export_merged(run.output_dir, out, calibration_limit=8)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "export_report.json").read_text()) == report
    assert report["total_rank"] == report["experts_total"]  # dense routing: every expert has g > 0
    exported = load_adapter(_model(run), out)
    routed = _model(run)
    load_run(routed, run.output_dir, run)
    gates = {m: torch.tensor(v) for m, v in report["gates"].items()}
    for name, layer in more_layers(routed).items():  # the routed model under fixed average routing
        layer.router = FixedRouter(torch.arange(layer.num_experts), gates[name])
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=IDS).logits, routed(input_ids=IDS).logits, atol=2e-5, rtol=1e-4
        )
    assert report["loss_exported"] == pytest.approx(
        report["loss_routed"], abs=0.5
    )  # measured, close
    assert report["loss_on"] == "heldout" and report["eval_rows"] > 0


def test_export_cli_refuses_bad_input(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        main(["export", run.output_dir, "--output_dir", str(tmp_path / "x")])
    assert err.value.code == 2 and "--merged" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as err:
        main(["export", run.output_dir, "--merged", "--output_dir", str(tmp_path / "full")])
    assert err.value.code == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_lora_baseline_run_exports_as_is(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffa_lora: A is not in the checkpoint (never sent) and comes back from the seeded init."""
    from smartfed.io.export import load_run_model

    pin_task_identity(monkeypatch)
    cfg = run_one_round(tiny_model_dir, tiny_pool, tmp_path, "ffa_lora")["cfg"]
    report = export_merged(cfg.output_dir, tmp_path / "lora")
    assert report["method"] == "ffa_lora" and report["gates"] == {} and report["total_rank"] > 0
    trained, _, _ = load_run_model(
        cfg.output_dir, cfg, ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32")
    )
    exported = load_adapter(_model(cfg), tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=IDS).logits, trained(input_ids=IDS).logits, atol=2e-5, rtol=1e-4
        )
    assert report["loss_exported"] == pytest.approx(report["loss_routed"], abs=1e-4)


def test_exported_adapter_loads_with_auto_peft_and_has_a_model_card(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "auto"
    assert main(["export", run.output_dir, "--merged", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) <= 6 and "{" not in printed  # a summary, not the report JSON
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert Path(config["base_model_name_or_path"]) == Path(run.model.model_name_or_path).resolve()
    auto = AutoPeftModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    direct = load_adapter(_model(run), out)
    with torch.no_grad():
        torch.testing.assert_close(
            auto(input_ids=IDS).logits, direct(input_ids=IDS).logits, atol=1e-5, rtol=1e-5
        )
    card = (out / "README.md").read_text()
    report = json.loads((out / "export_report.json").read_text())
    for fragment in (
        "AutoPeftModelForCausalLM.from_pretrained",
        f"`{run.train.method}`",
        f"{report['loss_exported']:.4f}",
        *(f"`{Path(s).name}`" for s in run.pool.sources),
    ):
        assert fragment in card
