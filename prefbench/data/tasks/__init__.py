"""Built-in tasks: synthetic languages with a programmatic gold reward. One file per task.

Other packages add tasks through the entry-point group ``prefbench.tasks`` (each entry point names a
``SyntheticTask`` subclass) plus a ``conf/task/<name>.yaml`` on Hydra's search path, or by calling
``register_task``.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from prefbench.data.tasks.base import SyntheticTask
from prefbench.io.errors import UserError

ENTRY_POINT_GROUP = "prefbench.tasks"
_TASKS: dict[str, type[SyntheticTask]] = {}
_loaded = False


def register_task(cls: type[SyntheticTask]) -> type[SyntheticTask]:
    if not (isinstance(cls, type) and issubclass(cls, SyntheticTask)):
        raise TypeError(f"{cls!r} is not a subclass of prefbench.data.tasks.base.SyntheticTask")
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    """The built-in tasks, entry-point plugins, and anything ``register_task``ed."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register_task(ep.load())
        _loaded = True
    return sorted(_TASKS)


def get_task(name: str) -> SyntheticTask:
    names = task_names()
    if name not in names:
        raise UserError(f"task.builtin={name!r} is not a registered task; allowed: {', '.join(names)}")
    return _TASKS[name]()
