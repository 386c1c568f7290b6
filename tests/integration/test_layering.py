"""Layering (docs/ARCHITECTURE.md): every import of ``smartfed`` (module-level, function-local and
``TYPE_CHECKING``) goes to its own layer or a lower one, the package graph has no cycles, the
library never imports the experiment (``smartfed_bench``), the experiment uses only public names,
only ``smartfed.fed`` imports flwr, and the EEQA allocator and the config import no torch.

The checker works on module sources, so the tests at the end feed it synthetic modules with an
upward import and a cycle and check that it reports them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import smartfed
import smartfed_bench

ROOT = Path(smartfed.__file__).parent

LAYERS: dict[str, int] = {
    # 1: stdlib only (config: + tomllib); the sandbox is stdlib only and scores tasks of layer 4.
    "smartfed": 1,
    "smartfed.config": 1,
    "smartfed.errors": 1,
    "smartfed.log": 1,
    "smartfed.files": 1,
    "smartfed.meta": 1,
    "smartfed.plugins": 1,
    "smartfed.update": 1,
    "smartfed.quota": 1,
    "smartfed.eval.sandbox": 1,
    # 2: torch, safetensors, peft I/O
    "smartfed.pool": 2,
    "smartfed.experts": 2,
    # 3: torch, transformers
    "smartfed.routing": 3,
    "smartfed.model": 3,
    "smartfed.quota.importance": 3,
    # 4: everything ML that is not transport
    "smartfed.data": 4,
    "smartfed.train": 4,
    "smartfed.train.client": 4,  # one client round: a method (methods/) + local training (train/)
    "smartfed.eval": 4,
    "smartfed.io": 4,
    "smartfed.methods": 4,
    "smartfed.report": 4,
    # 5: transport (the only flwr user); 6: assembly; 7: the command line
    "smartfed.fed": 5,
    "smartfed.recipes": 6,
    "smartfed.cli": 7,
}
"""Unit -> layer, as docs/ARCHITECTURE.md lists them. A module belongs to the longest unit that
prefixes it; ``smartfed.eval.sandbox_child`` and ``sandbox_procs`` belong to the sandbox unit."""

UNIT_ALIASES = {
    "smartfed.eval.sandbox_child": "smartfed.eval.sandbox",
    "smartfed.eval.sandbox_procs": "smartfed.eval.sandbox",
}


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def package_sources(root: Path) -> dict[str, str]:
    """Dotted module name -> source of every module under package dir ``root``."""
    return {_module_name(p, root): p.read_text(encoding="utf-8") for p in root.rglob("*.py")}


def _imports_of(source: str, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """``(base, [base.name, ...])`` per import statement, absolute (relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [f"{base}.{a.name}" for a in node.names]


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every name a source imports anywhere (top level, in functions, under TYPE_CHECKING), as
    absolute dotted names; ``from X import Y`` gives both ``X`` and ``X.Y``."""
    names: set[str] = set()
    for base, members in _imports_of(source, module, is_package):
        names |= {base, *members}
    return names


def unit_of(module: str, layers: Mapping[str, int] = LAYERS) -> str | None:
    """The layering unit of a module: the longest key of ``layers`` that prefixes it."""
    module = UNIT_ALIASES.get(module, module)
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # a top-level key (the package root) matches only itself
        if ".".join(parts[:n]) in layers:
            return ".".join(parts[:n])
    return module if module in layers else None


def import_edges(sources: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """``(importer, imported module)`` for every import between modules of ``sources``."""
    packages = {m for m in sources if any(o.startswith(m + ".") for o in sources)}
    for module, source in sources.items():
        for base, members in _imports_of(source, module, module in packages):
            submodules = [m for m in members if m in sources]  # from package import module
            for name in submodules or [base]:
                if name in sources and name != module:
                    yield module, name


def layer_violations(
    sources: Mapping[str, str], layers: Mapping[str, int] = LAYERS
) -> list[str]:
    """One line per import of a higher layer, and per module that belongs to no layer."""
    out = [f"{m}: in no layer of docs/ARCHITECTURE.md" for m in sources if unit_of(m) is None]
    for module, target in import_edges(sources):
        a, b = unit_of(module, layers), unit_of(target, layers)
        if a and b and layers[b] > layers[a]:
            out.append(f"{module} (layer {layers[a]}) imports {target} (layer {layers[b]})")
    return sorted(set(out))


def unit_cycles(sources: Mapping[str, str], layers: Mapping[str, int] = LAYERS) -> list[list[str]]:
    """Strongly connected components of more than one unit in the unit import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for module, target in import_edges(sources):
        a, b = unit_of(module, layers), unit_of(target, layers)
        if a and b and a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


SOURCES = package_sources(ROOT)
BENCH_SOURCES = package_sources(Path(smartfed_bench.__file__).parent)


def test_every_import_goes_to_the_same_or_a_lower_layer() -> None:
    assert not layer_violations(SOURCES), "\n".join(layer_violations(SOURCES))


def test_the_package_import_graph_has_no_cycles() -> None:
    assert not unit_cycles(SOURCES)


def test_no_module_imports_itself_through_others() -> None:
    """Finer than the packages: no cycle between single modules either (function-local imports
    included), such as two recipes importing each other for a shared constant."""
    assert not unit_cycles(SOURCES, dict.fromkeys(SOURCES, 1))


def test_the_library_never_imports_the_experiment() -> None:
    users = [
        m
        for m, src in SOURCES.items()
        if any(n.split(".")[0] == "smartfed_bench" for n in imported_names(src, m))
    ]
    assert not users, users


def test_the_experiment_uses_only_public_names_of_the_library() -> None:
    private = sorted(
        f"{m}: {n}"
        for m, src in BENCH_SOURCES.items()
        for n in imported_names(src, m)
        if n.split(".")[0] == "smartfed" and any(p.startswith("_") for p in n.split(".")[1:])
    )
    assert not private, private


def test_the_experiment_has_no_import_cycles() -> None:
    modules = dict.fromkeys(BENCH_SOURCES, 1)
    assert not unit_cycles(BENCH_SOURCES, modules)


# --- the checker can fail ------------------------------------------------------------------------


def test_checker_reports_an_upward_import_even_inside_a_function() -> None:
    sources = {
        "smartfed.config": "import json\n",
        "smartfed.pool.adapter": "def load():\n    from smartfed.fed.wire import pack\n",
        "smartfed.fed.wire": "from smartfed.pool.adapter import load\n",
        "smartfed.cli.main": "from smartfed.fed import wire\n",
    }
    assert layer_violations(sources) == [
        "smartfed.pool.adapter (layer 2) imports smartfed.fed.wire (layer 5)"
    ]


def test_checker_reports_a_relative_upward_import_and_an_unplaced_module() -> None:
    sources = {
        "smartfed.data.tasks": "from ..recipes.bench import run\n",
        "smartfed.recipes.bench": "",
        "smartfed.recipes": "",
        "smartfed.data": "",
        "smartfed.gadgets": "",
    }
    assert layer_violations(sources) == [
        "smartfed.data.tasks (layer 4) imports smartfed.recipes.bench (layer 6)",
        "smartfed.gadgets: in no layer of docs/ARCHITECTURE.md",
    ]


def test_checker_reports_a_cycle_between_packages_of_one_layer() -> None:
    sources = {
        "smartfed.data.tasks": "from smartfed.eval.harness import score\n",
        "smartfed.eval.harness": "def f():\n    import smartfed.data.tasks\n",
        "smartfed.eval.sandbox": "",
        "smartfed.data.tasks.code": "from smartfed.eval.sandbox import run_python\n",
    }
    assert not layer_violations(sources)  # same layer: allowed by the layering ...
    assert unit_cycles(sources) == [["smartfed.data", "smartfed.eval"]]  # ... but a cycle


def test_checker_reports_a_cycle_between_two_modules_hidden_in_functions() -> None:
    sources = {
        "smartfed.recipes.train": "def run():\n    from smartfed.recipes.deploy_local import go\n",
        "smartfed.recipes.deploy_local": "def env():\n    from smartfed.recipes.train import ENV\n",
    }
    assert not layer_violations(sources) and not unit_cycles(sources)  # one unit, one layer
    modules = dict.fromkeys(sources, 1)
    assert unit_cycles(sources, modules) == [sorted(sources)]


@pytest.mark.parametrize("name", ["smartfed.cli.main", "smartfed.fed.wire", "smartfed.config"])
def test_the_real_graph_is_not_empty(name: str) -> None:
    assert name in SOURCES and any(a == name for a, _ in import_edges(SOURCES))


# --- third-party imports -------------------------------------------------------------------------


def _imports(name: str) -> set[str]:
    return imported_names(SOURCES[name], name)


def test_only_fed_imports_flwr() -> None:
    offenders = []
    for name in SOURCES:
        flwr = {i for i in _imports(name) if i == "flwr" or i.startswith("flwr.")}
        if flwr and not name.startswith("smartfed.fed"):
            offenders.append(f"{name}: {sorted(flwr)[0]}")
    assert not offenders, offenders


def test_flwr_datasets_only_in_partition() -> None:
    users = {n for n in SOURCES if any(i.startswith("flwr_datasets") for i in _imports(n))}
    assert users <= {"smartfed.data.partition"}, users


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in SOURCES:
            continue
        seen.add(name)
        todo += [i for i in _imports(name) if i.startswith("smartfed")]
        todo += [i.rpartition(".")[0] for i in _imports(name) if i.startswith("smartfed")]
    return seen


def test_allocator_and_config_import_no_torch() -> None:
    for start in ("smartfed.quota.allocate", "smartfed.quota.schedule", "smartfed.config"):
        for name in _closure(start):
            heavy = {i for i in _imports(name) if i.split(".")[0] in ("torch", "flwr", "numpy")}
            assert not heavy, f"{start} -> {name} imports {sorted(heavy)}"


def test_fed_apps_stay_thin() -> None:
    for app in ("client_app.py", "server_app.py"):
        lines = (ROOT / "fed" / app).read_text(encoding="utf-8").splitlines()
        assert len(lines) <= 80, f"fed/{app} has {len(lines)} lines"
