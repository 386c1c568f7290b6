"""``smartfed bench``: methods side by side on the cpu-mini suite (README, Using it)."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = (
    "examples:\n"
    "  smartfed bench --suite cpu-mini --preset quick            # 7 methods x 3 seeds + controls\n"
    "  smartfed bench --methods smartfed,fedit --seeds 1 --variants main\n"
    "  smartfed bench --preset full --output_dir runs/bench-full --results bench-full.json\n"
    "  smartfed bench --preset v2    # tuned: equal lr sweep on val, 3 seeds, 2 pools, 4 tasks\n"
    "An interrupted bench continues where it stopped when run again with the same flags."
)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    from smartfed_bench.bench import PRESETS, VARIANTS

    bench = subparsers.add_parser(
        "bench",
        help="run methods side by side on the cpu-mini suite",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--suite", default="cpu-mini", choices=["cpu-mini"])
    bench.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    bench.add_argument(
        "--methods", type=_csv, default=[], help="comma list (default: the preset's)"
    )
    bench.add_argument("--tasks", type=_csv, default=[], help="comma list of cpu-mini composites")
    bench.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 (default: the preset's)")
    bench.add_argument(
        "--variants",
        type=_csv,
        default=None,
        help=f"comma list of {', '.join(VARIANTS)} (default: the preset's)",
    )
    bench.add_argument("--model_name_or_path", default="default")
    bench.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float32", "float16"],
        help="base model dtype of every run and skill LoRA (default: the preset's: float32 for "
        "the v2 presets, bfloat16 else)",
    )
    bench.add_argument(
        "--output_dir",
        default="",
        help="run directories go here (default: runs/bench for quick, runs/bench-<preset> else)",
    )
    bench.add_argument(
        "--results",
        default="",
        help="results JSON, Markdown and PNGs beside it (default: benchmarks/results/"
        "cpu-mini.json for quick, benchmarks/results/cpu-mini-<preset>.json else)",
    )
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run-config key for every run (e.g. num_rounds=20)",
    )
    bench.add_argument(
        "--force",
        action="store_true",
        help="allow --results to replace a file that is not this preset's bench results",
    )
    bench.add_argument(
        "--report_only",
        action="store_true",
        help="run nothing: rebuild the results JSON, table and plots from --output_dir",
    )
    bench.set_defaults(handler=run_bench_cli, preset_fixed=None)


def _overrides(pairs: list[str]) -> dict[str, str]:
    from smartfed.errors import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set num_rounds=20")
        out[key.strip()] = value.strip()
    return out


def check_results_path(path: str, preset: str, force: bool) -> None:
    """Refuse to replace a file at ``--results`` unless it is this preset's own bench results.

    A bench rewrites its results after every run, so its own earlier file is expected; anything
    else (another preset's results, a user's file) needs ``--force``.

    Raises:
        ConfigError: the file exists, is not ``preset``'s bench results, and ``force`` is off.
    """
    import json
    from pathlib import Path

    from smartfed.errors import ConfigError

    target = Path(path)
    if force or not target.exists():
        return
    try:
        own = json.loads(target.read_text(encoding="utf-8")).get("preset") == preset
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        own = False
    if not own:
        raise ConfigError(
            f"--results {path} exists and is not the results of a '{preset}' bench: "
            "choose another path, or pass --force to replace it"
        )


def progress(i: int, n: int, spec: Any) -> None:
    print(f"[{i + 1}/{n}] {spec.task} {spec.variant} {spec.method} seed {spec.seed}", flush=True)


def run_bench_cli(args: argparse.Namespace) -> int:
    """Run the grid; print the Markdown table; exit 1 if a run failed."""
    from pathlib import Path

    from smartfed.config import ModelConfig, RunConfig
    from smartfed_bench.bench import run_bench
    from smartfed_bench.presets import get_preset

    quick = args.preset == "quick"
    args.output_dir = args.output_dir or ("runs/bench" if quick else f"runs/bench-{args.preset}")
    args.results = args.results or (
        "benchmarks/results/cpu-mini.json"
        if quick
        else f"benchmarks/results/cpu-mini-{args.preset}.json"
    )
    over = _overrides(args.set)
    RunConfig.from_flat(over)  # bad keys/values fail here, before any work
    check_results_path(args.results, args.preset, args.force)
    dtype = args.dtype or get_preset(args.preset).dtype
    model_cfg = ModelConfig(model_name_or_path=args.model_name_or_path, dtype=dtype)
    if args.report_only:
        from smartfed_bench.bench import rebuild_results

        path = rebuild_results(args.preset, args.output_dir, args.results, model_cfg)
        print(path.with_suffix(".md").read_text(encoding="utf-8"))
        print(f"results: {path}")
        return 0
    result = run_bench(
        args.preset,
        args.output_dir,
        args.results,
        model_cfg,
        methods=args.methods,
        tasks=args.tasks,
        seeds=args.seeds,
        variants=args.variants,
        overrides=over,
        on_run=progress,
    )
    print(Path(result.results_path).with_suffix(".md").read_text(encoding="utf-8"))
    print(f"results: {result.results_path} ({result.seconds:.0f} s)")
    return 1 if result.failed else 0
