"""The recipe registry: the one place that finds the recipes and loads their trial classes.

A recipe is a directory ``trials/<name>/`` holding a ``train.py`` (the Determined trial and the
local entry point) and, beside it, the trial's own modules (``model.py``), with its experiment
configs in ``experiment_configs/<name>/*.yaml``. Nothing else registers a recipe: adding a
model means adding those two directories. The config checker (``shared.expconf``), the
packager (``shared.package``), the benchmark, the demo and the tests ask this module.

Loading a recipe needs care because every recipe's files have the same names: each
``train.py`` imports its model by the plain name ``model`` (``from model import build_model``),
which in one process would resolve to whichever ``model`` came first. So each recipe's
modules are loaded by path under names of their own (``_recipe_<name>_model``,
``_recipe_<name>_train``), ``sys.modules["model"]`` points at this recipe's model only while
its ``train.py`` runs, and the modules stay registered under their own names afterwards
(dataclasses and pickling look a class's module up in ``sys.modules``). Loading is cached per
trial directory: a second ``trial_class()`` returns the same class object.

    from shared import recipes
    for name, recipe in recipes.discover().items():
        print(name, recipe.family, recipe.trial_class().__name__, len(recipe.config_files()))
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

__all__ = ["REPO_ROOT", "FAMILIES", "FAMILY_BASES", "Recipe", "RecipeError", "discover",
           "family_of", "get", "model_of"]

#: The repository this module lives in: the default root of ``discover`` and ``get``.
REPO_ROOT = Path(__file__).resolve().parents[1]
TRIALS = "trials"
CONFIGS = "experiment_configs"
#: Trial families by base class, as ``Recipe.family`` names them: family -> "module:Class"
#: of its base trial class (imported on first use; the first base a trial derives from wins).
FAMILY_BASES = {
    "segmentation": "shared.trial:SegmentationTrial",
    "classification": "shared.classification.trial:ClassificationTrial",
    "binary_segmentation": "shared.objects.trial:BinarySegmentationTrial",
}
FAMILIES = tuple(FAMILY_BASES)


class RecipeError(ValueError):
    """A recipe that does not exist or cannot be loaded; the message names the file."""


@dataclasses.dataclass
class _Loaded:
    model: Optional[ModuleType]
    train: ModuleType
    trial_class: type


#: trial directory (resolved) -> its loaded modules, for the life of the process
_LOADED: Dict[Path, _Loaded] = {}
#: trial directory (resolved) -> its model.py loaded alone (``model_of``), for the same life
_MODELS: Dict[Path, ModuleType] = {}
# Loading swaps sys.modules["model"] and sys.path for a moment: one load at a time.
_LOCK = threading.RLock()


def family_of(trial_cls: type) -> Optional[str]:
    """The family (``FAMILY_BASES``) of a trial class, from its base classes; None if none."""
    for family, where in FAMILY_BASES.items():
        module, name = where.split(":")
        if issubclass(trial_cls, getattr(importlib.import_module(module), name)):
            return family
    return None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe: ``trial_dir`` = ``<root>/trials/<name>``, ``configs_dir`` =
    ``<root>/experiment_configs/<name>``."""

    name: str
    trial_dir: Path
    configs_dir: Path

    @classmethod
    def at(cls, trial_dir: Path | str) -> "Recipe":
        """The recipe of a trial directory given by path (``<root>/trials/<name>``)."""
        trial_dir = Path(trial_dir).resolve()
        return cls(trial_dir.name, trial_dir, trial_dir.parents[1] / CONFIGS / trial_dir.name)

    @property
    def root(self) -> Path:
        """The repository (or package) root that holds ``trials/``."""
        return self.trial_dir.parents[1]

    @property
    def train_script(self) -> Path:
        return self.trial_dir / "train.py"

    @property
    def model_file(self) -> Path:
        return self.trial_dir / "model.py"

    def trial_files(self) -> List[Path]:
        """The trial's top-level Python files (``train.py``, ``model.py``, ...), sorted."""
        return sorted(self.trial_dir.glob("*.py"))

    def config_files(self) -> List[Path]:
        """``experiment_configs/<name>/*.yaml``, sorted (empty when there is none)."""
        return sorted(self.configs_dir.glob("*.yaml"))

    def trial_class(self) -> type:
        """The one ``determined.pytorch.PyTorchTrial`` subclass with ``MODEL_PARAMS`` that
        ``train.py`` defines (imported classes do not count).

        Raises:
            RecipeError: train.py is missing, fails to import, or defines no or several
                trial classes; the message names the file.
        """
        return self._load().trial_class

    def train_module(self) -> ModuleType:
        """The loaded ``train.py`` module (``build_model`` and the rest of its namespace)."""
        return self._load().train

    def model_module(self) -> ModuleType:
        """The loaded ``model.py`` module (the same load as ``trial_class``).

        Raises:
            RecipeError: the recipe has no model.py, or loading fails.
        """
        loaded = self._load()
        if loaded.model is None:
            raise RecipeError(f"{self.model_file}: no such file (recipe {self.name!r} has no model.py)")
        return loaded.model

    @property
    def family(self) -> str:
        """The trial's family (``FAMILY_BASES``): ``segmentation`` (a
        ``shared.trial.SegmentationTrial``), ``classification`` (a
        ``shared.classification.trial.ClassificationTrial``) or ``binary_segmentation`` (a
        ``shared.objects.trial.BinarySegmentationTrial``), from the trial's base class.

        Raises:
            RecipeError: the trial class is of no family.
        """
        cls = self.trial_class()
        family = family_of(cls)
        if family is not None:
            return family
        raise RecipeError(f"{self.train_script}: {cls.__name__} derives from none of the family "
                          f"bases ({', '.join(FAMILY_BASES.values())}), so its family is unknown")

    # ------------------------------------------------------------------ loading
    def _load(self) -> _Loaded:
        key = self.trial_dir.resolve()
        with _LOCK:
            if key not in _LOADED:
                _LOADED[key] = _load_recipe(self.name, key)
            return _LOADED[key]


