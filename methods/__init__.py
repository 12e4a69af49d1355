"""Method plugins and their registry.

Built-in methods are the modules of this package; other packages add methods through the entry-point
group ``prefbench.methods`` (each entry point names a ``Method`` subclass), or by calling ``register``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from importlib.metadata import entry_points

from methods.base import BatchLogps, LossOutput, Method, SeqLogps

__all__ = ["BatchLogps", "LossOutput", "Method", "SeqLogps", "register", "registry", "build_method"]

ENTRY_POINT_GROUP = "prefbench.methods"
_REGISTRY: dict[str, type[Method]] = {}
_loaded = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a subclass of methods.Method")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Method]]:
    """All registered methods: the built-ins, entry-point plugins, and anything ``register``ed."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register(ep.load())
        _loaded = True
    return dict(sorted(_REGISTRY.items()))


def build_method(name: str, **params) -> Method:
    """Instantiate method ``name`` with hyper-parameters; unknown names or keys raise ``ValueError``."""
    methods = registry()
    if name not in methods:
        raise ValueError(f"method={name!r} is not registered; allowed: {', '.join(methods)}")
    cls = methods[name]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(
            f"method.{unknown[0]} is not a parameter of {name}; allowed: {', '.join(sorted(fields)) or 'none'}"
        )
    return cls(**params)
