"""The registry of energy sources.

Adding a source takes two steps and touches nothing else:

1. a module in this directory with an ``EnergySource`` subclass that declares itself (class
   attributes ``name``, ``covers``, ``scope``, ``priority``, ``auto_env``, ``env_vars``,
   ``options``, ``summary``: see ``base.py``) and implements ``from_env``, ``open``, ``read``;
2. one line in ``BUILTIN`` below.

Selection (``shared.energy.select``), the ``energy`` option checks
(``shared.energy.options``) and the docs tables (``shared.energy_docs``) then pick it up.
Code outside the library (a site's own source, a test) calls ``register_source(cls)``
instead of step 2, and ``unregister_source(name)`` to take it back.

The built-in sources are named here as strings and imported on first use: importing one
source module (``sources.base`` in particular) does not import all of them, and the
packager's import analysis follows these strings into the customer package.
"""
from __future__ import annotations

import importlib
import re
import threading
from typing import Dict, Tuple, Type

from ..general import GENERAL_ENV, GENERAL_OPTIONS
from ..redact import energy_logger
from ..schema import EnvVar, Param
from .base import COMPONENTS, EnergySource

log = energy_logger()

#: (module, class) of every built-in source; their order here does not matter
#: (``priority`` orders them).
BUILTIN: Tuple[Tuple[str, str], ...] = (
    ("shared.energy.sources.nvml", "NvmlSource"),
    ("shared.energy.sources.rapl", "RaplSource"),
    ("shared.energy.sources.redfish", "RedfishSource"),
    ("shared.energy.sources.ipmi", "IpmiSource"),
    ("shared.energy.sources.prometheus", "PrometheusSource"),
)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: words of the ``energy.sources`` syntax, so no source may be called so
_RESERVED = ("auto", "none")

_lock = threading.RLock()
_registered: Dict[str, Type[EnergySource]] = {}
_builtins_loaded = False


def _declaration_errors(cls: Type[EnergySource]) -> list:
    """What is wrong with a source class's declaration, one phrase per problem."""
    errors = []
    if not (isinstance(cls, type) and issubclass(cls, EnergySource)):
        return [f"{cls!r} is not an EnergySource subclass"]
    name = cls.name
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED:
        errors.append(f"name {name!r} must be a lower-case identifier other than "
                      f"{' and '.join(_RESERVED)}")
    covers = cls.covers
    if (not isinstance(covers, tuple) or not covers
            or any(c not in COMPONENTS for c in covers)):
        errors.append(f"covers {covers!r} must be a non-empty tuple of components among "
                      f"{', '.join(COMPONENTS)}")
    if cls.scope not in ("device", "node"):
        errors.append(f"scope {cls.scope!r} must be 'device' or 'node'")
    if isinstance(cls.priority, bool) or not isinstance(cls.priority, int):
        errors.append(f"priority {cls.priority!r} must be an integer")
    if not isinstance(cls.summary, str) or not cls.summary.strip():
        errors.append("summary (how it measures, for the docs) is empty")
    env_names = []
    for var in cls.env_vars:
        if not isinstance(var, EnvVar):
            errors.append(f"env_vars entry {var!r} is not an EnvVar")
        elif not var.name.startswith("ENERGY_"):
            errors.append(f"variable {var.name!r} must start with ENERGY_")
        else:
            env_names.append(var.name)
    if cls.auto_env is not None and cls.auto_env not in env_names:
        errors.append(f"auto_env {cls.auto_env!r} is not one of its env_vars")
    for option in cls.options:
        if not isinstance(option, Param) or not option.name:
            errors.append(f"options entry {option!r} is not a Param with a name "
                          f"(shared.energy.schema)")
    if getattr(cls.from_env, "__func__", None) is EnergySource.from_env.__func__:
        errors.append("from_env is not implemented")
    return errors


def register_source(cls: Type[EnergySource]) -> Type[EnergySource]:
    """Add a source class to the registry (usable as a class decorator).

    Raises:
        ValueError: the declaration is incomplete or wrong, or another class has the same
            name; the message names the class and each problem.
    """
    errors = _declaration_errors(cls)
    label = getattr(cls, "__qualname__", repr(cls))
    if errors:
        raise ValueError(f"energy source {label}: " + "; ".join(errors))
    with _lock:
        other = _registered.get(cls.name)
        if other is not None and other is not cls:
            raise ValueError(f"energy source {label}: name {cls.name!r} is already taken by "
                             f"{other.__module__}.{other.__qualname__}")
        # One key, one meaning: an option or variable is declared by one owner only.
        owners = {o.name: "the general options" for o in GENERAL_OPTIONS}
        owners.update({v.name: "the general variables" for v in GENERAL_ENV})
        for known in _registered.values():
            if known.name != cls.name:
                owners.update({o.name: f"source {known.name}" for o in known.options})
                owners.update({v.name: f"source {known.name}" for v in known.env_vars})
        clashes = [f"{d.name!r} is already declared by {owners[d.name]}"
                   for d in (*cls.options, *cls.env_vars) if d.name in owners]
        if clashes:
            raise ValueError(f"energy source {label}: " + "; ".join(clashes))
        _registered[cls.name] = cls
    return cls


def unregister_source(name: str) -> None:
    """Remove a source from the registry (a test's throw-away source, say).

    Raises:
        KeyError: no source of that name is registered.
    """
    registered_sources()  # a built-in removed before loading would come back at the load
    with _lock:
        if name not in _registered:
            raise KeyError(f"no energy source named {name!r} is registered "
                           f"(registered: {', '.join(sorted(_registered))})")
        del _registered[name]


def _load_builtins() -> None:
    global _builtins_loaded
    with _lock:
        if _builtins_loaded:
            return
        _builtins_loaded = True  # first: a built-in module's import may come back here
        for module_name, class_name in BUILTIN:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name != module_name:
                    raise
                # A trimmed copy of the library: the source does not exist here.
                log.info("energy source module %s is not installed here; skipped", module_name)
                continue
            register_source(getattr(module, class_name))


def registered_sources() -> Tuple[Type[EnergySource], ...]:
    """Every registered source class, in priority order (ties by name)."""
    _load_builtins()
    with _lock:
        return tuple(sorted(_registered.values(), key=lambda c: (c.priority, c.name)))


def source_class(name: str) -> Type[EnergySource]:
    """The registered class called ``name``; KeyError listing the registered names."""
    for cls in registered_sources():
        if cls.name == name:
            return cls
    raise KeyError(f"no energy source named {name!r} is registered "
                   f"(registered: {', '.join(c.name for c in registered_sources())})")
