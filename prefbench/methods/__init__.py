"""Method plugins and their registry.

Built-in methods are the modules of this package; other packages add methods through the entry-point
group ``prefbench.methods`` (each entry point names a ``Method`` subclass), or by calling ``register``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from importlib.metadata import entry_points

from prefbench.methods.base import (
    STRENGTH,
    BatchLogps,
    LossOutput,
    Method,
    PairedReferenceFreeMethod,
    PairedReferenceMethod,
    SeqLogps,
    StrengthNotApplicable,
    log_ratios,
    scaled_by_strength,
)
from prefbench.methods.views import _VIEWS, ViewSpec, register_view

__all__ = ["BatchLogps", "LossOutput", "Method", "PairedReferenceMethod", "PairedReferenceFreeMethod", "SeqLogps",
           "ViewSpec", "register", "register_view", "registry", "build_method", "log_ratios", "StrengthNotApplicable",
           "strength_fields", "scaled_by_strength", "apply_strength", "view_spec", "family", "order_key"]
INTERFACE = ("base", "views")  # the modules of this package that hold no method

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
            if module.name not in INTERFACE:
                importlib.import_module(f"{__name__}.{module.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register(ep.load())
        _loaded = True
    return dict(sorted(_REGISTRY.items()))


def view_spec(name: str) -> ViewSpec:
    """The registered view ``name`` (built-in, or registered by a plugin's module); ``ValueError`` if none."""
    registry()  # plugins register their views when their module loads
    if name not in _VIEWS:
        raise ValueError(f"view {name!r} is not registered; registered: {', '.join(sorted(_VIEWS))}")
    return _VIEWS[name]


FAMILIES = ("anchor (one role, no reference)", "reference-anchored, aligned pairs",
            "reference-anchored, unaligned examples", "reference-free", "online (fresh samples)")


def family(cls: type[Method]) -> int:
    """A method's family, from what it declares: its index in ``FAMILIES``, the order reports list methods in."""
    spec = view_spec(cls.view)
    if cls.needs_samples:
        return 4
    if not cls.needs_reference:
        return 0 if len(spec.roles) == 1 else 3
    return 1 if spec.margin else 2


def order_key(name: str) -> tuple[int, str]:
    """Where method ``name`` goes in a report: by ``family``, then by name; a method not registered here last."""
    methods = registry()
    return (family(methods[name]) if name in methods else len(FAMILIES), name)


def build_method(name: str, **params) -> Method:
    """Instantiate method ``name`` with hyper-parameters; unknown names or keys raise ``ValueError``."""
    methods = registry()
    if name not in methods:
        raise ValueError(f"method={name!r} is not registered; allowed: {', '.join(methods)}")
    cls = methods[name]
    view_spec(cls.view)  # a method's view must be registered
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(
            f"method.{unknown[0]} is not a parameter of {name}; allowed: {', '.join(sorted(fields)) or 'none'}"
        )
    return cls(**params)


def strength_fields(cls: type[Method]) -> dict[str, dataclasses.Field]:
    """The fields a method class marks with ``scaled_by_strength``, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if STRENGTH in f.metadata} if dataclasses.is_dataclass(cls) else {}


def apply_strength(name: str, params: dict, strength: float) -> dict:
    """``params`` with ``strength`` applied to the fields method ``name`` marks with ``scaled_by_strength``
    (the field's default when ``params`` leaves it out). A strength other than 1 for a method that marks no
    field raises ``ValueError``: the sweep would otherwise run identical jobs."""
    marked = strength_fields(registry()[name])
    if strength == 1:
        return dict(params)
    if not marked:
        raise StrengthNotApplicable(f"strength={strength:g}: method {name} marks no hyper-parameter that strength scales "
                         f"(declare one with methods.scaled_by_strength)")
    if not strength > 0:
        raise ValueError(f"strength must be > 0 (got {strength:g})")
    out = dict(params)
    for key, f in marked.items():
        value = float(out.get(key, f.default))
        out[key] = value / strength if f.metadata[STRENGTH] == "divide" else value * strength
    return out
