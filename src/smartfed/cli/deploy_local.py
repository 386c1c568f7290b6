"""``smartfed deploy-local``: run a job on a loopback SuperLink + N SuperNodes (deployment).

Each SuperNode gets a worker process that keeps the model loaded across rounds; everything started
is stopped at the end (docs/deployment.md, sections 2 and 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from smartfed.cli.config_flags import add_config_flags, config_from_args


def register(subparsers: Any) -> None:
    """Add the ``deploy-local`` subcommand."""
    parser = subparsers.add_parser(
        "deploy-local",
        help="run a job through a local SuperLink and N SuperNodes (one model-holding worker each)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--num_supernodes",
        type=int,
        default=None,
        metavar="N",
        help="SuperNodes to start (one partition each); default: --num_clients",
    )
    add_config_flags(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Resolve the config (engine = deployment) and run it."""
    from smartfed.recipes.train import run_train

    cfg = config_from_args(args)
    if args.num_supernodes is not None:
        fed = dataclasses.replace(cfg.fed, num_clients=args.num_supernodes)
        cfg = dataclasses.replace(cfg, fed=fed)
    cfg = dataclasses.replace(
        cfg, fed=dataclasses.replace(cfg.fed, engine="deployment", superlink="")
    )
    summary = run_train(cfg)
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {cfg.output_dir}")
    return 0
