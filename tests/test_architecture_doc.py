"""docs/architecture.md and the README's Layout name real things: every file path exists and
every dotted name (``Engine.train_batch``, ``shared.engine.segmentation_loss``) is defined in
the code, so that a rename or a move that forgets the docs fails here by name."""
from __future__ import annotations

import ast
import pathlib
import re
from typing import Set

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Names that live outside this repository (Determined, NVML, torch).
EXTERNAL = {"det_torch.init", "TrainContext._report_trial_metrics", "context.distributed.allgather",
            "nvmlDeviceGetTotalEnergyConsumption"}


def defined_names() -> Set[str]:
    """Every module path (shared.engine), class, function, method (Class.method) and top-level
    assignment of shared/, benchmarks/ and trials/."""
    names: Set[str] = set()
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("trials/*/*.py")]:
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.update(".".join(parts[i:]) for i in range(len(parts)))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            names.add(f"{node.name}.{item.name}")
                        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                            for t in (item.targets if isinstance(item, ast.Assign) else [item.target]):
                                if isinstance(t, ast.Name):
                                    names.add(f"{node.name}.{t.id}")
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def check(doc: pathlib.Path) -> list:
    text = doc.read_text(encoding="utf-8")
    names = defined_names()
    problems = []
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip("()")
        if re.fullmatch(r"[\w.<>-]+\.(py|md|yaml|jsonl|json)", token):
            continue  # a bare file name (model.py of any recipe, metrics.jsonl of a run)
        if re.fullmatch(r"[\w./<>-]+\.(py|md|yaml)|[\w./<>-]+/", token) and "<" not in token:
            if not (ROOT / token).exists():
                problems.append(f"{token}: no such path")
        elif re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", token) and token not in EXTERNAL:
            # a dotted name: the longest suffix that is a module path, a class member or a name
            parts = token.split(".")
            if not any(".".join(parts[i:]) in names for i in range(len(parts))):
                problems.append(f"{token}: not defined in the code")
    return problems


def test_architecture_doc_names_real_code():
    assert check(ROOT / "docs" / "architecture.md") == []


def test_readme_layout_paths_exist():
    layout = re.search(r"^## Layout\n.*?```\n(.*?)```", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
    paths = re.findall(r"^([\w./<>-]+/?)\s", layout, re.M)
    assert paths
    missing = [p for p in paths if "<" not in p and not (ROOT / p).exists()]
    assert missing == []


def test_the_check_finds_a_stale_name(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("`Engine.train_batch` `Engine.no_such_step` `shared/engine.py` `shared/gone.py`")
    assert check(doc) == ["Engine.no_such_step: not defined in the code", "shared/gone.py: no such path"]
