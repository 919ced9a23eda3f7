"""Customer packages: one self-contained recipe directory and ``.tar.gz`` per model.

    python -m shared.package unet [segformer ...] [--out dist]
    python -m shared.package all

Each package is a Determined context directory that needs nothing from this repository::

    <model>-recipe-<version>/
        train.py, model.py    the trial, byte for byte (every top-level .py of trials/<model>)
        shared/               the modules of this library the trial imports (import analysis)
        configs/*.yaml        experiment_configs/<model>/*.yaml; only comment lines are edited
                              (repository paths replaced by the package's own)
        docs/*.md             the project docs the config comments cite (and those they cite)
        README.md             for the customer: what it is, commands, hyperparameters,
                              metrics, energy sources and their environment variables
        requirements.txt      what a local run needs (pip install -r requirements.txt)
        .detignore            keeps configs/, docs/, tests, caches, runs and archives out of
                              the context that ``det experiment create`` uploads

so ``det experiment create configs/single_gpu.yaml .`` run inside it ships the trial and its
library together, with no ``--include``. ``python train.py`` imports the copied ``shared``:
the directory of the script is ``sys.path[0]``, searched before site-packages, an editable
install of this repository or the copy installed in the task image.

Which modules of ``shared`` go in is decided by reading the code (``ast``), not by a list:
the closure of the imports of the trial's files, counting imports inside functions (lazy
imports are still imports), ``importlib.import_module("...")`` calls with a literal name, and
string literals that name a module of ``shared`` (registries such as the energy source table
in ``shared.energy.select`` import by name). Imports under ``if TYPE_CHECKING:`` do not
count. What is left out is listed in the README and printed.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import gzip
import importlib.metadata
import importlib.util
import inspect
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = "shared"
#: First line of every generated README: marks a directory this tool may replace.
MARKER = "<!-- made by `python -m shared.package`: rebuilding replaces this directory -->"
DETIGNORE = """\
# Kept out of the context that `det experiment create <config> .` uploads (the config file
# is sent on its own). Determined also skips .detignore itself.
configs/
docs/
tests/
test_*.py
runs/
__pycache__/
*.pyc
*.tar.gz
"""
#: The task image built by cluster/build-image.sh (docs/cluster.md).
TASK_IMAGE = "energy-seg-recipes/task:{version}-cuda12"


class PackageError(Exception):
    """The package cannot be built as asked; the message names the file or value at fault."""


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


def analyse(entry_files: Sequence[pathlib.Path], root: pathlib.Path = ROOT) -> Closure:
    """The library modules (and third-party modules) that ``entry_files`` need.

    Args:
        entry_files: the trial's top-level scripts (``train.py``, ``model.py``, ...); the
            names of these files are the trial's local modules (``from model import ...``).
        root: the directory that holds the library package (``shared/``).

    Raises:
        PackageError: a file cannot be parsed, or the library is missing under ``root``.
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
    return Closure(dict(sorted(needed.items())), data_files, dict(sorted(dropped.items())), third)


