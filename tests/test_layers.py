"""docs/architecture.md's "imports only downwards", checked on the code: every import of a
``shared`` module by another, at module level or inside a function (only ``if
TYPE_CHECKING:`` blocks, never run, are left out), forms no cycle; the energy library imports
nothing else of the project; the library never imports a recipe; the exceptions sit at the
bottom."""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(tree: ast.AST, package: str) -> List[Tuple[str, int]]:
    """(dotted name, line) of every import that runs, resolved against ``package``."""
    out: List[Tuple[str, int]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                stack.extend(child.orelse)  # the else branch does run
                continue
            if isinstance(child, ast.Import):
                out += [(a.name, child.lineno) for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                out.append((module, child.lineno))
                out += [(f"{module}.{a.name}", child.lineno) for a in child.names]
            stack.append(child)
    return out


def import_graph(root: pathlib.Path = ROOT, top: str = "shared"
                 ) -> Dict[str, Dict[str, int]]:
    """module -> {imported project module: line} for every module under ``root/top`` (an
    import of a name inside a module counts as an import of that module)."""
    files = {_module_name(p, root): p for p in sorted((root / top).rglob("*.py"))}
    graph: Dict[str, Dict[str, int]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: Dict[str, int] = {}
        for target, line in _imported_names(ast.parse(path.read_text()), package):
            while target and target not in files and not target.startswith("trials."):
                target = target.rpartition(".")[0]
            if target.startswith("trials."):
                edges.setdefault(target, line)
            elif target and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def _describe(graph: Dict[str, Dict[str, int]], comp: List[str]) -> str:
    members = set(comp)
    return "; ".join(f"{a} -> {b} (line {graph[a][b]})"
                     for a in comp for b in sorted(graph[a]) if b in members)


def test_no_import_cycle_in_the_library():
    graph = import_graph()
    assert len(graph) > 50, "the scan found too few modules: its root is wrong"
    found = cycles(graph)
    assert found == [], "\n".join(_describe(graph, c) for c in found)


def test_the_energy_library_imports_nothing_else_of_the_project():
    def energy(name: str) -> bool:
        return name == "shared.energy" or name.startswith("shared.energy.")
    outside = {(m, t, line) for m, edges in import_graph().items() if energy(m)
               for t, line in edges.items() if t != "shared" and not energy(t)}
    assert outside == set()


def test_the_library_imports_no_recipe_and_its_exceptions_import_nothing():
    graph = import_graph()
    recipes = {(m, t) for m, edges in graph.items() for t in edges if t.startswith("trials")}
    assert recipes == set()  # recipes are found by path (shared.recipes), never imported by name
    assert graph["shared.errors"] == {} and graph["shared.energy.errors"] == {}


def test_the_check_sees_a_cycle_through_an_import_inside_a_function(tmp_path):
    """The checks above can fail: a cycle closed by an import placed in a function (the way
    cycles used to be hidden) is found, one behind TYPE_CHECKING is not."""
    pkg = tmp_path / "shared"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from shared.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from shared import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from shared.d import X\n")
    (pkg / "d.py").write_text("import shared.c\nX = 1\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["shared.a", "shared.b"]]
    assert "shared.b -> shared.a (line 2)" in _describe(graph, ["shared.a", "shared.b"])
