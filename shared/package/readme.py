"""The customer README of a package (Markdown), rendered at build time from the trial's
schema and family, its configs, the shipped code and the energy library.

One job, the README: the prose is the Jinja2 template ``templates/README.md.j2`` (and
``templates/energy.md.j2``, its "Energy" section); this module computes what fills it. Two
trial families have their own texts (``Family``: title, data, smoke test); the rest is shared.
Nothing is documented here that is declared elsewhere: hyperparameters come with their Param's
help, metrics with the trial class's declarations (``metric_docs``), the energy options,
sources and variables with the energy library's (``energy_section``). Tables are laid out by
``shared.mdtable``.
"""
from __future__ import annotations

import dataclasses
import inspect
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jinja2

from shared import energy_docs
from shared.energy.options import all_options
from shared.energy.schema import value_text
from shared.energy.sources import registered_sources
from shared.mdtable import markdown_table
from shared.package.closure import LIBRARY, Closure
from shared.package.errors import PackageError

#: First line of every generated README: marks a directory this tool may replace.
MARKER = "<!-- made by `python -m shared.package`: rebuilding replaces this directory -->"
#: The task image built by cluster/build-image.sh (docs/cluster.md).
TASK_IMAGE = "energy-seg-recipes/task:{version}-cuda12"


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and value.get("type") == "const":
        return _fmt(value.get("val"))
    if isinstance(value, dict) and "type" in value:
        t = value["type"]
        if t == "categorical":
            return "search: one of " + ", ".join(_fmt(v) for v in value.get("vals", []))
        if t in ("int", "double"):
            return f"search: {t} {_fmt(value.get('minval'))}..{_fmt(value.get('maxval'))}"
        if t == "log":
            base = value.get("base", 10)
            return f"search: {base}^{_fmt(value.get('minval'))}..{base}^{_fmt(value.get('maxval'))}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return value_text(value)


def _summary_line(doc: Optional[str]) -> str:
    return (inspect.cleandoc(doc or "").split("\n\n")[0]).replace("\n", " ").strip()


# --------------------------------------------------------------------------- trial families

@dataclasses.dataclass(frozen=True)
class Family:
    """What the README says differently for one trial family (``shared.recipes.FAMILIES``)."""

    #: the task, in the title: "energy-aware <title> recipe for Determined"
    title: str
    #: what the trial does, after "The trial (`X`) is a Determined `PyTorchTrial` that"
    does: str
    #: how a local run's length is set (the launcher's options this family supports)
    length_options: str
    #: the module that writes a tiny data set for the smoke test (shipped with the package)
    generator: str
    #: the smoke test's commands, ``{first}`` = the first config's file name
    smoke: Tuple[str, ...]
    #: what else a local run's metrics.jsonl holds
    local_groups: str


_SEGMENTATION = Family(
    title="semantic segmentation",
    does="trains on the ADE20K layout (`ADEChallengeData2016/images|annotations/training|validation`), "
         "validates mIoU, records the time and the energy to reach a target mIoU, and runs "
         "unchanged on a Determined 0.38 cluster and locally (Determined's local training mode).",
    length_options="`--batches N` or `--epochs N` (training length)",
    generator="shared.data.synthetic",
    smoke=(
        "python -m shared.data.synthetic --out /tmp/synthetic --num-train 16 --num-val 4 --num-classes 4",
        "python train.py --config configs/{first} --data-dir /tmp/synthetic --batches 3 \\",
        "    --set crop_size=32 scale=[64,32] num_classes=4 global_batch_size=4 workers_per_slot=0 \\",
        "          warmup_batches=2 report_period=2 energy.enabled=false",
    ),
    local_groups="Locally, `metrics.jsonl` also has a `per_class_iou` group (IoU of every class at "
                 "each validation) and the `run` group (the run's settings).",
)

_CLASSIFICATION = Family(
    title="image classification",
    does="trains on an ImageFolder set (`train/<class>/*.jpg`, optionally `val/<class>/*.jpg`; "
         "without `val/`, `val_fraction` of each class is held out), validates top-1 and top-5 "
         "accuracy exactly over the whole validation set, records the time and the energy to "
         "reach a target accuracy and what its own processes use (metric group `resources`), "
         "and runs unchanged on a Determined 0.38 cluster and locally (Determined's local "
         "training mode).",
    # the classification trial does not count its training images for --epochs (yet)
    length_options="`--batches N` (training length)",
    generator="shared.classification.synthetic",
    smoke=(
        "python -m shared.classification.synthetic --out /tmp/cls --num-classes 3 --per-class 8 --size 32",
        "python train.py --config configs/{first} --data-dir /tmp/cls --batches 3 \\",
        "    --set arch=resnet18 image_size=32 global_batch_size=4 base_batch_size=4 workers_per_slot=0 \\",
        "          warmup_batches=2 report_period=2 validation_period=3 energy.enabled=false",
    ),
    local_groups="The `resources` group is sampled at each training report and, with its keys "
                 "prefixed `val_`, at each validation end. Locally, `metrics.jsonl` also has a "
                 "`per_class_accuracy` group (accuracy of every class at each validation) and the "
                 "`run` group (the run's settings).",
)

