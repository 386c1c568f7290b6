"""``smartfed eval``: score a base model, a PEFT adapter, a SmartFed run or a predictions file on a
task.
"""

from __future__ import annotations

import argparse
import json

from smartfed.cli.config_flags import add_field_flags


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``eval`` subcommand."""
    from smartfed.data.tasks import list_tasks

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model, adapter, run or predictions file on a registered benchmark",
        description="Evaluate on a registered task; writes <task>.records.jsonl and "
        f"<task>.summary.json. Tasks: {', '.join(list_tasks())}. "
        "Data folder: --data_dir, else $SMARTFED_DATA, else ./data.",
    )
    parser.add_argument("--task", required=True, help="registered task name (see above)")
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        metavar="MODEL",
        help="hub id, local dir, .gguf or `default` (default: the run's model, else `default`)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--adapter",
        default="",
        metavar="DIR",
        help="PEFT adapter folder to apply to the base model",
    )
    src.add_argument(
        "--run",
        default="",
        metavar="RUN_DIR",
        help="SmartFed run directory (config.json + checkpoint/)",
    )
    src.add_argument(
        "--predictions",
        default="",
        metavar="FILE.jsonl",
        help='score a JSONL file of {"index", "prediction"} lines instead of generating (no model)',
    )
    parser.add_argument(
        "--limit", type=int, default=0, metavar="N", help="first N eval examples only; 0 = all"
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        metavar="DIR",
        help="where the records and summary go (default: RUN/eval with --run, else eval_results, "
        "which git ignores)",
    )
    parser.add_argument(
        "--data_dir",
        default="",
        metavar="DIR",
        help="data folder of the file-backed tasks (layout and download: docs/data.md)",
    )
    parser.add_argument(
        "--eval_batch_size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=8,
        metavar="N",
        help="prompts decoded together (default 8; --batch_size is an old spelling)",
    )
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=0,
        metavar="N",
        help="generation cap; 0 = the task's default",
    )
    add_field_flags(parser, ("dtype",))
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA, else Apple MPS, else CPU; the default, as in train), cpu, cuda, cuda:N "
        "or mps",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing results for this task"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the summary line."""
    from smartfed.eval.harness import EvalRequest, run_eval

    request = EvalRequest(
        task=args.task,
        model_name_or_path=args.model_name_or_path,
        adapter=args.adapter,
        run=args.run,
        predictions=args.predictions,
        limit=args.limit,
        output_dir=args.output_dir or (f"{args.run}/eval" if args.run else "eval_results"),
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        device=args.device,
        overwrite=args.overwrite,
    )
    summary, paths = run_eval(request)
    lo, hi = summary["ci95"]
    print(
        f"{summary['task']} {summary['metric']} = {summary['value']:.4f} "
        f"(95% CI {lo:.4f}-{hi:.4f}, n={summary['n']}, {summary['seconds']:.0f} s)"
    )
    for p in paths:
        print(p)
    if args.verbose:
        print(json.dumps(summary, indent=2))
    return 0