def _module_name(stem: str, name: str, path: Path) -> str:
    """``_recipe_<name>_<stem>``, with a number added when a recipe of the same name from
    another root (a test's temporary copy) already holds it."""
    base = f"_recipe_{name}_{stem}"
    candidate, n = base, 1
    while candidate in sys.modules and \
            Path(getattr(sys.modules[candidate], "__file__", "") or "").resolve() != path:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _exec(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise RecipeError(f"{path}: cannot be imported: {type(err).__name__}: {err}") from err
    return module


def _load_recipe(name: str, trial_dir: Path) -> _Loaded:
    from determined.pytorch import PyTorchTrial

    script = trial_dir / "train.py"
    if not script.is_file():
        raise RecipeError(f"{script}: no such file (a recipe needs trials/<name>/train.py)")
    # The trial's other top-level modules (helpers beside model.py) are imported by their
    # plain names from the trial directory; whatever such names held before is put back.
    local = {p.stem for p in trial_dir.glob("*.py")}
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m in local}
    sys.path.insert(0, str(trial_dir))
    try:
        model: Optional[ModuleType] = _MODELS.get(trial_dir)
        model_file = trial_dir / "model.py"
        if model is None and model_file.is_file():
            model = _exec(_module_name("model", name, model_file.resolve()), model_file)
        if model is not None:
            sys.modules["model"] = model
        train = _exec(_module_name("train", name, script.resolve()), script)
    finally:
        sys.path.remove(str(trial_dir))
        for m in local:
            sys.modules.pop(m, None)
        sys.modules.update(saved)
    # MODEL_PARAMS (the hyperparameter schema) is what the checker, the packager and the
    # launcher read; a PyTorchTrial without it is a helper, not the recipe's trial.
    classes = [v for v in vars(train).values() if isinstance(v, type)
               and issubclass(v, PyTorchTrial) and v.__module__ == train.__name__
               and hasattr(v, "MODEL_PARAMS")]
    if len(classes) != 1:
        raise RecipeError(f"{script}: expected one trial class (a PyTorchTrial subclass with "
                          f"MODEL_PARAMS), found {len(classes)} "
                          f"({', '.join(c.__name__ for c in classes) or 'none'})")
    return _Loaded(model, train, classes[0])


def model_of(name: str, root: Optional[Path | str] = None) -> ModuleType:
    """The ``model.py`` of recipe ``name`` under ``root`` (default: this repository), for a
    recipe that builds on another's model (``trials/rare_objects`` on the U-Net): the same
    module object as ``get(name).model_module()`` when that recipe is loaded too, but without
    its ``train.py``, so that a package ships the other recipe's ``model.py`` only
    (``shared.package`` finds ``model_of("<name>")`` calls and copies
    ``trials/<name>/model.py``).

    Raises:
        RecipeError: ``<root>/trials/<name>/model.py`` does not exist or fails to import.
    """
    base = Path(root).resolve() if root is not None else REPO_ROOT
    trial_dir = (base / TRIALS / name).resolve()
    path = trial_dir / "model.py"
    with _LOCK:
        if trial_dir in _LOADED and _LOADED[trial_dir].model is not None:
            return _LOADED[trial_dir].model  # type: ignore[return-value]
        if trial_dir not in _MODELS:
            if not path.is_file():
                raise RecipeError(f"{path}: no such file (model_of({name!r}) needs "
                                  f"trials/{name}/model.py)")
            _MODELS[trial_dir] = _exec(_module_name("model", name, path), path)
        return _MODELS[trial_dir]


# ---------------------------------------------------------------------- discovery
def discover(root: Optional[Path | str] = None) -> Dict[str, Recipe]:
    """Every recipe under ``root`` (default: this repository), by name, sorted: each
    ``<root>/trials/<name>/`` that holds a ``train.py``. Nothing is imported."""
    root = Path(root).resolve() if root is not None else REPO_ROOT
    trials = root / TRIALS
    if not trials.is_dir():
        return {}
    return {p.parent.name: Recipe(p.parent.name, p.parent, root / CONFIGS / p.parent.name)
            for p in sorted(trials.glob("*/train.py"))}


def get(name: str, root: Optional[Path | str] = None) -> Recipe:
    """The recipe ``name`` under ``root`` (default: this repository).

    Raises:
        RecipeError: there is no ``<root>/trials/<name>/train.py``; the message names that
            path and lists the recipes there are.
    """
    recipes = discover(root)
    if name in recipes:
        return recipes[name]
    base = Path(root).resolve() if root is not None else REPO_ROOT
    raise RecipeError(f"no recipe {name!r}: {base / TRIALS / name / 'train.py'} does not exist; "
                      f"known recipes: {', '.join(recipes) or 'none'}")

