"""What a recipe's package must carry, found by reading the code: the import closure of the
trial's files within the library (``analyse``), the third-party modules they import, and the
requirement lines for those from ``pyproject.toml`` (``requirements``).

Which modules of ``shared`` go in is decided by reading the code (``ast``), not by a list:
the closure of the imports of the trial's files, counting imports inside functions (lazy
imports are still imports), ``importlib.import_module("...")`` calls with a literal name, and
string literals that name a module of ``shared`` (registries such as the energy source table
in ``shared.energy.select`` import by name). Imports under ``if TYPE_CHECKING:`` do not
count.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import pathlib
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from shared.package.errors import PackageError
from shared.recipes import REPO_ROOT

#: The library package whose modules are copied into a package (those the trial imports).
LIBRARY = "shared"


# --------------------------------------------------------------------------- import analysis
@dataclasses.dataclass
class ModuleImports:
    """What one source file imports: absolute module names, split by whether the import is
    required or optional (inside ``try`` whose handler catches ImportError)."""

    required: Set[str] = dataclasses.field(default_factory=set)
    optional: Set[str] = dataclasses.field(default_factory=set)
    #: string literals that look like dotted module names (checked against the library later)
    names_in_strings: Set[str] = dataclasses.field(default_factory=set)


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, package: Optional[str], where: str) -> None:
        self.package = package
        self.where = where
        self.out = ModuleImports()
        self._optional_depth = 0

    # -- helpers ------------------------------------------------------------------------------
    def _add(self, name: str) -> None:
        (self.out.optional if self._optional_depth else self.out.required).add(name)

    def _absolute(self, module: Optional[str], level: int, lineno: int) -> str:
        if level == 0:
            return module or ""
        if not self.package:
            raise PackageError(f"{self.where}:{lineno}: relative import outside a package")
        parts = self.package.split(".")
        if level - 1 >= len(parts):
            raise PackageError(f"{self.where}:{lineno}: relative import beyond the top-level "
                               f"package {parts[0]!r}")
        base = ".".join(parts[:len(parts) - (level - 1)])
        return f"{base}.{module}" if module else base

    # -- visitors -----------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.module, node.level, node.lineno)
        if base == "__future__":
            return
        self._add(base)
        for alias in node.names:
            if alias.name != "*":
                # ``from pkg import mod`` imports the submodule when there is one; whether
                # there is is settled later, against the files.
                self._add(f"{base}.{alias.name}")

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:  # only the else branch runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        catches = False
        for handler in node.handlers:
            names: List[ast.expr] = []
            if handler.type is None:
                catches = True
            elif isinstance(handler.type, ast.Tuple):
                names = list(handler.type.elts)
            else:
                names = [handler.type]
            catches = catches or any(isinstance(n, ast.Name) and n.id in _IMPORT_ERRORS
                                     for n in names)
        if catches:
            self._optional_depth += 1
            for child in node.body:
                self.visit(child)
            self._optional_depth -= 1
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                self.visit(child)
        else:
            self.generic_visit(node)

    visit_TryStar = visit_Try  # type: ignore[assignment]  # Python 3.11's except*

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            target = node.args[0].value
            if name == "import_module" and target.startswith("."):
                anchor = node.args[1].value if len(node.args) > 1 and isinstance(
                    node.args[1], ast.Constant) else self.package
                level = len(target) - len(target.lstrip("."))
                saved, self.package = self.package, anchor
                try:
                    target = self._absolute(target.lstrip(".") or None, level, node.lineno)
                finally:
                    self.package = saved
            self._add(target)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and "." in node.value and _DOTTED.match(node.value):
            self.out.names_in_strings.add(node.value)


def scan_imports(path: pathlib.Path, package: Optional[str]) -> ModuleImports:
    """The imports of one Python file, anywhere in it (function bodies included).

    Args:
        path: the file.
        package: the package it belongs to, for relative imports (``shared.energy`` for
            ``shared/energy/select.py``; the package itself for an ``__init__.py``); None for
            a top-level script.

    Raises:
        PackageError: the file does not parse, or has a relative import that cannot resolve.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as err:
        raise PackageError(f"{path}: cannot be parsed for its imports: {err}") from None
    visitor = _ImportVisitor(package, str(path))
    visitor.visit(tree)
    return visitor.out


@dataclasses.dataclass
class Closure:
    """The result of the import analysis of a trial."""

    #: library modules the trial needs, by name -> file
    modules: Dict[str, pathlib.Path]
    #: non-Python files that sit in the directories of needed packages
    data_files: List[pathlib.Path]
    #: library modules left out, by name -> file
    dropped: Dict[str, pathlib.Path]
    #: top-level third-party module -> (required, first file that imports it)
    third_party: Dict[str, Tuple[bool, pathlib.Path]]
    #: library modules asked for besides the trial's imports (``analyse(extra=...)``)
    extra: List[str] = dataclasses.field(default_factory=list)