# --------------------------------------------------------------------------- requirements
def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(req: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[(@]", req.strip(), maxsplit=1)[0])


def read_pyproject(root: pathlib.Path = ROOT) -> Dict[str, Any]:
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


# --------------------------------------------------------------------------- version stamp
def _git(root: pathlib.Path, *args: str) -> Optional[str]:
    # GIT_OPTIONAL_LOCKS=0: a read must never refresh (write) the index of a checkout that
    # others are working in.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def version_stamp(root: pathlib.Path, version: str, paths: Sequence[str]) -> str:
    """``<pyproject version> (git <describe>[-dirty])``; dirty when any of ``paths`` (the
    sources that go into the package) differs from HEAD or holds untracked files."""
    described = _git(root, "describe", "--tags", "--always")
    if not described:
        return f"{version} (not from a git checkout)"
    changed = _git(root, "diff", "--name-only", "HEAD", "--", *paths)
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *paths)
    dirty = bool(changed) or bool(untracked) or changed is None
    return f"{version} (git {described}{'-dirty' if dirty else ''})"


# --------------------------------------------------------------------------- the trial
def available_models(root: pathlib.Path = ROOT) -> List[str]:
    """Models with a trial: ``trials/<model>/train.py``."""
    trials = root / "trials"
    if not trials.is_dir():
        return []
    return sorted(p.parent.name for p in trials.glob("*/train.py"))


def load_trial_class(trial_dir: pathlib.Path, model: str) -> type:
    """Import ``trial_dir/train.py`` and return its ``SegmentationTrial`` subclass.

    The trial's local modules (``model``, ...) are imported from ``trial_dir`` and removed
    from ``sys.modules`` afterwards, so that several trials can be loaded in one process.

    Raises:
        PackageError: the script fails to import or defines no single trial class.
    """
    from shared.trial import SegmentationTrial

    local = {p.stem for p in trial_dir.glob("*.py")}
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name in local}
    module_name = f"_packaged_trial_{model}"
    spec = importlib.util.spec_from_file_location(module_name, trial_dir / "train.py")
    if spec is None or spec.loader is None:
        raise PackageError(f"{trial_dir / 'train.py'}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(trial_dir))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise PackageError(f"{trial_dir / 'train.py'}: importing it failed: "
                           f"{type(err).__name__}: {err}") from err
    finally:
        sys.path.remove(str(trial_dir))
        for name in local:
            sys.modules.pop(name, None)
        sys.modules.pop(module_name, None)
        sys.modules.update(saved)
    classes = [c for c in vars(module).values() if isinstance(c, type)
               and issubclass(c, SegmentationTrial) and c is not SegmentationTrial
               and c.__module__ == module_name]
    if len(classes) != 1:
        raise PackageError(f"{trial_dir / 'train.py'}: expected one SegmentationTrial subclass, "
                           f"found {len(classes)} ({', '.join(c.__name__ for c in classes) or 'none'})")
    return classes[0]


def check_config(path: pathlib.Path, trial_cls: type, package_dir: pathlib.Path) -> Dict[str, Any]:
    """Load an experiment config and check what would fail on the customer's cluster: the
    hyperparameters (the fixed point of the space) against the trial's schema, and that the
    entrypoint's scripts are in the package.

    Raises:
        shared.hparams.ConfigError: a bad config (the message names the file and key).
        PackageError: the entrypoint names a script the package does not have.
    """
    from shared import hparams

    conf = hparams.load_experiment_config(path)
    point = hparams.point_from_space(conf["hyperparameters"], str(path))
    hparams.resolve(point, trial_cls.MODEL_PARAMS, where=str(path), common=trial_cls.COMMON_PARAMS)
    entry = conf.get("entrypoint")
    tokens = shlex.split(entry) if isinstance(entry, str) else list(entry or [])
    for token in tokens:
        if str(token).endswith(".py") and not (package_dir / token).is_file():
            raise PackageError(f"{path}: entrypoint {entry!r} runs {token}, which the package "
                               f"does not contain")
    return conf


def _rewrite_config(text: str, model: str, source_rel: str, stamp: str, name: str) -> str:
    """Repository paths in comment lines -> the package's. Data lines are left alone; the
    caller checks that the YAML still loads to the same data."""
    swaps = [
        (f" trials/{model} --include {LIBRARY}", " ."),
        (f"trials/{model}/train.py", "train.py"),
        (f"experiment_configs/{model}/", "configs/"),
        (f"trials/{model}/", ""),
        (f"trials/{model}", "."),
    ]
    out = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            for old, new in swaps:
                line = line.replace(old, new)
        out.append(line)
    header = (f"# {source_rel} of energy-seg-recipes {stamp}, packaged for the {model} recipe.\n"
              f"# Run from the directory holding train.py:  det experiment create configs/{name} .\n")
    return header + "".join(out)


