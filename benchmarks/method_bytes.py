"""Per-round bytes of every method: trainable-state sizes AND what the runtime counted in one round.

Usage: .venv/bin/python benchmarks/method_bytes.py --model default --rank 32 --out bytes.json
(``--model`` a local HF dir or ``default`` = SmolLM2-135M; the pool is two random PEFT LoRAs of
``--rank`` on q_proj/v_proj: sizes do not depend on the values). One round, 2 of 3 clients sampled,
in-process delivery (tests/integration/directgrid.py) through the real
driver/strategy/wire/ClientApp.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

METHODS = [
    "smartfed",
    "smartfed_no_eeqa",
    "fedit",
    "ffa_lora",
    "merge",
    "merge_fedit",
    "pool_fedit",
    "lorahub",
    "mole",
]


def make_pool(model: str, root: Path, rank: int) -> list[Path]:
    """Two random PEFT LoRAs (q_proj, v_proj, rank ``rank``, alpha 2r) for ``model``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from smartfed.config import ModelConfig
    from smartfed.model.base import load_base_model

    out = []
    for i in range(2):
        torch.manual_seed(i + 1)
        base, _ = load_base_model(ModelConfig(model_name_or_path=model, dtype="float32"))
        cfg = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        get_peft_model(base, cfg).save_pretrained(root / f"lora{i}")
        out.append(root / f"lora{i}")
    return out


def main() -> None:
    """Run one round per method and write the byte table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--out", default="method_bytes.json")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--lorahub_budget",
        type=int,
        default=2,
        help="LoRAHub candidates asked in the one round (2 = a 20-round run's share of 40)",
    )
    args = parser.parse_args()
    from flwr.supercore.task_identity import TaskIdentity
    from test_methods_one_round import run_one_round

    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0  # in-process run
    root = Path(tempfile.mkdtemp(prefix="method-bytes-"))
    if (
        args.model == "tiny"
    ):  # the test suite's tiny Llama and heterogeneous pool (tests/conftest.py)
        from factories import make_peft_adapter, make_tiny_llama

        make_tiny_llama(root / "tiny")
        args.model = str(root / "tiny")
        pool = [
            make_peft_adapter(Path(args.model), root / "a_qv", r=4, alpha=8, seed=1),
            make_peft_adapter(
                Path(args.model),
                root / "b_attn",
                r=8,
                alpha=16,
                use_rslora=True,
                seed=2,
                targets=("q_proj", "k_proj", "v_proj", "o_proj"),
            ),
            make_peft_adapter(
                Path(args.model),
                root / "c_mlp",
                r=2,
                alpha=4,
                seed=3,
                targets=("gate_proj", "up_proj", "down_proj", "v_proj"),
                rank_pattern={"down_proj": 3},
            ),
        ]
    else:
        pool = make_pool(args.model, root, args.rank)
    rows = {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        res = run_one_round(
            Path(args.model) if args.model != "default" else Path("default"),
            pool,
            root,
            method,
            topk_experts=min(args.topk, 4) if "tiny" in args.model else args.topk,
            dtype="bfloat16" if args.model == "default" else "float32",
            batch_size=2,
            local_steps=1,
            max_seq_len=32,
            lorahub_budget=args.lorahub_budget,
        )
        r = res["row"]
        rows[method] = {
            "state_bytes_fp32": res["state_bytes"],
            "tensors": res["keys"],
            "payload_down": r["payload_down"],
            "payload_up": r["payload_up"],
            "bytes_down": r["bytes_down"],
            "bytes_up": r["bytes_up"],
            "clients": len(r["clients"]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(method, rows[method], flush=True)
    Path(args.out).write_text(
        json.dumps({"model": args.model, "rank": args.rank, "methods": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
