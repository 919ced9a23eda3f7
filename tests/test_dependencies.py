"""Every third-party module that shared/, trials/ or benchmarks/ imports is declared.

A module installed only because another package pulls it in (psutil came with determined)
works here and fails in a customer's environment or after that package drops it. The rule:

- an import, anywhere in a file (function bodies included), must have its distribution in
  pyproject.toml's ``dependencies`` or one of its ``optional-dependencies`` extras, or in
  requirements.txt (this repository's own environment);
- an optional import (inside ``try`` whose handler catches ImportError: the code works
  without it) must be in a pyproject extra, the place that tells a user how to get the
  feature; requirements.txt alone does not say that.

Imports are read with the packager's own analyser (``shared.package.scan_imports``) and
requirement names parsed as the packager parses them, so that the two agree on what an
import and a declaration are.
"""
from __future__ import annotations

import functools
import importlib.metadata
import pathlib
import re
import sys
from typing import Dict, Iterator, List, Mapping, Set, Tuple

import pytest

from shared.package.closure import _requirement_name, read_pyproject, scan_imports

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("shared", "trials", "benchmarks")
#: the repository's own top-level directories, importable from a checkout
LOCAL_TOP = {"shared", "trials", "benchmarks", "tests"}


def _package_of(path: pathlib.Path) -> str | None:
    """The dotted package of ``path`` for relative imports (None outside a package)."""
    parts: List[str] = []
    d = path.parent
    while (d / "__init__.py").is_file() and d != ROOT:
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts) or None


def third_party_imports(root: pathlib.Path = ROOT) -> Iterator[Tuple[str, bool, pathlib.Path]]:
    """(top-level module, optional, importing file) for each third-party import under the
    scanned directories; the standard library and the repository's own modules (the
    top-level packages and a script's siblings, such as a trial's ``model``) are skipped."""
    for top_dir in SCANNED:
        for path in sorted((root / top_dir).rglob("*.py")):
            if ".venv" in path.parts:
                continue
            siblings = {p.stem for p in path.parent.glob("*.py")}
            found = scan_imports(path, _package_of(path))
            for names, optional in ((found.required, False), (found.optional - found.required, True)):
                for top in sorted({n.split(".")[0] for n in names}):
                    if top and top not in sys.stdlib_module_names and top not in LOCAL_TOP | siblings:
                        yield top, optional, path


def declared(root: pathlib.Path = ROOT) -> Tuple[Set[str], Set[str]]:
    """(distributions of pyproject's dependencies and extras, of requirements.txt), normalised."""
    project = read_pyproject(root)
    in_pyproject = {_requirement_name(d) for d in project.get("dependencies", [])}
    for extra in (project.get("optional-dependencies") or {}).values():
        in_pyproject |= {_requirement_name(d) for d in extra}
    in_requirements = set()
    for line in (root / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):  # options such as -r, --index-url name nothing
            in_requirements.add(_requirement_name(line))
    return in_pyproject, in_requirements


@functools.lru_cache(maxsize=1)
def _providers() -> Mapping[str, List[str]]:
    # One scan of every installed distribution's metadata (a second or more each time).
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> List[str]:
    """The distributions that provide ``module``: the installed ones from their metadata, or
    the module's own name (normalised) when nothing installed provides it."""
    found = _providers().get(module, [])
    return [_requirement_name(d) for d in found] or [_requirement_name(module)]


def undeclared(root: pathlib.Path = ROOT) -> List[str]:
    """One line per import whose distribution is not declared where the rule says."""
    in_pyproject, in_requirements = declared(root)
    problems: Dict[Tuple[str, bool], str] = {}
    for module, optional, path in third_party_imports(root):
        dists = distributions_of(module)
        where = in_pyproject if optional else in_pyproject | in_requirements
        if not set(dists) & where and (module, optional) not in problems:
            kind = ("an optional import (try/except ImportError): declare it in a pyproject "
                    "extra" if optional else "declare it in pyproject.toml or requirements.txt")
            problems[module, optional] = (f"{path.relative_to(root)} imports {module!r} "
                                          f"(distribution {' or '.join(dists)}): {kind}")
    return sorted(problems.values())


def test_every_imported_distribution_is_declared():
    assert undeclared() == []


def test_the_scan_sees_the_known_imports():
    # A scan that found nothing would pass the test above for the wrong reason.
    found = {(m, opt) for m, opt, _ in third_party_imports()}
    assert {("torch", False), ("timm", False), ("psutil", False), ("ruamel", False)} <= found
    assert ("safetensors", True) in found  # shared/pretrained.py's guarded import


@pytest.fixture
def tree(tmp_path):
    """A throw-away repository: its own pyproject, requirements and sources."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "0"\ndependencies = ["torch>=2", "PyYAML"]\n'
        '[project.optional-dependencies]\nextra = ["Pillow[full] ; python_version >= \'3.8\'"]\n')
    (tmp_path / "requirements.txt").write_text("numpy==1.0  # pinned\n-r other.txt\n")
    for d in SCANNED:
        (tmp_path / d).mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("")
    return tmp_path


def test_declared_names_are_normalised(tree):
    assert declared(tree) == ({"torch", "pyyaml", "pillow"}, {"numpy"})


def test_an_undeclared_import_is_named_with_its_file(tree):
    (tree / "shared" / "ok.py").write_text(
        "import os, torch, yaml, numpy\nfrom PIL import Image\nfrom . import sibling\n")
    (tree / "trials" / "model.py").write_text("")
    (tree / "trials" / "train.py").write_text(
        "from model import build\n\ndef f():\n    import no_such_dist_xyz.sub\n")
    assert undeclared(tree) == [
        "trials/train.py imports 'no_such_dist_xyz' (distribution no-such-dist-xyz): "
        "declare it in pyproject.toml or requirements.txt"]


def test_an_optional_import_needs_a_pyproject_extra(tree):
    # numpy is in requirements.txt only: fine for a plain import, not for an optional one.
    (tree / "benchmarks" / "opt.py").write_text(
        "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n")
    assert len(undeclared(tree)) == 1
    assert re.fullmatch(r"benchmarks/opt\.py imports 'numpy' \(distribution numpy\): an optional "
                        r"import \(try/except ImportError\): declare it in a pyproject extra",
                        undeclared(tree)[0])
    (tree / "benchmarks" / "plain.py").write_text("import numpy\n")
    assert len(undeclared(tree)) == 1  # plain.py is fine (requirements.txt); opt.py still is not
