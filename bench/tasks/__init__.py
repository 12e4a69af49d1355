"""Built-in tasks: synthetic languages with a programmatic gold reward. One file per task."""
from __future__ import annotations

import importlib
import pkgutil

from bench.errors import UserError
from bench.tasks.base import SyntheticTask

_TASKS: dict[str, type[SyntheticTask]] = {}


def register_task(cls: type[SyntheticTask]) -> type[SyntheticTask]:
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    return sorted(_TASKS)


def get_task(name: str) -> SyntheticTask:
    names = task_names()
    if name not in names:
        raise UserError(f"task.builtin={name!r} is not a built-in task; allowed: {', '.join(names)}")
    return _TASKS[name]()
