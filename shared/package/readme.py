"""The customer README of a package (Markdown), rendered at build time from the trial's
schema and family, its configs, the shipped code and the energy library.

One job, the README, in one file. Two trial families have their own texts (``Family``: title,
data, smoke test); the rest is shared. Nothing is documented here that is declared elsewhere:
hyperparameters come with their Param's help, metrics with the trial class's declarations
(``metric_docs``), the energy options, sources and variables with the energy library's
(``energy_section``).
"""
from __future__ import annotations

import dataclasses
import inspect
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from shared.energy.docs import yaml_value
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
    return yaml_value(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _allowed(param: Any) -> str:
    if getattr(param, "choices", None):
        return ", ".join(_fmt(c) for c in param.choices)
    types = "/".join(t.__name__ for t in param.types)
    return types + (" or null" if param.nullable else "")


def _summary_line(doc: Optional[str]) -> str:
    return (inspect.cleandoc(doc or "").split("\n\n")[0]).replace("\n", " ").strip()


# --------------------------------------------------------------------------- trial families
# Why Python and not a Jinja2 template: every table here is rows computed from the trial's
# schema, the configs and the shipped code; a template would split each table between two
# files and still need these functions to compute its rows. The fixed prose is small.

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


# --------------------------------------------------------------------------- energy documentation
def energy_section(energy_conf: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """The README's energy documentation: the ``energy.*`` rows of the hyperparameter table
    (``energy_conf``: the first config's ``energy`` values) and the "Energy" section. Every
    option, source and variable, and its meaning, comes from the energy library's own
    declarations (``shared.energy.options``, each source class; ``shared.energy.docs``)."""
    from shared.energy import docs
    from shared.energy.options import all_options
    from shared.energy.sources import registered_sources

    rows: List[str] = []
    names = [cls.name for cls in registered_sources()]
    for owner, option in all_options():
        value = _fmt(energy_conf[option.name]) if option.name in energy_conf else "(default)"
        meaning = option.doc if owner == "general" else f"{owner}: {option.doc}"
        rows.append(f"| `energy.{option.name}` | `{_cell(value)}` | `{_cell(_fmt(option.default))}` | "
                    f"{_cell(option.allowed_text(names))} | {_cell(meaning)} |")
    lines = [
        "## Energy",
        "",
        "The energy hook (`shared/energy`) measures the trial from its first to its last batch "
        "and adds the `energy` group and the energy metrics above. Each joule is counted once: "
        "a GPU is read by the process that trains on it, node-level sources by one process per "
        "node (local rank 0), and node-level energy is charged to the trial by its share of the "
        "node's GPUs (`energy.apportion`). A source that fails never stops training: it is "
        "logged once and shows up as lower `coverage`.",
        "",
        docs.sources_table_markdown(),
        "Sources are configured through the environment, so that site details (BMC addresses, "
        "credentials, URLs) stay out of the experiment config, which the WebUI shows. Set them "
        "in the cluster's task defaults or the config's `environment.environment_variables`:",
        "",
        docs.environment_table_markdown(),
        "Permissions a cluster administrator grants once (the project's docs/cluster.md has the "
        "files): RAPL counters are readable by root only since Linux 5.10, and recent Docker "
        "masks `/sys/devices/virtual/powercap` in containers (bind-mount it read-only and set "
        "`ENERGY_RAPL_ROOT`); in-band IPMI needs the `/dev/ipmi0` device in the container; "
        "Redfish needs the BMC network and a credentials file mounted read-only.",
        "",
    ]
    return rows, lines


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
    lines: List[str] = [
        MARKER,
        f"# {model}: energy-aware {fam.title} recipe for Determined",
        "",
        f"Version: **energy-seg-recipes {stamp}** (this directory was built by "
        f"`python -m shared.package {model}`).",
        "",
        _summary_line(model_doc),
        "",
        f"The trial (`{trial_cls.__name__}`) is a Determined `PyTorchTrial` that {fam.does}",
        "",
        "## What is here",
        "",
        "| path | what |",
        "| --- | --- |",
    ]
    for name in trial_files:
        what = {"train.py": "the trial, the experiment's entry point",
                "model.py": "the model, plain PyTorch"}.get(name, "a module of the trial")
        lines.append(f"| `{name}` | {what} |")
    lines += [
        f"| `{LIBRARY}/` | the project's library: the {len(closure.modules)} modules the trial imports |",
        "| `configs/` | experiment configs (not uploaded: `.detignore`) |",
    ]
    if docs:
        lines.append("| `docs/` | the project docs the config comments refer to (not uploaded) |")
    lines += [
        "| `requirements.txt` | Python packages for local runs |",
        "| `.detignore` | what `det experiment create` leaves out of the upload |",
        "",
        "## Run it on a Determined cluster",
        "",
        "From this directory (the context: trial + library, nothing else is needed):",
        "",
        "```bash",
        f"det experiment create configs/{first} .",
        "```",
        "",
        f"- **Data**: every config bind-mounts `{data_dir}` read-only from the agents into the "
        "container and sets `hyperparameters.data_dir` to it; change `bind_mounts[].host_path` "
        "to where the agents see the data set.",
        f"- **Image**: {images_text}. `{image}` is the project's task image (PyTorch + CUDA 12, "
        "Determined 0.38.1, timm, nvidia-ml-py, ipmitool); push it to a registry the agents "
        "reach and change the name, or override it at submission: "
        f"`det experiment create configs/{first} . --config environment.image=REGISTRY/IMAGE:TAG`.",
        f"- **Pool**: {pools_text}; another with `--config resources.resource_pool=POOL`.",
        "- The script of the experiment is always `train.py` of this directory: `python3 train.py`, "
        "or `python3 -m determined.launch.torch_distributed python3 train.py` for several GPUs.",
        "",
        "| config | name | slots | searcher | what it is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for fname, conf in configs.items():
        res = conf.get("resources") or {}
        s = conf.get("searcher") or {}
        searcher = f"{s.get('name', '?')} on {s.get('metric', '?')}"
        if s.get("max_trials"):
            searcher += f", {s['max_trials']} trials"
        lines.append(f"| `configs/{fname}` | {_cell(str(conf.get('name', '')))} | "
                     f"{res.get('slots_per_trial', 1)} | {_cell(searcher)} | "
                     f"{_cell(str(conf.get('description', '')))} |")
    lines += [
        "",
        "## Run it locally",
        "",
        "```bash",
        f"python -m venv ~/venvs/{model}-recipe && . ~/venvs/{model}-recipe/bin/activate",
        "pip install -r requirements.txt   # install torch/torchvision for your CUDA first if needed",
        f"python train.py --config configs/{first} --data-dir {data_dir}",
        "```",
        "",
        "Keep the virtual environment outside this directory, as above: this directory is what "
        "`det experiment create` uploads (a venv is gigabytes; Determined refuses a context over "
        "95 MB) and what a local run copies into each checkpoint (`.detignore` leaves `.venv/`, "
        "`venv/`, run outputs, caches and secret-looking files out of both, as a second line of "
        "defence).",
        "",
        f"Options: `--output-dir DIR` (default `runs/<model>-<date>-<time>`), {fam.length_options}, "
        "`--set key=value ...` (any hyperparameter, dotted keys "
        "for `energy.*`), `--resume latest|CHECKPOINT_DIR`, `--verbose`. A search space in a "
        "config is run at a fixed point (middle of each range, first category). Several "
        "local GPUs: `torchrun --nproc_per_node N train.py ...`.",
        "",
        "A run writes `metrics.jsonl` (one JSON object per report: `group`, `steps_completed`, "
        "`time`, `metrics`), `summary.json`, `checkpoints/` and `tensorboard/` under the output "
        "directory. A smoke test on a generated data set, a few seconds on a CPU:",
        "",
        "```bash",
        *(line.format(first=first) for line in fam.smoke),
        "```",
        "",
        "## Hyperparameters",
        "",
        f"Values of `configs/{first}`; other configs change some of them (see each file). "
        "Unknown keys and bad values are refused before any work, with the file and key named.",
        "",
        f"| key | {first} | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    schema = {**trial_cls.COMMON_PARAMS, **trial_cls.MODEL_PARAMS}
    energy_conf = base_hp.get("energy") if isinstance(base_hp.get("energy"), dict) else {}
    energy_rows, energy_lines = energy_section(energy_conf)
    for key, param in schema.items():
        if key == "energy":
            continue
        # The meaning is the Param's own help, declared next to its default and checks
        # (shared/hparams.py, the family's trial module, the recipe's train.py).
        if not param.help:
            raise PackageError(f"hyperparameter {key!r} of {trial_cls.__module__}."
                               f"{trial_cls.__name__} has no help text: give its Param a help=")
        note = param.help
        value = _fmt(base_hp[key]) if key in base_hp else "(default)"
        lines.append(f"| `{key}` | `{_cell(value)}` | `{_cell(_fmt(param.default))}` | "
                     f"{_cell(_allowed(param))} | {_cell(note)} |")
    lines += energy_rows
    lines += [
        "",
        "## Metrics",
        "",
        "Reported to Determined (WebUI, `det trial logs`, the API) and, locally, to "
        "`metrics.jsonl` under the same group names.",
        "",
        "| group | metric | meaning |",
        "| --- | --- | --- |",
    ]
    # declared by the trial class, next to what reports them (shared/trial.py, its family)
    for group, name, meaning in trial_cls.metric_docs():
        if f'"{name}"' in shipped_code:
            lines.append(f"| {group} | `{name}` | {meaning} |")
    lines += [
        "",
        fam.local_groups,
        "",
        *energy_lines,
        "## Requirements",
        "",
        "`requirements.txt`: " + ", ".join(f"`{r}`" for r in requirement_lines) + ".",
        "",
        f"## What `{LIBRARY}/` holds",
        "",
        "The modules the trial imports, found by reading its code"
        + (f" (and `{fam.generator}`, the smoke test's data generator)"
           if fam.generator in closure.extra else "")
        + ": " + ", ".join(f"`{n}`" for n in closure.modules) + ".",
        "",
    ]
    if closure.dropped:
        lines.append("Left out (not imported by the trial, directly or through other modules): "
                     + ", ".join(f"`{n}`" for n in closure.dropped) + ".")
    else:
        lines.append("Nothing of the library was left out.")
    lines.append("")
    return "\n".join(lines)
