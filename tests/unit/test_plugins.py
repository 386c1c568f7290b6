"""Extension points (smartfed.plugins): a package adds tasks, adapters, pool entries and commands
through entry points; a broken one is one error line; smartfed_bench is found only this way."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

import smartfed.data.tasks as tasks_mod
from smartfed import plugins
from smartfed.cli.main import main
from smartfed.data.tasks import get_task, list_tasks
from smartfed.errors import DataError

EXTENSION = '''
from pathlib import Path
from smartfed.data.tasks.base import Task

class Echo(Task):
    name = "myext.echo"
    description = "repeat the prompt"

def tasks():
    return [Echo()]

def adapter(name):
    return Path("adapters", name) if name.startswith("myext.") else None

def pool_source(source, model):
    return "built/" + source.removeprefix("myext:") if source.startswith("myext:") else None

def register(subparsers):
    p = subparsers.add_parser("hello", help="say hello")
    p.set_defaults(handler=lambda args: print("hello from myext") or 0)
'''


@pytest.fixture
def fake_entry_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, list[metadata.EntryPoint]]]:
    """Replace the installed entry points by a dict the test fills (group -> entry points)."""
    (tmp_path / "myext.py").write_text(EXTENSION, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    table: dict[str, list[metadata.EntryPoint]] = {}
    monkeypatch.setattr(
        plugins.metadata, "entry_points", lambda group: list(table.get(group, []))
    )
    saved = dict(tasks_mod._REGISTRY)
    monkeypatch.setattr(tasks_mod, "_EXTENSIONS_LOADED", False)
    plugins.load.cache_clear()
    yield table
    plugins.load.cache_clear()
    tasks_mod._REGISTRY.clear()
    tasks_mod._REGISTRY.update(saved)
    sys.modules.pop("myext", None)


def _ep(group: str, value: str, name: str = "myext") -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=group)


def test_an_extension_adds_tasks_found_by_get_task(fake_entry_points: dict) -> None:
    with pytest.raises(DataError, match="unknown task 'myext.echo'"):
        get_task("myext.echo")
    plugins.load.cache_clear()
    tasks_mod._EXTENSIONS_LOADED = False
    fake_entry_points[plugins.TASKS] = [_ep(plugins.TASKS, "myext:tasks")]
    assert get_task("myext.echo").description == "repeat the prompt"
    assert "myext.echo" in list_tasks() and "gsm8k" in list_tasks()


def test_an_extension_resolves_adapters_and_builds_pool_entries(fake_entry_points: dict) -> None:
    fake_entry_points[plugins.ADAPTERS] = [_ep(plugins.ADAPTERS, "myext:adapter")]
    fake_entry_points[plugins.POOL_SOURCES] = [_ep(plugins.POOL_SOURCES, "myext:pool_source")]
    assert plugins.find_adapter("myext.skill") == Path("adapters", "myext.skill")
    assert plugins.find_adapter("other") is None
    out = plugins.expand_pool_sources(["myext:a@1", "lora/zh"], model=None)  # type: ignore[arg-type]
    assert out == ["built/a@1", "lora/zh"]


def test_an_extension_adds_a_command(
    fake_entry_points: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_entry_points[plugins.COMMANDS] = [_ep(plugins.COMMANDS, "myext:register", "hello")]
    assert main(["hello"]) == 0
    assert capsys.readouterr().out.strip() == "hello from myext"


@pytest.mark.parametrize("group", [plugins.COMMANDS, plugins.POOL_COMMANDS])
def test_a_broken_extension_is_one_error_line(
    fake_entry_points: dict, capsys: pytest.CaptureFixture[str], group: str
) -> None:
    fake_entry_points[group] = [_ep(group, "no_such_module_for_smartfed:register", "broken")]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"smartfed: error: extension 'broken' of {group} ")
    assert "no_such_module_for_smartfed" in err


def test_a_broken_task_extension_fails_every_lookup(fake_entry_points: dict) -> None:
    fake_entry_points[plugins.TASKS] = [
        _ep(plugins.TASKS, "myext:tasks", "a_good"),
        _ep(plugins.TASKS, "myext:tasks", "b_clash"),  # the same task twice: a name clash
    ]
    for _ in range(2):  # not only the first time: nothing half-registered stays behind
        with pytest.raises(DataError, match="'myext.echo' is already registered"):
            get_task("gsm8k")
    assert "myext.echo" not in tasks_mod._REGISTRY
    fake_entry_points[plugins.TASKS] = [_ep(plugins.TASKS, "myext:no_such_function")]
    plugins.load.cache_clear()
    with pytest.raises(plugins.PluginError, match="extension 'myext' of smartfed.tasks"):
        get_task("gsm8k")


def test_the_experiment_is_registered_through_entry_points_only() -> None:
    """The installed distribution declares smartfed_bench's extensions (pyproject.toml)."""
    groups = {g: {e.value for e in metadata.entry_points(group=g)} for g in plugins.GROUPS}
    assert "smartfed_bench.plugin:tasks" in groups[plugins.TASKS]
    assert "smartfed_bench.plugin:adapter" in groups[plugins.ADAPTERS]
    assert "smartfed_bench.plugin:pool_source" in groups[plugins.POOL_SOURCES]
    assert {"smartfed_bench.cli.bench:register", "smartfed_bench.cli.demo:register"} <= groups[
        plugins.COMMANDS
    ]
    assert "smartfed_bench.cli.pool_package:register" in groups[plugins.POOL_COMMANDS]
    assert get_task("cpu_mini.zh_code_gap").name == "cpu_mini.zh_code_gap"
