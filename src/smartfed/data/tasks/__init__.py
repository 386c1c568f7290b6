"""Task registry: ``get_task(name)``, ``register_task(task)``, ``list_tasks()``.

Benchmarks (eval): ``mgsm_<lang>`` (11 languages), ``gsm8k``, ``math23k``, ``gsm_hard`` (PAL),
``humaneval``, ``mbpp``, ``code_zh`` (stand-in for DoIT). Skill sets for source LoRAs (train):
``chinese_chat``, ``english_chat``, ``math_en``, ``code_en``, ``gsm8k_pal``. The upstream README's
task names ``cn_math``, ``cn_code``, ``math_code`` pair a train and an eval task
(:mod:`smartfed.data.tasks.paper`). Installed extensions add theirs through the ``smartfed.tasks``
entry points (:mod:`smartfed.plugins`), e.g. the generated CPU-scale suite ``cpu_mini.*`` of
``smartfed_bench``; they are loaded on the first lookup.
"""

from __future__ import annotations

from smartfed.data.tasks.base import DATA_ENV, Task, resolve_data_dir
from smartfed.data.tasks.chat import AlpacaBilingualSkill, CodeAlpacaSkill
from smartfed.data.tasks.code import CodeZhStandIn, HumanEvalTask, MbppTask
from smartfed.data.tasks.math import MGSM_LANGS, Gsm8kTask, Math23kTask, MathEnSkill, MgsmTask
from smartfed.data.tasks.pal import GsmHardTask
from smartfed.errors import DataError
from smartfed.plugins import TASKS, load

__all__ = ["DATA_ENV", "Task", "get_task", "list_tasks", "register_task", "resolve_data_dir"]

_REGISTRY: dict[str, Task] = {}
_EXTENSIONS_LOADED = False


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` under ``task.name``.

    Raises:
        DataError: the name is empty or already registered (pass ``replace=True`` to override).
    """
    if not task.name:
        raise DataError(f"cannot register {task!r}: it has no name")
    if task.name in _REGISTRY and not replace:
        raise DataError(f"task {task.name!r} is already registered; pick another name")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """Return the registered task called ``name``.

    Raises:
        DataError: unknown name (the message lists the registered ones).
        PluginError: an installed extension's tasks cannot be loaded.
    """
    _load_extension_tasks()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(
            f"unknown task {name!r}; choose one of: {', '.join(list_tasks())}"
        ) from None


def list_tasks() -> list[str]:
    """Registered task names (built-in and from extensions), sorted."""
    _load_extension_tasks()
    return sorted(_REGISTRY)


def _load_extension_tasks() -> None:
    """Register the tasks of every ``smartfed.tasks`` entry point, once per process."""
    global _EXTENSIONS_LOADED
    if _EXTENSIONS_LOADED:
        return
    _EXTENSIONS_LOADED = True  # first: an extension may look tasks up while it loads
    added: list[str] = []
    try:
        for _, tasks in load(TASKS):
            added += [register_task(task).name for task in tasks()]
    except BaseException:  # undo, so that the next lookup raises the same error again
        for name in added:
            del _REGISTRY[name]
        _EXTENSIONS_LOADED = False
        raise


def _register_builtin() -> None:
    for lang in MGSM_LANGS:
        register_task(MgsmTask(lang))
    for task in (
        Gsm8kTask(),
        Math23kTask(),
        MathEnSkill(),
        GsmHardTask(),
        HumanEvalTask(),
        MbppTask(),
        CodeZhStandIn(),
        CodeAlpacaSkill(),
    ):
        register_task(task)
    register_task(
        AlpacaBilingualSkill(
            "chinese_chat",
            "zh",
            "Chinese instruction skill set (Alpaca-52K zh; stand-in for Okapi-zh); train only",
        )
    )
    register_task(
        AlpacaBilingualSkill(
            "english_chat", "en", "English instruction skill set (Alpaca-52K en fields); train only"
        )
    )


_register_builtin()


def _register_paper_tasks() -> None:
    from smartfed.data.tasks.paper import PAPER_TASKS, Gsm8kPalTask, PairedTask

    register_task(Gsm8kPalTask())
    for name, (train, evaluate, description) in PAPER_TASKS.items():
        register_task(PairedTask(name, _REGISTRY[train], _REGISTRY[evaluate], description))


_register_paper_tasks()

