"""``smartfed train``: a federated SmartFed run (flags generated from the run configuration)."""

from __future__ import annotations

import argparse
from typing import Any

from smartfed.cli.config_flags import TAGS_EPILOG, add_config_flags, config_from_args
from smartfed.errors import SmartFedError

EPILOG = (
    "examples:\n"
    "  smartfed train --model_name_or_path default --lora_pool zh_chat,math --task math23k \\\n"
    "      --num_clients 20 --sample_clients 2 --num_rounds 20 --local_steps 10 \\\n"
    "      --batch_size 16 --learning_rate 5e-4 --topk_experts 32 --enable_eeqa \\\n"
    "      --output_dir runs/zh_math\n"
    "  smartfed train --config run.toml --num_rounds 30 --resume   # continue a run\n"
    f"{TAGS_EPILOG}\n"
    "The run directory holds config.json, metrics.jsonl, summary.json and checkpoint/;\n"
    "`smartfed report RUN_DIR` turns it into report.md and plots.\n"
)


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="federated SmartFed training (Flower simulation or deployment)",
        description=__doc__.splitlines()[0].replace("``", "`"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(parser)
    parser.set_defaults(handler=handle)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A few readable lines about a finished run (the full record stays in summary.json)."""
    from smartfed.quota.allocate import describe_quotas

    def num(key: str, fmt: str) -> str:
        value = summary.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "n/a"

    lines = [
        f"{summary.get('method', '?')}: {summary.get('rounds')} of {summary.get('num_rounds')} "
        f"rounds, {num('wall_s', '.0f')} s, {summary.get('bytes_total', 0) / 1e6:.2f} MB sent, "
        f"{num('energy_kwh', '.2e')} kWh",
        f"final train loss {num('final_train_loss', '.4f')}, "
        f"held-out loss {num('final_eval_loss', '.4f')}",
    ]
    metrics = {
        k.removeprefix("final_"): v
        for k, v in summary.items()
        if k.startswith("final_")
        and k not in ("final_train_loss", "final_eval_loss", "final_quotas", "final_eval_n")
        and isinstance(v, int | float)
    }
    for name, value in metrics.items():
        lines.append(
            f"final {name} on {summary.get('eval_task', '?')}: {value:.4f} "
            f"(n={summary.get('final_eval_n', '?')})"
        )
    if isinstance(summary.get("final_quotas"), dict) and summary["final_quotas"]:
        lines.append(f"quotas: {describe_quotas(summary['final_quotas'])}")
    return lines


def handle(args: argparse.Namespace) -> int:
    """Resolve the config and run the job; print a short summary."""
    from smartfed.recipes.train import run_train

    cfg = config_from_args(args)
    eval_name = cfg.eval.eval_task or cfg.data.task
    if eval_name:  # a typo fails here, not after every round has trained
        from smartfed.data.tasks import get_task

        get_task(eval_name)
    from smartfed.fed.reaper import start_reaper

    start_reaper()  # Ray / SuperNodes end with this process, also after kill -9
    summary = run_train(cfg)
    for line in summary_lines(summary):
        print(line)
    print(f"run directory: {cfg.output_dir} (summary.json, metrics.jsonl; `smartfed report` plots)")
    check_learned(cfg.output_dir)
    return 0


class NothingLearnedError(SmartFedError):
    """Every round of a finished run ended without an accepted client update."""


def check_learned(run_dir: str) -> None:
    """Fail (exit 2) when no round accepted a client update: the routers never moved.

    Raises:
        NothingLearnedError: every metrics line has no accepted client (all failed or rejected).
    """
    from smartfed.io.rundir import RunDir

    rows = RunDir(run_dir).metrics()
    if rows and not any(r.get("clients") for r in rows):
        why = next((v for r in rows for v in (r.get("rejected") or {}).values()), "")
        failures = sum(int(r.get("failures", 0)) for r in rows)
        raise NothingLearnedError(
            f"no client update was accepted in any of {len(rows)} rounds ({failures} failed"
            f"{'; rejected: ' + why if why else ''}): the routers are the initial ones; see "
            f"{run_dir}/metrics.jsonl and the log above"
        )
