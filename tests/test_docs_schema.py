"""The documentation's tables against the one place each name is declared: metrics (the trial
classes' ``metric_docs``, the energy library's groups) and hyperparameters (the Params). A
name added in code and not in the docs, or left in the docs after the code dropped it, fails
here by name."""
from __future__ import annotations

import pathlib
import re
from typing import Dict, Set

import pytest

from shared import recipes
from shared.classification.resources import MAXED, RESOURCES_GROUP, SUMMED
from shared.classification.trial import ClassificationTrial
from shared.trial import SegmentationTrial

ROOT = pathlib.Path(__file__).resolve().parents[1]


def section(path: pathlib.Path, heading: str) -> str:
    """The text under ``heading`` (a ``## `` or ``### `` line) up to the next heading of the
    same or a higher level."""
    text = path.read_text(encoding="utf-8")
    m = re.search(rf"^(#+) {re.escape(heading)}.*$", text, flags=re.M)
    assert m, f"{path.name}: no heading {heading!r}"
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[:end.start()] if end else rest


def names_by_group(text: str) -> Dict[str, Set[str]]:
    """`name`s of each table row whose first cell names a group (`group` or group)."""
    out: Dict[str, Set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.lstrip().startswith("|"):
            continue
        group = re.match(r"`?([a-z_]+)`?", cells[0])
        if group:
            out.setdefault(group.group(1), set()).update(re.findall(r"`([a-z0-9_/<>]+)`",
                                                                    " ".join(cells[1:])))
    return out


def test_every_declared_metric_is_in_the_readme_metrics_table():
    documented = names_by_group(section(ROOT / "README.md", "Metrics"))
    missing = [f"{g}/{n}" for g, n, _ in SegmentationTrial.metric_docs()
               if n not in documented.get(g, set())]
    assert not missing, f"README.md (Metrics) lacks {missing}"


def test_the_classification_metrics_are_in_its_doc():
    # The groups both families share (energy, run, time to target) are the README's; the
    # classification doc has the family's own, one table per group.
    text = section(ROOT / "docs" / "classification.md", "Metrics")
    named = set(re.findall(r"`([a-z0-9_]+)`", text))
    own = [*ClassificationTrial.TRAINING_METRICS, *ClassificationTrial.VALIDATION_METRICS,
           *[n for names in ClassificationTrial.EXTRA_GROUPS.values() for n in names]]
    missing = [n for n in own if n not in named]
    assert not missing, f"docs/classification.md (Metrics) lacks {missing}"


def test_the_readme_documents_no_metric_that_is_not_declared():
    declared: Dict[str, Set[str]] = {}
    for g, n, _ in SegmentationTrial.metric_docs():
        declared.setdefault(g, set()).add(n)
    documented = names_by_group(section(ROOT / "README.md", "Metrics"))
    # what Determined adds to every training report, and the local per-class table
    extra = {"training": {"batches", "epochs"}, "per_class_iou": {"iou/<class>"}}
    for group, names in documented.items():
        unknown = names - declared.get(group, set()) - extra.get(group, set())
        # names of other things the cells mention (hyperparameters, option keys)
        unknown = {n for n in unknown if n not in ("target_miou", "pue", "carbon_intensity_g_per_kwh",
                                                   "skip_bad_samples", "target_metric", "target_value",
                                                   "early_stop_patience")}
        assert not unknown, f"README Metrics, group {group}: {sorted(unknown)} are not declared"


def test_resources_group_declares_what_its_sampler_reports():
    assert set(RESOURCES_GROUP) == set(SUMMED) | set(MAXED) | {"ranks"}


@pytest.mark.parametrize("name", sorted(recipes.discover()))
def test_every_hyperparameter_has_its_meaning(name):
    trial_cls = recipes.get(name).trial_class()
    schema = {**trial_cls.COMMON_PARAMS, **trial_cls.MODEL_PARAMS}
    assert [k for k, p in schema.items() if not p.help] == []


def test_the_readme_hyperparameter_table_names_every_common_key():
    text = section(ROOT / "README.md", "Hyperparameters")
    named = set(re.findall(r"`([a-z_]+)(?:\.\*)?`", text))
    missing = [k for k in SegmentationTrial.COMMON_PARAMS if k not in named]
    assert not missing, f"README Hyperparameters lacks {missing}"


def test_the_rare_objects_section_names_its_hyperparameters_and_metrics():
    """Issue 15: the README's rare-objects section names every hyperparameter of the recipe
    that segmentation does not have (or has with another default) and every metric of its own,
    and its metrics table names nothing the trial does not declare."""
    trial = recipes.get("rare_objects").trial_class()
    text = section(ROOT / "README.md", "Rare small objects")
    named = set(re.findall(r"`([a-z0-9_]+)`", text))
    schema = {**trial.COMMON_PARAMS, **trial.MODEL_PARAMS}
    seg = SegmentationTrial.COMMON_PARAMS
    own = [k for k, p in schema.items() if k not in seg or p.default != seg[k].default]
    assert [k for k in own if k not in named] == []
    metrics = [*trial.TRAINING_METRICS, *trial.VALIDATION_METRICS,
               *[n for names in trial.EXTRA_GROUPS.values() for n in names]]
    assert [m for m in metrics if m not in named] == []
    declared: Dict[str, Set[str]] = {}
    for g, n, _ in trial.metric_docs():
        declared.setdefault(g, set()).add(n)
    table = names_by_group(section(ROOT / "README.md", "Rare objects: metrics"))
    params = {"object_iou", "ap_thresholds"}
    assert {g: sorted(n - declared.get(g, set()) - params) for g, n in table.items()} == \
        {g: [] for g in table}
    assert "mining" in table and "mining_wh" in declared["energy"]