def _library_modules(root: pathlib.Path) -> Dict[str, pathlib.Path]:
    """Every module of the library under ``root``, by dotted name."""
    lib = root / LIBRARY
    out: Dict[str, pathlib.Path] = {}
    for path in sorted(lib.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # a directory without __init__.py is not a package: its files are not importable
        # as shared.x.y, so they are not modules of the library
        if all((root / pathlib.Path(*parts[:i]) / "__init__.py").is_file()
               for i in range(1, len(parts))):
            out[".".join(parts)] = path
    return out


def analyse(entry_files: Sequence[pathlib.Path], root: pathlib.Path = REPO_ROOT,
            extra: Sequence[str] = ()) -> Closure:
    """The library modules (and third-party modules) that ``entry_files`` need.

    Args:
        entry_files: the trial's top-level scripts (``train.py``, ``model.py``, ...); the
            names of these files are the trial's local modules (``from model import ...``).
        root: the directory that holds the library package (``shared/``).
        extra: library modules to ship although the trial does not import them (the data
            generator that the package README's smoke test runs), with their own imports.

    Raises:
        PackageError: a file cannot be parsed, the library is missing under ``root``, or an
            ``extra`` module is not in it.
    """
    if not (root / LIBRARY / "__init__.py").is_file():
        raise PackageError(f"{root / LIBRARY}: no such package (expected {LIBRARY}/__init__.py)")
    everything = _library_modules(root)
    local = {p.stem for p in entry_files}
    stdlib = set(sys.stdlib_module_names)
    needed: Dict[str, pathlib.Path] = {}
    third: Dict[str, Tuple[bool, pathlib.Path]] = {}
    queue: List[Tuple[pathlib.Path, Optional[str]]] = [(p, None) for p in entry_files]
    seen: Set[pathlib.Path] = set()

    def want(name: str, required: bool, source: pathlib.Path) -> None:
        top = name.split(".")[0]
        if top == LIBRARY:
            parts = name.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                path = everything.get(prefix)
                if path is not None and prefix not in needed:
                    needed[prefix] = path
                    package = prefix if path.name == "__init__.py" else prefix.rpartition(".")[0]
                    queue.append((path, package))
        elif top and top not in stdlib and top not in local:
            was_required, first = third.get(top, (False, source))
            third[top] = (was_required or required, first)

    for name in extra:
        if name not in everything:
            raise PackageError(f"{name}: asked to ship it, but {root / LIBRARY} has no such module")
        want(name, True, everything[name])

    while queue:
        path, package = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        found = scan_imports(path, package)
        for name in found.required:
            want(name, True, path)
        for name in found.optional:
            want(name, False, path)
        for name in found.names_in_strings:
            if name.split(".")[0] == LIBRARY and name in everything:
                want(name, True, path)

    data_files: List[pathlib.Path] = []
    for name, path in needed.items():
        if path.name != "__init__.py":
            continue
        pkg_dir = path.parent
        for f in sorted(pkg_dir.rglob("*")):
            rel = f.relative_to(pkg_dir)
            if not f.is_file() or f.suffix in (".py", ".pyc") or "__pycache__" in rel.parts:
                continue
            # a file inside a subpackage belongs to that subpackage: its own inclusion decides
            if any((pkg_dir / pathlib.Path(*rel.parts[:i]) / "__init__.py").is_file()
                   for i in range(1, len(rel.parts))):
                continue
            data_files.append(f)
    dropped = {n: p for n, p in everything.items() if n not in needed}
    return Closure(dict(sorted(needed.items())), data_files, dict(sorted(dropped.items())), third,
                   list(extra))


# --------------------------------------------------------------------------- requirements
def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(req: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[(@]", req.strip(), maxsplit=1)[0])


def read_pyproject(root: pathlib.Path = REPO_ROOT) -> Dict[str, Any]:
    """``[project]`` of ``root/pyproject.toml``.

    Raises:
        PackageError: the file is missing or has no version.
    """
    path = root / "pyproject.toml"
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise PackageError("building packages needs Python 3.11 or later (tomllib)") from None
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project") or {}
    except FileNotFoundError:
        raise PackageError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise PackageError(f"{path}: not valid TOML: {err}") from None
    if not project.get("version"):
        raise PackageError(f"{path}: [project] has no version")
    return project


def requirements(third_party: Mapping[str, Tuple[bool, pathlib.Path]],
                 project: Mapping[str, Any], pyproject: pathlib.Path) -> List[str]:
    """The requirement lines (from pyproject's ``dependencies``, in their order) for the
    third-party modules the package imports, plus the ``local`` extra (Determined's local
    mode writes TensorBoard files).

    Raises:
        PackageError: a required import whose distribution pyproject does not list.
    """
    deps: List[str] = list(project.get("dependencies") or [])
    by_name = {_requirement_name(d): d for d in deps}
    try:
        distributions = importlib.metadata.packages_distributions()
    except Exception:  # a broken metadata entry elsewhere in site-packages must not stop us
        distributions = {}
    chosen: Set[str] = set()
    for module, (required, source) in sorted(third_party.items()):
        candidates = [_normalise(d) for d in distributions.get(module, [])] or [_normalise(module)]
        match = next((c for c in candidates if c in by_name), None)
        if match is not None:
            chosen.add(match)
        elif required:
            raise PackageError(
                f"{source} imports {module!r} (distribution "
                f"{', '.join(distributions.get(module, [])) or 'unknown'}), which {pyproject} "
                f"does not list in [project] dependencies: add it there so that the package's "
                f"requirements.txt carries it")
    lines = [d for d in deps if _requirement_name(d) in chosen]
    lines += [d for d in (project.get("optional-dependencies") or {}).get("local", [])
              if _requirement_name(d) not in chosen]
    return lines


def _installed_version(requirement: str) -> Optional[str]:
    try:
        return importlib.metadata.version(_requirement_name(requirement))
    except importlib.metadata.PackageNotFoundError:
        return None