# --------------------------------------------------------------------------- README
_HP_NOTES: Dict[str, str] = {
    "data_dir": "dataset root (ADEChallengeData2016 layout) as the task sees it: bind-mount it on a cluster, --data-dir locally",
    "num_classes": "classes scored (ADE20K: 150); label 0 (unlabelled) is ignored",
    "class_names": "optional names for the per-class IoU report",
    "crop_size": "training crop, pixels (int or [h, w])",
    "scale": "rescale target [long, short] before the ratio_range jitter; validation rescales to it keeping the aspect ratio",
    "ratio_range": "random rescale factor range of the training pipeline",
    "cat_max_ratio": "a crop is redrawn (up to 10 times) while one class covers at least this share of it",
    "skip_bad_samples": "skip unreadable or unpaired samples (counted in skipped_samples) instead of failing",
    "workers_per_slot": "data-loader worker processes per GPU",
    "val_batch_size_per_slot": "validation images per GPU per batch",
    "global_batch_size": "images per optimizer step, all GPUs together",
    "base_batch_size": "the batch size lr is given for: the trial uses lr x global_batch_size / base_batch_size",
    "optimizer": "AdamW or SGD (no weight decay on norms and biases)",
    "lr": "peak learning rate at base_batch_size (linear scaling rule)",
    "weight_decay": "decoupled weight decay (AdamW) or L2 (SGD)",
    "momentum": "SGD momentum",
    "warmup_batches": "linear warm-up length, batches",
    "warmup_ratio": "learning-rate factor at the first warm-up batch",
    "poly_power": "exponent of the poly decay after warm-up",
    "min_lr_ratio": "floor of the poly decay, as a factor of the peak",
    "grad_clip_norm": "clip the global gradient norm (null: no clipping)",
    "precision": "auto = bf16 autocast where the GPU has it, else fp16 with a gradient scaler; fp32 on CPU",
    "channels_last": "NHWC memory layout; auto = on for CUDA",
    "seed": "seed of local runs (on a cluster Determined seeds each trial)",
    "pretrained_path": "local weights file to start from; nothing is ever downloaded",
    "max_batches": "training length, batches (an ASHA searcher's max_time wins when time_metric is batches)",
    "validation_period": "validate every this many batches",
    "checkpoint_period": "checkpoint every this many batches",
    "report_period": "report training metrics every this many batches",
    "target_miou": "the mIoU (%) that defines time and energy to target",
    "stop_at_target": "stop the trial at the first validation that reaches the target",
    "energy": "the energy hook: see the energy.* rows and the Energy section",
}

_ENERGY_NOTES: Dict[str, str] = {
    "enabled": "false turns the energy hook off",
    "sources": "auto, none, or names among nvml, rapl, redfish, ipmi, prometheus (ENERGY_SOURCES wins)",
    "apportion": "share of node-level energy charged to the trial: gpu_share (its GPUs / the node's) or none",
    "pue": "facility PUE: adds facility_wh = energy x PUE",
    "carbon_intensity_g_per_kwh": "grid intensity: adds co2e_g",
    "gpus_on_node": "GPUs of the node for gpu_share (else ENERGY_GPUS_ON_NODE, else detected)",
    "sample_period_s": "sampling period of the BMC sources (IPMI, Redfish), seconds; their default 5",
    "nvml_power_period_s": "NVML power sampling period on GPUs without an energy counter, seconds",
    "ipmi_timeout_s": "timeout of one ipmitool call, seconds",
    "rapl_max_power_w": "power ceiling per RAPL domain, used to size the counter-wrap poll (default 1000)",
    "rapl_poll_below_s": "read RAPL on a thread when a counter can wrap faster than this (default 3600)",
    "ipmi_sample_period_s": "IPMI's own sampling period (else sample_period_s)",
    "redfish_sample_period_s": "Redfish's own sampling period (else sample_period_s)",
    "redfish_timeout_s": "timeout of one Redfish request, seconds",
    "prometheus_timeout_s": "timeout of one Prometheus query, seconds",
}