_BINARY_SEGMENTATION = Family(
    title="rare-small-objects (binary segmentation)",
    does="trains on large images with rare small objects (`images/{training,validation}/<stem>.png|tif|jpg`, "
         "masks in `masks/{training,validation}/<stem>.png`, non-zero = object), read once and tiled "
         "lazily, with balanced batches and hard-negative mining; validates whole images (pixel IoU "
         "and F1, object precision, recall, false positives per image, average precision, the "
         "validation loss), records the time and the energy to reach a target validation loss, and "
         "runs unchanged on a Determined 0.38 cluster and locally (Determined's local training mode).",
    length_options="`--batches N` or `--epochs N` (training length; an epoch is one tile per "
                   "tile-sized cell of the training images)",
    generator="shared.data.synthetic_rare",
    smoke=(
        "python -m shared.data.synthetic_rare --out /tmp/rare --num-train 8 --num-val 2 --size 96",
        "python train.py --config configs/{first} --data-dir /tmp/rare --batches 3 \\",
        "    --set tile_size=32 global_batch_size=4 base_batch_size=4 workers_per_slot=0 unet_depth=2 \\",
        "          warmup_batches=2 report_period=2 validation_period=3 energy.enabled=false",
    ),
    local_groups="The `mining` group (time and tiles spent mining hard negatives, the pool's size) "
                 "comes with each training report; `mining_wh` in the `energy` group is mining's "
                 "energy. Locally, `metrics.jsonl` also has the `run` group (the run's settings).",
)

FAMILIES: Dict[str, Family] = {"segmentation": _SEGMENTATION, "classification": _CLASSIFICATION,
                               "binary_segmentation": _BINARY_SEGMENTATION}


def family_text(family: str) -> Family:
    """The README texts of a trial family.

    Raises:
        PackageError: a family this renderer has no texts for.
    """
    try:
        return FAMILIES[family]
    except KeyError:
        raise PackageError(f"no README texts for trial family {family!r}; known: "
                           f"{', '.join(FAMILIES)} (shared/package/readme.py)") from None


# --------------------------------------------------------------------------- templates
#: Markdown, not HTML: nothing is escaped (the tables escape their cells, shared.mdtable); an
#: undefined name in a template is an error, not an empty string
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("shared.package", "templates"),
                                autoescape=False, undefined=jinja2.StrictUndefined,
                                trim_blocks=True, lstrip_blocks=True)
_TEMPLATES.filters["code_list"] = lambda names: ", ".join(f"`{n}`" for n in names)


# --------------------------------------------------------------------------- energy documentation
def energy_section(energy_conf: Mapping[str, Any]) -> Tuple[List[List[str]], str]:
    """The README's energy documentation: the ``energy.*`` rows (cells) of the hyperparameter
    table (``energy_conf``: the first config's ``energy`` values) and the "Energy" section
    (Markdown). Every option, source and variable, and its meaning, comes from the energy
    library's own declarations (``shared.energy.options``, each source class;
    ``shared.energy_docs``)."""
    rows: List[List[str]] = []
    names = [cls.name for cls in registered_sources()]
    for owner, option in all_options():
        value = _fmt(energy_conf[option.name]) if option.name in energy_conf else "(default)"
        meaning = option.help if owner == "general" else f"{owner}: {option.help}"
        rows.append([f"`energy.{option.name}`", f"`{value}`", f"`{_fmt(option.default)}`",
                     option.allowed_text(names), meaning])
    section = _TEMPLATES.get_template("energy.md.j2").render(
        sources_table=energy_docs.sources_table_markdown(),
        environment_table=energy_docs.environment_table_markdown())
    return rows, section


