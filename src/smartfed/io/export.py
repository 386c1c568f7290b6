"""``smartfed export --merged``: fold a SmartFed run's routed experts into one plain PEFT LoRA.

For deployment without MoRE [D]. Per routed matrix ``m`` with experts ``i = 1..M_m``:

1. Average routing on a calibration set (the run's own training rows, seeded order, first N):
   ``g_bar_i = mean over real (non-padding) tokens of the gate of expert i`` exactly as the forward
   uses it (top-K_m of the softmax, renormalised when the run renormalises; 0 when not selected).
2. Fold: ``delta_W_m = c_m sum_i g_bar_i s_i B[:, i] A[i]`` (``c_m`` the layer's output scale),
which is
   exactly a LoRA of rank ``r'_m = #{i: g_bar_i > 0}``: ``A' = A[keep]`` ``(r'_m, d_in)``,
   ``B' = B[:, keep] * (c_m g_bar_i s_i)`` ``(d_out, r'_m)`` (no SVD).
3. Write PEFT's format: ``adapter_config.json`` (``r``, ``lora_alpha = r`` so scaling 1, per-matrix
   ``rank_pattern``/``alpha_pattern``, ``target_modules``) and ``adapter_model.safetensors`` (keys
   ``base_model.model.<matrix>.lora_A.weight`` / ``.lora_B.weight``), ``task_type = CAUSAL_LM``
   and ``base_model_name_or_path`` a loadable hub id or local directory (``default`` = the
   converted embedded SmolLM2 in the cache), so ``AutoPeftModelForCausalLM.from_pretrained(dir)``
   loads it; plus a model card ``README.md`` (base model, pool, method, data, metrics, how to
   load).
4. Measure what folding loses: held-out loss (the run's held-out rows, or calibration rows when the
run
   held none out) of the routed model vs the exported LoRA, and optionally task accuracy; written to
   ``export_report.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from smartfed.config import ModelConfig, RunConfig
from smartfed.data.formatting import collate, encode_for_training
from smartfed.data.tasks import get_task
from smartfed.errors import CheckpointError, ConfigError
from smartfed.eval.harness import generate_outputs, score_outputs, select_examples
from smartfed.eval.models import load_adapter, run_config
from smartfed.files import atomic_write, atomic_write_json, atomic_write_text
from smartfed.io.model_card import model_card
from smartfed.io.rundir import RunDir
from smartfed.log import get_logger
from smartfed.methods.assemble import assemble, training_split
from smartfed.methods.lora import lora_parameters, peft_adapter_config
from smartfed.model.base import load_base_model, local_model_dir
from smartfed.model.state import more_layers, set_quotas
from smartfed.train.local import evaluate_loss

log = get_logger(__name__)
REPORT_FILE = "export_report.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
CARD_FILE = "README.md"


@torch.no_grad()
def average_gates(
    model: nn.Module, rows: Sequence[Any], batch_size: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """Mean gate of every expert over the real tokens of ``rows`` (MoRE observers; forward routing).

    Args:
        model: a MoRE model (routers and quotas loaded).
        rows: encoded examples (``EncodedExample``).
        batch_size: rows per forward.
        pad_id: the tokenizer's pad id.

    Returns:
        matrix -> ``g_bar``, shape ``(M_m,)``, float32 (zero for experts never selected).
    """
    layers = more_layers(model)
    sums = {
        name: torch.zeros(layer.num_experts, dtype=torch.float64) for name, layer in layers.items()
    }
    mask: list[torch.Tensor] = []
    tokens = 0

    def observer(name: str):  # type: ignore[no-untyped-def]
        def fn(info: Any) -> None:
            w, idx = info.routing.weights.float(), info.routing.indices
            idx = idx.expand(*info.z.shape[:-1], -1)
            dense = torch.zeros(info.z.shape, dtype=torch.float32).scatter_add(
                -1, idx, w.expand_as(idx)
            )
            sums[name] += (
                (dense * mask[0][..., None]).sum(dim=tuple(range(dense.dim() - 1))).double()
            )

        return fn

    handles = [layer.add_observer(observer(name)) for name, layer in layers.items()]
    try:
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size], pad_id)
            mask[:] = [batch["attention_mask"].float()]
            tokens += int(batch["attention_mask"].sum())
            model.get_decoder()(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise ConfigError("the calibration set has no tokens; raise --calibration_limit")
    return {name: (s / tokens).float() for name, s in sums.items()}


def fold_to_lora(
    model: nn.Module, gates: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fold experts with fixed weights into a LoRA per matrix (exact; see the module docstring).

    Returns:
        matrix -> ``(A' (r'_m, d_in), B' (d_out, r'_m))`` float32, ``B' A' = c sum_i g_i s_i B_i
        A_i``.
    """
    out = {}
    for name, layer in more_layers(model).items():
        g = gates[name].float()
        keep = torch.nonzero(g > 0).flatten()
        coef = layer.output_scale * g[keep] * layer.bank.scaling.float().cpu()[keep]
        a = layer.bank.A.float().cpu()[keep]
        b = layer.bank.B.float().cpu()[:, keep] * coef
        out[name] = (a.contiguous(), b.contiguous())
    return out