_ENV_NOTES: Dict[str, str] = {
    "ENERGY_SOURCES": "replaces the energy.sources hyperparameter: a site sets it once for its nodes",
    "ENERGY_GPUS_ON_NODE": "GPUs of the node, for gpu_share when a container sees only its own GPUs (shared nodes)",
    "ENERGY_NODE_NAME": "this node's name in reports and in the Prometheus query's {node} (default: the host name; in a bridge-networked container that is the container id)",
    "ENERGY_RAPL_ROOT": "powercap directory to read (default /sys/class/powercap), e.g. a read-only bind mount of the host's /sys/devices/virtual/powercap/intel-rapl",
    "ENERGY_REDFISH_URL": "the BMC's Redfish service root or its Chassis/<id>/Power, EnvironmentMetrics or PowerSubsystem resource; no credentials in it",
    "ENERGY_REDFISH_CREDENTIALS_FILE": "file holding `user:password` (first line) or {\"username\": ..., \"password\": ...}; mode 600",
    "ENERGY_REDFISH_CA_BUNDLE": "PEM file of the CA that signed the BMC's certificate",
    "ENERGY_REDFISH_INSECURE": "1: do not verify the BMC's certificate (warned)",
    "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS": "1: send the credentials over plain http",
    "ENERGY_IPMI_CMD": "the ipmitool command (default `ipmitool dcmi power reading`, in-band through /dev/ipmi0); add `-I lanplus -H <bmc> -U <user> -f <passfile>` for a BMC over the network",
    "ENERGY_PROMETHEUS_URL": "base URL of the site's Prometheus",
    "ENERGY_PROMETHEUS_QUERY": "PromQL for this node's power in watts; {node} is replaced by the node name",
    "ENERGY_PROMETHEUS_STEP_S": "evaluation step, seconds (default 15; not below the scrape interval)",
    "ENERGY_PROMETHEUS_TOKEN_FILE": "file holding a bearer token",
    "ENERGY_PROMETHEUS_CA_BUNDLE": "PEM CA file for an https Prometheus",
    "ENERGY_PROMETHEUS_INSECURE": "1: do not verify Prometheus' certificate",
}

#: (group, name, meaning); a row is written only when the shipped code names the metric.
_METRICS: List[Tuple[str, str, str]] = [
    ("training", "loss", "training loss (cross-entropy, label 0 ignored)"),
    ("training", "lr", "learning rate"),
    ("validation", "miou", "mean IoU over classes, % (the searcher metric)"),
    ("validation", "pixel_accuracy", "correctly classified labelled pixels, %"),
    ("validation", "mean_accuracy", "mean over classes of the per-class accuracy, %"),
    ("validation", "validation_loss", "validation loss"),
    ("validation", "time_to_target_s", "wall time from the trial's start to the first validation at target_miou (carried over pause/resume)"),
    ("validation", "batches_to_target", "batches trained at that validation"),
    ("validation", "energy_wh", "energy measured so far, Wh"),
    ("validation", "energy_to_target_wh", "energy at the first validation that reached the target, Wh"),
    ("validation", "projected_energy_to_target_wh", "energy_to_target_wh once reached, before that a linear projection (the energy-aware searcher's metric)"),
    ("validation", "skipped_samples", "samples skipped as bad (skip_bad_samples)"),
    ("energy", "energy_wh", "the trial's energy, Wh (node input power where a BMC/Prometheus source measured it, else GPU + CPU + DRAM)"),
    ("energy", "gpu_wh", "GPU energy of the trial's GPUs (NVML)"),
    ("energy", "cpu_wh", "CPU packages (RAPL) x the trial's share of the node"),
    ("energy", "dram_wh", "DRAM (RAPL) x share"),
    ("energy", "node_wh", "node input power (Redfish, IPMI, Prometheus) x share"),
    ("energy", "avg_power_w", "energy_wh / duration_s"),
    ("energy", "duration_s", "measured time"),
    ("energy", "sources", "the sources that measured"),
    ("energy", "nodes", "nodes of the trial"),
    ("energy", "nodes_measured", "nodes with a measurement"),
    ("energy", "coverage", "fraction of the time covered by measurements (< 1: holes, a pause)"),
    ("energy", "apportion", "the apportion rule applied"),
    ("energy", "estimate", "always false: every figure is measured"),
    ("energy", "facility_wh", "energy x PUE (energy.pue set)"),
    ("energy", "co2e_g", "facility (or IT) energy x carbon intensity (energy.carbon_intensity_g_per_kwh set)"),
    ("run", "model", "model name"),
    ("run", "params", "parameter count"),
    ("run", "slots", "GPUs (or processes) of the trial"),
    ("run", "precision", "precision in use"),
    ("run", "global_batch_size", "images per step"),
    ("run", "lr", "the scaled peak learning rate"),
    ("run", "device", "device name"),
]

