"""Layering (ARCHITECTURE.md): only smartfed.fed imports flwr; the EEQA allocator and the config
import no torch, not even through other smartfed modules."""

from __future__ import annotations

import ast
from pathlib import Path

import smartfed

ROOT = Path(smartfed.__file__).parent


def _imports(path: Path) -> set[str]:
    """Top-level and nested imports of a module, as absolute dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def test_only_fed_imports_flwr() -> None:
    offenders = []
    for name, path in MODULES.items():
        flwr = {i for i in _imports(path) if i == "flwr" or i.startswith("flwr.")}
        if flwr and not name.startswith("smartfed.fed"):
            offenders.append(f"{name}: {sorted(flwr)[0]}")
    assert not offenders, offenders


def test_flwr_datasets_only_in_partition() -> None:
    users = {
        n for n, p in MODULES.items() if any(i.startswith("flwr_datasets") for i in _imports(p))
    }
    assert users <= {"smartfed.data.partition"}, users


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        todo += [i for i in _imports(MODULES[name]) if i.startswith("smartfed")]
        todo += [i.rpartition(".")[0] for i in _imports(MODULES[name]) if i.startswith("smartfed")]
    return seen


def test_allocator_and_config_import_no_torch() -> None:
    for start in ("smartfed.quota.allocate", "smartfed.quota.schedule", "smartfed.config"):
        for name in _closure(start):
            heavy = {
                i for i in _imports(MODULES[name]) if i.split(".")[0] in ("torch", "flwr", "numpy")
            }
            assert not heavy, f"{start} -> {name} imports {sorted(heavy)}"


def test_fed_apps_stay_thin() -> None:
    for app in ("client_app.py", "server_app.py"):
        lines = (ROOT / "fed" / app).read_text(encoding="utf-8").splitlines()
        assert len(lines) <= 80, f"fed/{app} has {len(lines)} lines"
