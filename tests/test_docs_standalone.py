"""The documentation stands on its own and its counts are the repository's: no reference to
the team folder outside the repository (a customer does not have it), and every count of
configs a document states is what the files give."""
from __future__ import annotations

import itertools
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_document_sends_the_reader_outside_the_repository():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            assert "../shared" not in line, f"{path.relative_to(ROOT)}:{n}: {line.strip()}"


def _expand(pattern: str) -> list:
    """A shell word with {a,b} alternatives and a * glob, as bash expands it here."""
    parts = re.split(r"\{([^}]*)\}", pattern)
    fixed, choices = parts[0::2], [p.split(",") for p in parts[1::2]]
    words = ["".join(itertools.chain.from_iterable(zip(fixed, combo + ("",))))
             for combo in itertools.product(*choices)] if choices else [pattern]
    return sorted(p for w in words for p in ROOT.glob(w))


def test_the_config_counts_the_docs_state_are_the_files():
    stated = []
    for path in DOCS:
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.search(r"python -m shared\.expconf (\S+)\s+# \"all (\d+) configs ok\"", line)
            if m:
                stated.append((path.name, m[1], int(m[2])))
    assert stated, "docs/configs.md states how many configs the checker passes"
    for name, pattern, count in stated:
        assert len(_expand(pattern)) == count, (name, pattern, count)
    text = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    words = {5: "five", 6: "six", 7: "seven", 8: "eight"}
    for model in ("unet", "segformer", "deeplabv3plus", "segmenter"):
        n = len(list((ROOT / "experiment_configs" / model).glob("*.yaml")))
        assert f"has {words[n]}\nDetermined 0.38.1 experiment configs" in text, (model, n)