# --------------------------------------------------------------------------- the README
def render_readme(*, model: str, family: str, stamp: str, version: str, trial_cls: type,
                  model_doc: str, configs: Mapping[str, Mapping[str, Any]],
                  closure: Closure, requirement_lines: Sequence[str], trial_files: Sequence[str],
                  docs: Sequence[str], package_dir: pathlib.Path) -> str:
    """The customer README (Markdown) of a recipe of trial family ``family``.

    Raises:
        PackageError: a family without README texts.
    """
    fam = family_text(family)
    shipped_code = "\n".join(p.read_text(encoding="utf-8")
                             for p in sorted((package_dir / LIBRARY).rglob("*.py")))
    first = "single_gpu.yaml" if "single_gpu.yaml" in configs else next(iter(configs))
    base_hp = dict(configs[first].get("hyperparameters") or {})
    data_dir = _fmt(base_hp.get("data_dir")) if base_hp.get("data_dir") else "DATA_DIR"
    image = TASK_IMAGE.format(version=version)
    named_images: Dict[str, List[str]] = {}
    named_pools: Dict[str, List[str]] = {}
    for fname, conf in configs.items():
        img = (conf.get("environment") or {}).get("image")
        for i in (sorted(set(img.values())) if isinstance(img, dict) else [img] if img else []):
            named_images.setdefault(str(i), []).append(fname)
        pool = (conf.get("resources") or {}).get("resource_pool")
        if pool:
            named_pools.setdefault(str(pool), []).append(fname)
    images_text = "; ".join(f"{', '.join(f'`{f}`' for f in fs)} run `{i}`"
                            for i, fs in named_images.items()) or "no config names an image"
    images_text += (" (a config without `environment.image` runs the cluster's default image, "
                    "which then needs the packages of requirements.txt)")
    pools_text = "; ".join(f"pool `{p}` for {', '.join(f'`{f}`' for f in fs)}"
                           for p, fs in named_pools.items()) \
        or "the configs name no pool (the cluster's default compute pool)"
    files = [[f"`{name}`", {"train.py": "the trial, the experiment's entry point",
                            "model.py": "the model, plain PyTorch"}.get(name, "a module of the trial")]
             for name in trial_files]
    files += [[f"`{LIBRARY}/`", f"the project's library: the {len(closure.modules)} modules the trial imports"],
              ["`configs/`", "experiment configs (not uploaded: `.detignore`)"]]
    if docs:
        files.append(["`docs/`", "the project docs the config comments refer to (not uploaded)"])
    files += [["`requirements.txt`", "Python packages for local runs"],
              ["`.detignore`", "what `det experiment create` leaves out of the upload"]]
    config_rows = []
    for fname, conf in configs.items():
        res = conf.get("resources") or {}
        s = conf.get("searcher") or {}
        searcher = f"{s.get('name', '?')} on {s.get('metric', '?')}"
        if s.get("max_trials"):
            searcher += f", {s['max_trials']} trials"
        config_rows.append([f"`configs/{fname}`", str(conf.get("name", "")),
                            str(res.get("slots_per_trial", 1)), searcher,
                            str(conf.get("description", ""))])
    schema = {**trial_cls.COMMON_PARAMS, **trial_cls.MODEL_PARAMS}
    energy_conf = base_hp.get("energy") if isinstance(base_hp.get("energy"), dict) else {}
    energy_rows, energy_text = energy_section(energy_conf)
    hp_rows = []
    for key, param in schema.items():
        if key == "energy":
            continue
        # The meaning is the Param's own help, declared next to its default and checks
        # (shared/hparams.py, the family's trial module, the recipe's train.py).
        if not param.help:
            raise PackageError(f"hyperparameter {key!r} of {trial_cls.__module__}."
                               f"{trial_cls.__name__} has no help text: give its Param a help=")
        value = _fmt(base_hp[key]) if key in base_hp else "(default)"
        hp_rows.append([f"`{key}`", f"`{value}`", f"`{_fmt(param.default)}`", param.allowed_text(),
                        param.help])
    # declared by the trial class, next to what reports them (shared/trial.py, its family)
    metric_rows = [[group, f"`{name}`", meaning] for group, name, meaning in trial_cls.metric_docs()
                   if f'"{name}"' in shipped_code]
    return _TEMPLATES.get_template("README.md.j2").render(
        marker=MARKER, model=model, fam=fam, stamp=stamp, summary=_summary_line(model_doc),
        trial_name=trial_cls.__name__, first=first, data_dir=data_dir, image=image,
        images_text=images_text, pools_text=pools_text, library=LIBRARY,
        files_table=markdown_table(["path", "what"], files),
        configs_table=markdown_table(["config", "name", "slots", "searcher", "what it is"], config_rows),
        hyperparameters_table=markdown_table(["key", first, "default", "allowed", "meaning"],
                                             hp_rows + energy_rows),
        metrics_table=markdown_table(["group", "metric", "meaning"], metric_rows),
        energy_section=energy_text, requirement_lines=requirement_lines,
        generator_shipped=fam.generator in closure.extra, modules=list(closure.modules),
        dropped=list(closure.dropped))
