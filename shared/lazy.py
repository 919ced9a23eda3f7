"""Names of a package imported on first use (PEP 562's module ``__getattr__``), so that a light
part of the package (metrics, data readers) loads without the heavy one (Determined's trial
machinery). Used by ``shared.classification`` and ``shared.objects``."""
from __future__ import annotations

import importlib
from typing import Any, Callable, List, Mapping, Tuple


def lazy_exports(package: str, exports: Mapping[str, str]) -> Tuple[List[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package`` whose public ``name`` lives in the submodule
    ``exports[name]``: ``__all__, __getattr__ = lazy_exports(__name__, {...})``."""
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return sorted(exports), __getattr__
