"""Derived figures of a bench, recomputed from its results JSON alone.

Usage: python benchmarks/derived_figures.py [benchmarks/results/cpu-mini.json] [--json]

For every task (``main`` variant): the rounds, bytes, energy and wall time each method needs to
reach FedIT's final held-out loss and final task metric [P: the paper's 3.95x convergence, 31.47x
communication and 3.61x energy figures are ratios of this kind, FedIT's round-20 quality as the
target], the ratios FedIT / method, and each method's final metric minus FedIT's. With per-round
teacher-forced accuracy (preset ``v2``) also the to-target figures on it, and SmartFed minus each
baseline paired over seeds with its 95% t interval. Rounds are interpolated on the mean curve.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smartfed_bench.report import derive


def _fmt(x: float | None, unit: str = "x") -> str:
    return "never" if x is None else f"{x:.2f}{unit}"


def main() -> None:
    """Print the to-target table (or the derived JSON with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default="benchmarks/results/cpu-mini.json", type=Path)
    p.add_argument("--json", action="store_true", help="print the derived figures as JSON")
    args = p.parse_args()
    results = json.loads(args.results.read_text(encoding="utf-8"))
    derived = derive(results)
    if args.json:
        print(json.dumps(derived, indent=2, sort_keys=True))
        return
    for task, d in derived.items():
        metric = results["tasks"][task]["metric"]
        print(f"== {task} (reference: {d['reference']}) ==")
        for key in ("to_target_loss", f"to_target_{metric}", "to_target_eval_tf_em"):
            if key not in d:
                continue
            items = d.get(key) or {}
            if not items:
                print(f"{key}: no target (reference missing or its final {metric} is 0)")
                continue
            target = next(iter(items.values()))["target"]
            print(f"{key}: target {target:.4f}")
            print(
                f"  {'method':18} {'round':>6} {'MB':>9} {'x rounds':>9} {'x bytes':>9} "
                f"{'x energy':>9} {'x wall':>8}"
            )
            for name, it in items.items():
                mb = f"{it['bytes'] / 1e6:.2f}" if it["bytes"] else "-"
                rnd = f"{it['round']:.2f}" if it["reached"] else "never"
                print(
                    f"  {name:18} {rnd:>6} {mb:>9} "
                    f"{_fmt(it['ratio_rounds']):>9} {_fmt(it['ratio_bytes']):>9} "
                    f"{_fmt(it['ratio_energy']):>9} {_fmt(it['ratio_wall']):>8}"
                )
        delta = d.get(f"delta_{metric}_vs_{d['reference']}", {})
        print(f"final {metric} minus FedIT's (points):")
        for name, v in delta.items():
            print(f"  {name:18} {'-' if v is None else f'{100 * v:+.1f}'}")
        for key, comps in (d.get("paired") or {}).items():
            print(f"paired over seeds, final {key} (mean [95% t CI], n):")
            for name, c in comps.items():
                ci = "n/a" if c["lo"] is None else f"[{c['lo']:+.4f}, {c['hi']:+.4f}]"
                mean = "-" if c["mean"] is None else f"{c['mean']:+.4f}"
                print(f"  {name:30} {mean:>8} {ci:>22} {c['n']}")
        print()


if __name__ == "__main__":
    main()