_ENV_RE = re.compile(r"\bENERGY_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def energy_variables(shared_dir: pathlib.Path) -> Dict[str, List[str]]:
    """ENERGY_* environment variables named in the string literals (code and docstrings, not
    comments) of the energy code under ``shared_dir``, each with the modules naming it: read
    from the code, so that the README cannot drift from it."""
    found: Dict[str, List[str]] = {}
    for path in sorted((shared_dir / "energy").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names: Set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(_ENV_RE.findall(node.value))
        for var in sorted(names):
            found.setdefault(var, []).append(path.stem)
    return dict(sorted(found.items()))


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
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _allowed(param: Any) -> str:
    if getattr(param, "choices", None):
        return ", ".join(_fmt(c) for c in param.choices)
    types = "/".join(t.__name__ for t in param.types)
    return types + (" or null" if param.nullable else "")


def _summary_line(doc: Optional[str]) -> str:
    return (inspect.cleandoc(doc or "").split("\n\n")[0]).replace("\n", " ").strip()


def render_readme(*, model: str, stamp: str, version: str, trial_cls: type,
                  model_doc: str, configs: Mapping[str, Mapping[str, Any]],
                  closure: Closure, requirement_lines: Sequence[str], trial_files: Sequence[str],
                  docs: Sequence[str], package_dir: pathlib.Path) -> str:
    """The customer README (Markdown)."""
    from shared.energy.callback import DEFAULT_OPTIONS

    shipped_code = "\n".join(p.read_text(encoding="utf-8")
                             for p in sorted((package_dir / LIBRARY).rglob("*.py")))
    first = "single_gpu.yaml" if "single_gpu.yaml" in configs else next(iter(configs))
    base_hp = dict(configs[first].get("hyperparameters") or {})
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
        f"# {model}: energy-aware semantic segmentation recipe for Determined",
        "",
        f"Version: **energy-seg-recipes {stamp}** (this directory was built by "
        f"`python -m shared.package {model}`).",
        "",
        _summary_line(model_doc),
        "",
        f"The trial (`{trial_cls.__name__}`) is a Determined `PyTorchTrial` that trains on the "
        "ADE20K layout (`ADEChallengeData2016/images|annotations/training|validation`), "
        "validates mIoU, records the time and the energy to reach a target mIoU, and runs "
        "unchanged on a Determined 0.38 cluster and locally (Determined's local training mode).",
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
        "- **Data**: every config bind-mounts `/data/ADEChallengeData2016` read-only from the "
        "agents into the container and sets `hyperparameters.data_dir` to it; change "
        "`bind_mounts[].host_path` to where the agents see the data set.",
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
        "python -m venv .venv && . .venv/bin/activate",
        "pip install -r requirements.txt   # install torch/torchvision for your CUDA first if needed",
        f"python train.py --config configs/{first} --data-dir /data/ADEChallengeData2016",
        "```",
        "",
        "Options: `--output-dir DIR` (default `runs/<model>-<date>-<time>`), `--batches N` or "
        "`--epochs N` (training length), `--set key=value ...` (any hyperparameter, dotted keys "
        "for `energy.*`), `--resume latest|CHECKPOINT_DIR`, `--verbose`. A search space in a "
        "config is run at a fixed point (middle of each range, first category). Several "
        "local GPUs: `torchrun --nproc_per_node N train.py ...`.",
        "",
        "A run writes `metrics.jsonl` (one JSON object per report: `group`, `steps_completed`, "
        "`time`, `metrics`), `summary.json`, `checkpoints/` and `tensorboard/` under the output "
        "directory. A smoke test on a generated data set, a few seconds on a CPU:",
        "",
        "```bash",
        "python -m shared.data.synthetic --out /tmp/synthetic --num-train 16 --num-val 4 --num-classes 4",
        f"python train.py --config configs/{first} --data-dir /tmp/synthetic --batches 3 \\",
        "    --set crop_size=32 scale=[64,32] num_classes=4 global_batch_size=4 workers_per_slot=0 \\",
        "          warmup_batches=2 report_period=2 energy.enabled=false",
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
    for key, param in schema.items():
        if key == "energy":
            continue
        note = _HP_NOTES.get(key) or param.help or "see model.py"
        value = _fmt(base_hp[key]) if key in base_hp else "(default)"
        lines.append(f"| `{key}` | `{_cell(value)}` | `{_cell(_fmt(param.default))}` | "
                     f"{_cell(_allowed(param))} | {_cell(note)} |")
    for key, default in DEFAULT_OPTIONS.items():
        value = _fmt(energy_conf[key]) if key in energy_conf else "(default)"
        lines.append(f"| `energy.{key}` | `{_cell(value)}` | `{_cell(_fmt(default))}` | | "
                     f"{_cell(_ENERGY_NOTES.get(key, 'see shared/energy/callback.py'))} |")
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
    for group, name, meaning in _METRICS:
        if f'"{name}"' in shipped_code:
            lines.append(f"| {group} | `{name}` | {meaning} |")
    lines += [
        "",
        "Locally, `metrics.jsonl` also has a `per_class_iou` group (IoU of every class at each "
        "validation) and the `run` group (the run's settings).",
        "",
        "## Energy",
        "",
        "The energy hook (`shared/energy`) measures the trial from its first to its last batch "
        "and adds the `energy` group and the energy metrics above. Each joule is counted once: "
        "a GPU is read by the process that trains on it, node-level sources by one process per "
        "node (local rank 0), and node-level energy is charged to the trial by its share of the "
        "node's GPUs (`energy.apportion`). A source that fails never stops training: it is "
        "logged once and shows up as lower `coverage`.",
        "",
        "| source | measures | read by |",
        "| --- | --- | --- |",
    ]
    from shared.energy import select
    for name in select.SOURCE_ORDER:
        path = package_dir / LIBRARY / "energy" / "sources" / f"{name}.py"
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) if path.is_file() else ""
        scope = "each training process, its own GPUs" if name in select.DEVICE_SOURCES \
            else "one process per node"
        auto = select.AUTO_ONLY_WITH_ENV.get(name)
        if auto:
            scope += f"; `auto` tries it only when `{auto}` is set"
        lines.append(f"| `{name}` | {_cell(_summary_line(doc))} | {scope} |")
    lines += [
        "",
        "Sources are configured through the environment, so that site details (BMC addresses, "
        "credentials, URLs) stay out of the experiment config, which the WebUI shows. Set them "
        "in the cluster's task defaults or the config's `environment.environment_variables`:",
        "",
        "| variable | used by | meaning |",
        "| --- | --- | --- |",
    ]
    for var, modules in energy_variables(package_dir / LIBRARY).items():
        lines.append(f"| `{var}` | {', '.join(modules)} | "
                     f"{_cell(_ENV_NOTES.get(var, 'see the docstring of the module'))} |")
    lines += [
        "",
        "Permissions a cluster administrator grants once (the project's docs/cluster.md has the "
        "files): RAPL counters are readable by root only since Linux 5.10, and recent Docker "
        "masks `/sys/devices/virtual/powercap` in containers (bind-mount it read-only and set "
        "`ENERGY_RAPL_ROOT`); in-band IPMI needs the `/dev/ipmi0` device in the container; "
        "Redfish needs the BMC network and a credentials file mounted read-only.",
        "",
        "## Requirements",
        "",
        "`requirements.txt`: " + ", ".join(f"`{r}`" for r in requirement_lines) + ".",
        "",
        f"## What `{LIBRARY}/` holds",
        "",
        f"The modules the trial imports, found by reading its code: "
        + ", ".join(f"`{n}`" for n in closure.modules) + ".",
        "",
    ]
    if closure.dropped:
        lines.append("Left out (not imported by the trial, directly or through other modules): "
                     + ", ".join(f"`{n}`" for n in closure.dropped) + ".")
    else:
        lines.append("Nothing of the library was left out.")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- building
@dataclasses.dataclass
class PackageResult:
    """What ``build_package`` made."""

    model: str
    directory: pathlib.Path
    archive: pathlib.Path
    stamp: str
    closure: Closure
    requirements: List[str]
    #: paths (relative) that ``det experiment create <config> <directory>`` uploads
    context_files: List[str]
    context_bytes: int


def context_contents(directory: pathlib.Path) -> Tuple[List[str], int]:
    """The files of ``directory`` that ``det experiment create`` would upload (Determined's own
    .detignore walk) and their total size in bytes, as Determined counts it."""
    from determined.common import detignore, v1file_utils

    files: List[str] = []
    size = 0
    with warnings.catch_warnings():
        # Determined 0.38 builds its matcher with a pattern class newer pathspec deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        for entry in detignore.os_walk_to_v1Files(directory.resolve(), pathlib.Path("")):
            size += v1file_utils.v1File_size(entry)
            if entry.type == ord(tarfile.REGTYPE):
                files.append(entry.path)
    return sorted(files), size


def _context_limit() -> int:
    from determined.common import constants
    return int(constants.MAX_CONTEXT_SIZE)


def _doc_links(texts: Iterable[str]) -> List[str]:
    found: Set[str] = set()
    for text in texts:
        found.update(re.findall(r"\bdocs/[\w./-]+\.md\b", text))
    return sorted(found)


def _write_archive(directory: pathlib.Path, archive: pathlib.Path) -> None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if epoch and epoch.isdigit():
            info.mtime = int(epoch)
        return info

    tmp = archive.with_name(archive.name + ".part")
    # mtime=0 in the gzip header: the same files give the same archive bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(directory, arcname=directory.name, filter=clean)  # entries sorted by tarfile
    os.replace(tmp, archive)


def _replaceable(path: pathlib.Path) -> bool:
    readme = path / "README.md"
    try:
        return path.is_dir() and readme.read_text(encoding="utf-8").splitlines()[0] == MARKER
    except (OSError, IndexError, UnicodeDecodeError):
        return False


def build_package(model: str, out: pathlib.Path, *, root: pathlib.Path = ROOT,
                  max_context_bytes: Optional[int] = None) -> PackageResult:
    """Build ``out/<model>-recipe-<version>/`` and ``out/<model>-recipe-<version>.tar.gz``.

    Args:
        model: a trial directory name under ``root/trials``.
        out: output directory (created).
        root: the repository (``trials/``, ``experiment_configs/``, ``shared/``,
            ``pyproject.toml``).
        max_context_bytes: refuse a context larger than this (default: Determined's limit,
            95 MiB).

    Raises:
        PackageError: unknown model, missing configs, an import the requirements cannot
            cover, a directory in the way that this tool did not make, a context too large.
        shared.hparams.ConfigError: a config that would fail on the cluster.
    """
    root = pathlib.Path(root).resolve()
    out = pathlib.Path(out).resolve()
    models = available_models(root)
    if model not in models:
        raise PackageError(f"unknown model {model!r}: no {root / 'trials' / model / 'train.py'}; "
                           f"available: {', '.join(models) or 'none'}")
    trial_dir = root / "trials" / model
    config_dir = root / "experiment_configs" / model
    config_files = sorted(config_dir.glob("*.yaml"))
    if not config_files:
        raise PackageError(f"no experiment configs for {model}: {config_dir}/*.yaml matches nothing")
    project = read_pyproject(root)
    version = str(project["version"])
    name = f"{model}-recipe-{version}"
    target = out / name
    archive = out / f"{name}.tar.gz"
    if target.exists() and not _replaceable(target):
        raise PackageError(f"{target} exists and was not made by shared.package (no marker in "
                           f"its README.md); remove it or choose another --out")

    trial_files = sorted(trial_dir.glob("*.py"))
    closure = analyse(trial_files, root)
    reqs = requirements(closure.third_party, project, root / "pyproject.toml")
    stamp = version_stamp(root, version, [LIBRARY, f"trials/{model}", f"experiment_configs/{model}",
                                          "pyproject.toml"])

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        for f in trial_files:
            shutil.copyfile(f, staging / f.name)
        for path in [*closure.modules.values(), *closure.data_files]:
            dest = staging / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)

        trial_cls = load_trial_class(trial_dir, model)
        (staging / "configs").mkdir()
        configs: Dict[str, Dict[str, Any]] = {}
        config_texts: List[str] = []
        for path in config_files:
            conf = check_config(path, trial_cls, staging)
            text = path.read_text(encoding="utf-8")
            new = _rewrite_config(text, model, str(path.relative_to(root)), stamp, path.name)
            if yaml.safe_load(new) != yaml.safe_load(text):
                raise PackageError(f"{path}: rewriting its comments changed its data (a comment "
                                   f"line the YAML parser reads as data?); fix the file")
            (staging / "configs" / path.name).write_text(new, encoding="utf-8")
            configs[path.name] = conf
            config_texts.append(text)

        # the docs the config comments cite, and the docs those cite in turn
        docs: List[str] = []
        pending = [d for d in _doc_links(config_texts) if (root / d).is_file()]
        while pending:
            d = pending.pop(0)
            if d not in docs:
                docs.append(d)
                pending += [x for x in _doc_links([(root / d).read_text(encoding="utf-8")])
                            if (root / x).is_file() and x not in docs]
        docs.sort()
        for d in docs:
            dest = staging / d
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / d, dest)

        (staging / ".detignore").write_text(DETIGNORE, encoding="utf-8")
        tested = [f"{_requirement_name(r)} {v}" for r in reqs if (v := _installed_version(r))]
        req_text = [
            f"# energy-seg-recipes {stamp}: the {model} recipe, local runs (python train.py ...).",
            "# On a cluster the task image provides these. Install torch and torchvision for your",
            "# CUDA first if pip's default build does not fit your driver.",
            *reqs,
        ]
        if tested:
            req_text += ["# Tested with: " + ", ".join(tested)]
        (staging / "requirements.txt").write_text("\n".join(req_text) + "\n", encoding="utf-8")
        model_doc = ast.get_docstring(ast.parse((trial_dir / "model.py").read_text(encoding="utf-8"))) \
            if (trial_dir / "model.py").is_file() else trial_cls.__doc__
        readme = render_readme(model=model, stamp=stamp, version=version, trial_cls=trial_cls,
                               model_doc=model_doc or "", configs=configs, closure=closure,
                               requirement_lines=reqs, trial_files=[f.name for f in trial_files],
                               docs=docs, package_dir=staging)
        (staging / "README.md").write_text(readme, encoding="utf-8")

        files, size = context_contents(staging)
        limit = _context_limit() if max_context_bytes is None else max_context_bytes
        if size > limit:
            raise PackageError(f"the context of {name} is {size / 2**20:.2f} MiB, over the "
                               f"{limit / 2**20:.2f} MiB that Determined accepts; biggest files: "
                               + ", ".join(sorted(files, key=lambda f: -(staging / f).stat().st_size)[:5]))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_archive(target, archive)
    return PackageResult(model, target, archive, stamp, closure, reqs, files, size)


