"""The model card (``README.md``) of an exported adapter: base model, pool, method, data,
metrics and how to load it with PEFT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smartfed import __version__
from smartfed.config import RunConfig


def model_card(cfg: RunConfig, report: dict[str, Any], base: str) -> str:
    """The adapter's ``README.md``: what it is, where it came from, how well, how to load it."""
    pool = ", ".join(f"`{Path(s).name or s}`" for s in cfg.pool.sources) or "none"
    data = cfg.data.dataset or cfg.data.task or "?"
    acc = {
        k: v for k, v in report.items() if k.endswith(("_routed", "_exported")) and k[:4] != "loss"
    }
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base}",
        "tags: [lora, smartfed, federated-learning]",
        "---",
        "",
        f"# LoRA exported from a SmartFed run (`{cfg.train.method}`)",
        "",
        f"- **Base model**: `{cfg.model.model_name_or_path}` (loaded from `{base}`).",
        f"- **Pool** (source LoRAs whose rank-one experts were routed): {pool}.",
        f"- **Method**: `{cfg.train.method}`, {cfg.fed.num_rounds} federated rounds, "
        f"{cfg.fed.num_clients} clients ({cfg.fed.sample_clients} per round), top-K "
        f"{cfg.router.topk_experts}, EEQA {'on' if cfg.quota.enable_eeqa else 'off'}.",
        f"- **Training data**: `{data}`; routing averaged over {report['calibration_examples']} "
        "training rows, then folded exactly into one LoRA of total rank "
        f"{report['total_rank']} (per-matrix ranks in `adapter_config.json`).",
        f"- **Run directory**: `{report['run_dir']}`; made with smartfed {__version__}.",
        "",
        "## Metrics",
        "",
        "| measured on | routed run model | this adapter |",
        "|---|---|---|",
        f"| held-out loss ({report['loss_on']} rows, n={report['eval_rows']}) | "
        f"{report['loss_routed']:.4f} | {report['loss_exported']:.4f} |",
    ]
    for key in sorted(k for k in acc if k.endswith("_routed")):
        name = key.removesuffix("_routed")
        lines.append(
            f"| {name} on `{report.get('eval_task')}` (n={report.get('eval_n')}) | "
            f"{acc[key]:.4f} | {acc.get(name + '_exported', float('nan')):.4f} |"
        )
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        "merged = model.merge_and_unload()  # optional: a plain transformers model",
        "```",
        "",
        "`export_report.json` holds every number above and the average gate of each expert.",
        "",
    ]
    return "\n".join(lines)