def write_peft_adapter(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]], out_dir: Path, base_model: str
) -> dict[str, int]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's layout); return
    ranks.
    """
    ranks = {m: int(a.shape[0]) for m, (a, _) in factors.items()}
    empty = [m for m, r in ranks.items() if r == 0]
    if empty:
        raise CheckpointError(
            f"no expert of {empty[0]} was ever selected; use more calibration data"
        )
    config = peft_adapter_config(ranks, base_model).to_dict()
    config["task_type"] = "CAUSAL_LM"  # AutoPeftModelForCausalLM / PeftModelForCausalLM
    text = json.dumps(config, indent=2, sort_keys=True, default=list) + "\n"
    state = {}
    for m, (a, b) in factors.items():
        state[f"base_model.model.{m}.lora_A.weight"] = a
        state[f"base_model.model.{m}.lora_B.weight"] = b
    atomic_write(
        out_dir / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"})
    )
    atomic_write_text(out_dir / CONFIG_FILE, text)
    return ranks


def _data_rows(cfg: RunConfig, tok: Any, limit: int) -> tuple[list[Any], list[Any]]:
    """(calibration rows: the run's training rows, first ``limit`` in seeded order; held-out
    rows).
    """
    data, split = training_split(cfg)
    train = [i for part in split.partitions for i in part]
    random.Random(cfg.train.seed).shuffle(train)
    n = cfg.model.max_seq_len
    calib = [encode_for_training(tok, data.examples[i], n) for i in train[:limit]]
    held = [encode_for_training(tok, data.examples[i], n) for i in split.heldout]
    return calib, held


def _check_output(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--output_dir {out_dir} exists and is not empty; choose a new folder")


def load_run_model(run_dir: str | Path, cfg: RunConfig, mcfg: ModelConfig) -> tuple[Any, Any, Any]:
    """Rebuild any method's final model from its run dir: base + ``method.prepare`` + last
    checkpoint.

    Returns:
        ``(model, tokenizer, method)``.

    Raises:
        CheckpointError: the run completed no round, or its state does not fit the pool.
    """
    ckpt = RunDir(run_dir).load_checkpoint()
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no completed round; train (or --resume) it first")
    built = assemble(cfg, mcfg)
    model, method = built.model, built.method
    method.load_trainable_state(
        model, {k: torch.from_numpy(v.copy()) for k, v in ckpt.routers.items()}
    )
    if more_layers(model):
        set_quotas(model, ckpt.quotas)
    return model, built.tokenizer, method


def export_merged(
    run_dir: str | Path,
    output_dir: str | Path,
    *,
    calibration_limit: int = 64,
    eval_limit: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Export a run as one PEFT LoRA; return the report (also ``export_report.json``).

    Routing methods (smartfed, smartfed_no_eeqa, mole) are folded with their average routing over
    ``calibration_limit`` training rows; LoRA baselines (fedit, ffa_lora, merge, merge_fedit,
    pool_fedit, lorahub) already are one LoRA and are written as is (``gates`` empty).

    Args:
        run_dir: a ``smartfed train`` output dir with at least one completed round.
        output_dir: new (or empty) folder for the adapter and ``export_report.json``.
        calibration_limit: training rows used to average the routing (N) [D: 64].
        eval_limit: task examples for the accuracy comparison (0 = held-out loss only).
        batch_size: rows per forward.

    Raises:
        ConfigError / CheckpointError / PoolCompatibilityError: bad run dir, output dir or pool.
    """
    if calibration_limit < 1:
        raise ConfigError(f"--calibration_limit={calibration_limit} must be >= 1")
    out = Path(output_dir)
    _check_output(out)
    t0 = time.perf_counter()
    cfg = run_config(run_dir)
    mcfg = ModelConfig(**{**cfg.model.__dict__, "dtype": "float32"})  # fold and compare in fp32 [D]
    routed, tok, method = load_run_model(run_dir, cfg, mcfg)
    calib, held = _data_rows(cfg, tok, calibration_limit)
    pad = tok.pad_token_id
    gates: dict[str, torch.Tensor] = {}
    if more_layers(routed):
        gates = average_gates(routed, calib, batch_size, pad)
        factors = fold_to_lora(routed, gates)
    else:
        params = lora_parameters(routed)
        factors = {
            k.removesuffix(".lora_A.weight"): (
                p.detach().float().cpu(),
                params[k.replace(".lora_A.", ".lora_B.")].detach().float().cpu(),
            )
            for k, p in params.items()
            if k.endswith(".lora_A.weight")
        }
    ranks = write_peft_adapter(factors, out, base_model_reference(mcfg))
    exported = load_adapter(load_base_model(mcfg)[0], out)
    eval_rows, eval_on = (held, "heldout") if held else (calib, "calibration")
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "method": method.name,
        "output_dir": str(out),
        "calibration_examples": len(calib) if gates else 0,
        "eval_rows": len(eval_rows),
        "loss_on": eval_on,
        "ranks": ranks,
        "total_rank": sum(ranks.values()),
        "experts_total": sum(int(g.numel()) for g in gates.values()),
        "lora_params": sum(int(a.numel() + b.numel()) for a, b in factors.values()),
        "loss_routed": evaluate_loss(routed, eval_rows, batch_size, pad),
        "loss_exported": evaluate_loss(exported, eval_rows, batch_size, pad),
    }
    report["loss_increase"] = report["loss_exported"] - report["loss_routed"]
    report["gates"] = {m: [round(float(x), 8) for x in g] for m, g in gates.items()}
    if eval_limit > 0:
        report.update(
            _accuracy(cfg, {"routed": routed, "exported": exported}, tok, eval_limit, batch_size)
        )
    report["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / REPORT_FILE, report)
    atomic_write_text(out / CARD_FILE, model_card(cfg, report, base_model_reference(mcfg)))
    log.info(
        "exported %s -> %s (rank %d, loss %.4f run model vs %.4f exported)",
        run_dir,
        out,
        report["total_rank"],
        report["loss_routed"],
        report["loss_exported"],
    )
    return report


def _accuracy(
    cfg: RunConfig, models: dict[str, Any], tok: Any, limit: int, batch_size: int
) -> dict[str, Any]:
    """Task accuracy of each model on the run's eval task (first ``limit`` examples)."""
    name = cfg.eval.eval_task or cfg.data.task
    if not name:
        return {
            "accuracy": None,
            "accuracy_note": "the run has no registered task (--dataset file)",
        }
    task = get_task(name)
    examples = select_examples(task, cfg.data.data_dir or None, limit)
    res: dict[str, Any] = {"eval_task": task.name, "eval_n": len(examples)}
    for key, model in models.items():
        outputs = generate_outputs(
            task,
            model,
            tok,
            examples,
            batch_size=batch_size,
            max_new_tokens=cfg.eval.max_new_tokens,
        )
        records = score_outputs(task, examples, outputs)
        res[f"{task.metric}_{key}"] = sum(float(r["correct"]) for r in records) / max(
            len(records), 1
        )
    return res


def base_model_reference(mcfg: ModelConfig) -> str:
    """What ``base_model_name_or_path`` must say for PEFT to load the base: a hub id as given,
    else the absolute local directory (a GGUF / ``default`` = its converted safetensors copy)."""
    location = local_model_dir(mcfg).location
    path = Path(location).expanduser()
    return str(path.resolve()) if path.exists() else location