# --------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m shared.package MODEL [MODEL ...] [--out DIR]``; returns the exit status."""
    from shared.hparams import ConfigError

    models = available_models()
    ap = argparse.ArgumentParser(
        prog="python -m shared.package",
        description="Build self-contained customer packages (directory + .tar.gz) of the "
                    "recipes: trial, the library modules it imports, configs, README, "
                    "requirements.txt, .detignore.")
    ap.add_argument("models", nargs="+", metavar="MODEL",
                    help=f"one or more of: {', '.join(models) or '(none found)'}, or 'all'")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("dist"),
                    help="output directory (default: dist)")
    args = ap.parse_args(argv)
    wanted = models if args.models == ["all"] else args.models
    try:
        for model in wanted:
            result = build_package(model, args.out)
            print(f"{result.directory}  ({len(result.context_files)} files, "
                  f"{result.context_bytes / 1024:.0f} KiB uploaded by det experiment create)")
            print(f"{result.archive}  ({result.archive.stat().st_size / 1024:.0f} KiB)")
            print(f"  version {result.stamp}")
            print(f"  {LIBRARY}/: {len(result.closure.modules)} modules; left out: "
                  f"{', '.join(result.closure.dropped) or 'nothing'}")
            print(f"  requirements: {', '.join(result.requirements)}")
    except (PackageError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
