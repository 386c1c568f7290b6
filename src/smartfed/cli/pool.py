"""``smartfed pool``: list, add, inspect and verify the LoRA pool (README, Using it).

More actions plug in through ``POOL_ACTIONS`` (action -> module exposing
``register(pool_subparsers)``), the same way ``smartfed.cli.main.COMMANDS`` works; installed
extensions add theirs through ``smartfed.pool_commands`` entry points (e.g. ``smartfed pool
package`` of ``smartfed_bench``).
"""

from __future__ import annotations

import argparse
from typing import Any

from smartfed.cli.config_flags import add_config_flags, config_from_args
from smartfed.config import ModelConfig, RunConfig

# Extra ``smartfed pool`` actions living in other modules (e.g. "train": "smartfed.cli.pool_train").
POOL_ACTIONS: dict[str, str] = {
    "train": "smartfed.cli.pool_train",
}


def register(subparsers: Any) -> None:
    """Add ``smartfed pool {list,add,remove,inspect,verify,...}``."""
    import importlib

    from smartfed.plugins import POOL_COMMANDS, load

    parser = subparsers.add_parser("pool", help="manage, inspect and verify the LoRA pool")
    parser.set_defaults(handler=lambda _args: _usage(parser))
    actions = parser.add_subparsers(dest="pool_action", metavar="ACTION", parser_class=type(parser))
    _register_list(actions)
    _register_add(actions)
    _register_remove(actions)
    _register_inspect(actions)
    _register_verify(actions)
    for module_name in POOL_ACTIONS.values():
        importlib.import_module(module_name).register(actions)
    for _, register_extension in load(POOL_COMMANDS):
        register_extension(actions)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _registry_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", default="", help="registry JSON (default: $SMARTFED_CACHE/registry.json)"
    )


def _register_list(actions: Any) -> None:
    p = actions.add_parser("list", help="list registered adapters")
    _registry_flag(p)
    p.set_defaults(handler=_cmd_list)


def _register_add(actions: Any) -> None:
    p = actions.add_parser("add", help="register NAME -> SOURCE (a local PEFT dir or a hub id)")
    p.add_argument("name", help="pool name, used in --lora_pool")
    p.add_argument("source", help="local PEFT adapter directory or hub id owner/name")
    p.add_argument(
        "--force", action="store_true", help="replace NAME when it is registered for another source"
    )
    _registry_flag(p)
    p.set_defaults(handler=_cmd_add)


def _register_remove(actions: Any) -> None:
    p = actions.add_parser("remove", help="unregister NAME")
    p.add_argument("name")
    _registry_flag(p)
    p.set_defaults(handler=_cmd_remove)


def _register_inspect(actions: Any) -> None:
    p = actions.add_parser(
        "inspect", help="ranks, alpha, targets, experts per matrix, router size and bytes"
    )
    add_config_flags(p, sections=("model", "pool", "router", "fed"))
    p.set_defaults(handler=_cmd_inspect)


def _register_verify(actions: Any) -> None:
    p = actions.add_parser(
        "verify",
        help="check MoRE with unit routing equals PEFT for every adapter (float32 by default)",
    )
    add_config_flags(p, sections=("model", "pool"))
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max relative logit error (default: 5e-5 in float32; in bf16/fp16 3e-2 or 2x PEFT's "
        "own error against float32, whichever is larger)",
    )
    p.set_defaults(handler=_cmd_verify)


def _cmd_list(args: argparse.Namespace) -> int:
    from smartfed.pool.registry import load_registry, registry_path

    entries = load_registry(args.registry)
    if not entries:
        print(
            f"no adapters registered in {registry_path(args.registry)}; "
            "add one with `smartfed pool add NAME SOURCE`"
        )
        return 0
    width = max(len(n) for n in entries)
    for entry in entries.values():
        print(f"{entry.name:<{width}}  {entry.kind:<5}  {entry.source}")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smartfed.pool.adapter import LoraAdapter
    from smartfed.pool.registry import add_entry, registry_path

    if Path(args.source).expanduser().exists():  # read it now: a broken adapter fails here
        adapter = LoraAdapter.from_peft_dir(args.source, name=args.name)
        detail = f"r={adapter.rank}, {len(adapter.modules)} matrices"
    else:
        detail = "hub id, fetched on first use"
    entry = add_entry(args.name, args.source, args.registry, replace=args.force)
    print(
        f"registered {entry.name} -> {entry.source} ({entry.kind}, {detail}) "
        f"in {registry_path(args.registry)}"
    )
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from smartfed.pool.registry import remove_entry

    remove_entry(args.name, args.registry)
    print(f"removed {args.name}")
    return 0


def _load_pool(cfg: RunConfig) -> Any:
    from smartfed.pool.pool import resolve_pool

    return resolve_pool(cfg.pool.sources, cfg.pool.registry)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from smartfed.cli.pool_report import format_pool

    cfg = config_from_args(args)
    pool = _load_pool(cfg)
    if args.cfg__router__topk_experts is not None or args.config:  # a K the user asked for
        pool.check_topk(cfg.router.topk_experts)
    if args.cfg__model__model_name_or_path is not None:  # validate only when a model was named
        from smartfed.model.base import load_base_model
        from smartfed.pool.validate import validate_pool

        model, _ = load_base_model(cfg.model)
        validate_pool(pool, model)
        print(f"pool fits {cfg.model.model_name_or_path}")
    for line in format_pool(pool, cfg.router, cfg.fed):
        print(line)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from smartfed.model.base import load_base_model
    from smartfed.model.dtype import resolve_model_config
    from smartfed.model.verify import verify_pool

    # [D] verify runs in float32 unless --dtype (or a --config file) says otherwise.
    cfg = config_from_args(args, base=RunConfig(model=ModelConfig(dtype="float32")))
    pool = _load_pool(cfg)
    mcfg = resolve_model_config(cfg.model)  # --dtype auto: the dtype it checks, printed below
    model, tokenizer = load_base_model(mcfg)
    checks = verify_pool(model, tokenizer, pool, tolerance=args.tolerance)
    print(f"MoRE vs PEFT on {mcfg.model_name_or_path} ({mcfg.dtype}), unit routing, c=1")
    width = max(8, *(len(c.name) for c in checks))
    low = checks[0].error_vs_fp32 is not None
    extra = "  vs_fp32_peft  peft_own_err" if low else ""
    print(f"{'adapter':<{width}}  max_rel_error  adapter_effect{extra}  bound     result")
    for c in checks:
        cols = f"  {c.error_vs_fp32:12.3e}  {c.peft_error_vs_fp32:12.3e}" if low else ""
        print(
            f"{c.name:<{width}}  {c.max_rel_error:13.3e}  {c.effect:14.3e}{cols}  "
            f"{c.bound:8.1e}  {'PASS' if c.passed else 'FAIL'}"
        )
    failed = sum(not c.passed for c in checks)
    ok = failed == 0
    print(
        f"verify: all {len(checks)} adapters pass"
        if ok
        else f"verify: {failed} of {len(checks)} adapters fail"
    )
    return 0 if ok else 1
