"""A checker of Determined 0.38 experiment configs, run before anything is submitted.

(One job, in one file: the check as a whole, the project's own rules and the command line.
Determined's schema, restated key by key, is ``shared/expconf_schema.py``.)

Determined's master validates an experiment config against a JSON schema that ships with the
master, not with the ``determined`` wheel, and several mistakes pass that schema and fail
only once a trial runs: a misspelled hyperparameter (Determined passes whatever
``hyperparameters`` holds), a searcher metric the trial never reports, ``smaller_is_better``
left at its default ``true`` for mIoU, eight slots without a distributed launcher. So this
module checks, with messages that name the file and the key path:

- Determined 0.38.1's schema (``shared.expconf_schema``: unknown keys, required keys, types,
  ranges of the top level, ``resources``, ``searcher``, ``hyperparameters``,
  ``bind_mounts``, ``environment`` and ``profiling``);
- this project's rules: the entrypoint's script exists in ``trials/<model>/``, the slots
  match the file name, the per-slot batch is 16, an ASHA search measures time in batches
  and its ``max_time`` equals ``max_batches``, the searcher metric is one the trial reports
  with the right direction, and the hyperparameters (the middle of the space, a seeded random
  point, and every bound and category) resolve against the trial's schema
  (``shared.hparams.resolve``).

It knows every recipe of the registry (``shared.recipes``: ``trials/<model>/train.py`` defining
one trial class, of the segmentation or the classification family), under this repository or
under ``--repo-root``; a config whose trial cannot be loaded is reported as such.

Command line (exit status 1 if any problem)::

    python -m shared.expconf experiment_configs/*/*.yaml
    python -m shared.expconf ~/my-configs/big-batch.yaml --model unet   # a config kept elsewhere
"""
from __future__ import annotations

import argparse
import pathlib
import random
import shlex
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from shared import configfile
from shared import hparams as hpmod
from shared import recipes
from shared.energy import ENERGY_METRICS  # metrics that need the energy hook in every trial
from shared.errors import ConfigError
from shared.expconf_schema import Problems, check_schema, did_you_mean, is_int

#: Slots a config must ask for, by its file name (other names: any number).
SLOTS_BY_NAME: Dict[str, int] = {"single_gpu": 1, "8_gpu": 8, "multi_node": 32}
#: Images per GPU per step in every recipe (memory planning and the lr rule assume it).
PER_SLOT_BATCH = 16
#: The launch layer the trials expect with more than one slot (shared/launch.py runs
#: torch.distributed under it; without it one process would own every GPU and use one).
LAUNCHER = "determined.launch.torch_distributed"

def _searcher_metrics(trial_cls: Optional[type]) -> Mapping[str, bool]:
    """Validation metrics a trial reports at every validation, and whether larger is better:
    declared by the trial class (``SEARCHER_METRICS``); segmentation's when it is unknown.
    (time_to_target_s, batches_to_target and energy_to_target_wh exist only once the target is
    reached, so a searcher cannot rank trials with them.)"""
    from shared.trial import SegmentationTrial
    return getattr(trial_cls, "SEARCHER_METRICS", None) or SegmentationTrial.SEARCHER_METRICS


# ----------------------------------------------------------------------------- YAML
def load_yaml(path: str | pathlib.Path) -> Dict[str, Any]:
    """Read an experiment config with the one config reader (``shared.configfile.parse_yaml``:
    duplicate keys refused with both lines, ``2e-3`` a float); errors name the file."""
    return configfile.read_config_file(path)


# ----------------------------------------------------------------------------- hyperparameter points
def _leaves(space: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], Any]]:
    for key, spec in space.items():
        if isinstance(spec, dict) and "type" not in spec:
            yield from _leaves(spec, prefix + (key,))
        else:
            yield prefix + (key,), spec


def sample_point(space: Mapping[str, Any], rng: random.Random) -> Dict[str, Any]:
    """A random point of a Determined hyperparameter space, drawn as the master draws it
    (master/pkg/searcher/hyperparameters.go): int uniform on [minval, maxval] inclusive,
    double uniform, log ``base ** uniform(minval, maxval)``, categorical uniform, nested
    sections recursively. Assumes a space that passed the schema's checks."""
    out: Dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and "type" in spec:
            t = spec["type"]
            if t == "const":
                out[key] = spec["val"]
            elif t == "int":
                out[key] = rng.randint(spec["minval"], spec["maxval"])
            elif t == "double":
                out[key] = rng.uniform(spec["minval"], spec["maxval"])
            elif t == "log":
                out[key] = spec["base"] ** rng.uniform(spec["minval"], spec["maxval"])
            elif t == "categorical":
                out[key] = rng.choice(spec["vals"])
            else:
                raise ConfigError(f"hyperparameter '{key}' has unknown type {t!r}")
        elif isinstance(spec, dict):
            out[key] = sample_point(spec, rng)
        else:
            out[key] = spec
    return out


def _set(point: Dict[str, Any], keys: Tuple[str, ...], value: Any) -> Dict[str, Any]:
    out = dict(point)
    node = out
    for k in keys[:-1]:
        node[k] = dict(node[k])
        node = node[k]
    node[keys[-1]] = value
    return out


def points_to_check(space: Mapping[str, Any], seed: int = 0) -> List[Tuple[str, Dict[str, Any]]]:
    """The points a config's hyperparameters must all resolve at: the middle of the space
    (what a local run trains, ``shared.configfile.point_from_space``), a random point drawn with
    ``seed``, and the middle with each searched value moved to each bound or category (so a
    bad bound or category fails here rather than in one trial out of many)."""
    middle = configfile.point_from_space(space, "hyperparameters")
    points = [("the middle point", middle),
              (f"the random point of seed {seed}", sample_point(space, random.Random(seed)))]
    for keys, spec in _leaves(space):
        if not (isinstance(spec, dict) and "type" in spec):
            continue
        name = ".".join(keys)
        t = spec["type"]
        if t == "categorical":
            for v in spec["vals"]:
                points.append((f"{name} = {v!r}", _set(middle, keys, v)))
        elif t in ("int", "double"):
            for bound in ("minval", "maxval"):
                points.append((f"{name} = {spec[bound]!r} ({bound})", _set(middle, keys, spec[bound])))
        elif t == "log":
            for bound in ("minval", "maxval"):
                v = spec["base"] ** spec[bound]
                points.append((f"{name} = {v:.4g} ({bound})", _set(middle, keys, v)))
    return points


# ----------------------------------------------------------------------------- trials
def load_trial(trial_dir: str | pathlib.Path) -> Tuple[Any, type]:
    """The loaded ``<trial_dir>/train.py`` module and the trial class it defines (a
    ``PyTorchTrial`` subclass with ``MODEL_PARAMS``: ``SegmentationTrial``'s, or another
    family's such as ``ClassificationTrial``), through the recipe registry
    (``shared.recipes``, which caches it per directory).

    Raises:
        ConfigError: no train.py, an import error, or not one trial class; the message names
            the file.
    """
    recipe = recipes.Recipe.at(trial_dir)
    try:
        trial_cls = recipe.trial_class()
    except recipes.RecipeError as e:
        raise ConfigError(str(e)) from None
    return recipe.train_module(), trial_cls



def _const_values(space: Mapping[str, Any], key: str) -> Optional[List[Any]]:
    """The values a hyperparameter can take if it is fixed or categorical, else None."""
    spec = space.get(key)
    if isinstance(spec, dict) and "type" in spec:
        if spec["type"] == "const":
            return [spec.get("val")]
        if spec["type"] == "categorical" and isinstance(spec.get("vals"), list):
            return list(spec["vals"])
        return None
    return [spec]


def _script_of(entrypoint: Any) -> Tuple[Optional[str], List[str]]:
    tokens = shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(t) for t in entrypoint]
    script = next((t for t in tokens if t.endswith(".py")), None)
    return script, tokens


def check_experiment(conf: Mapping[str, Any], where: str, *, kind: Optional[str] = None,
                     trial_dir: Optional[pathlib.Path] = None, per_slot_batch: int = PER_SLOT_BATCH,
                     seed: int = 0) -> List[str]:
    """Problems of an experiment config already loaded; each names ``where`` and a key path.

    Args:
        conf: the parsed YAML.
        where: how messages name the config (its path).
        kind: the file's stem (``single_gpu``, ``8_gpu``, ``multi_node``, ...), for the slot rule.
        trial_dir: ``trials/<model>``: the entrypoint must be there and the hyperparameters
            must resolve against its trial. None skips those checks.
        per_slot_batch: images per slot per step that ``global_batch_size / slots`` must give.
        seed: seed of the random point the hyperparameters must resolve at.
    """
    out = Problems(where)
    check_schema(conf, out)
    space = conf.get("hyperparameters") if isinstance(conf, dict) else None
    if out.items or not isinstance(space, dict):
        return out.items  # the rules below read values whose shape must be right first
    searcher = conf.get("searcher") if isinstance(conf.get("searcher"), dict) else {}
    _check_project_rules(conf, space, searcher, kind, trial_dir, per_slot_batch, seed, out)
    return out.items

def _check_project_rules(conf: Mapping[str, Any], space: Dict[str, Any], searcher: Mapping[str, Any],
                         kind: Optional[str], trial_dir: Optional[pathlib.Path], per_slot_batch: int,
                         seed: int, out: Problems) -> None:
    resources = conf.get("resources") or {}
    slots = resources.get("slots_per_trial")
    slots = 1 if slots is None else slots

    # slots, launcher, entrypoint
    if kind in SLOTS_BY_NAME and slots != SLOTS_BY_NAME[kind]:
        out.add("resources.slots_per_trial", f"{slots} in a '{kind}' config; expected {SLOTS_BY_NAME[kind]}")
    if trial_dir is not None and not trial_dir.is_dir():
        out.add("", f"no trial directory {trial_dir}: a config in experiment_configs/<model>/ "
                    f"is checked against trials/<model>/; for a config elsewhere, name its "
                    f"model with --model ({', '.join(sorted(recipes.discover()))})")
        trial_dir = None
    script, tokens = _script_of(conf["entrypoint"])
    if slots > 1 and LAUNCHER not in tokens:
        out.add("entrypoint", f"{slots} slots need 'python3 -m {LAUNCHER} python3 train.py' "
                              f"(without it one process would own every GPU and train on one)")
    if script is None:
        out.add("entrypoint", f"{conf['entrypoint']!r} names no Python script (expected ... train.py)")
    elif trial_dir is not None and not (trial_dir / script).is_file():
        out.add("entrypoint", f"{script} not found in {trial_dir} (the context directory "
                              f"'det experiment create' uploads)")

    # batch
    if "global_batch_size" not in space:
        out.add("hyperparameters.global_batch_size", "required (Determined's PyTorchTrial reads it)")
    else:
        values = _const_values(space, "global_batch_size")
        if values is None:
            out.add("hyperparameters.global_batch_size", "must be a constant or categorical")
        for v in values or []:
            if not is_int(v) or v <= 0:
                out.add("hyperparameters.global_batch_size", f"{v!r} must be a positive integer")
            elif slots > 0 and v % slots:
                out.add("hyperparameters.global_batch_size", f"{v} is not divisible by "
                                                             f"resources.slots_per_trial={slots}")
            elif slots > 0 and v // slots != per_slot_batch:
                out.add("hyperparameters.global_batch_size",
                        f"{v} / {slots} slots = {v // slots} images per slot; expected {per_slot_batch} "
                        f"(global_batch_size = {per_slot_batch * slots})")

    # the trial, when known, says which metrics it reports and which hyperparameters it takes
    trial_cls: Optional[type] = None
    if trial_dir is not None:
        try:
            _, trial_cls = load_trial(trial_dir)
        except ConfigError as e:
            out.add("entrypoint", str(e))
    searcher_metrics = _searcher_metrics(trial_cls)

    # searcher: metric, direction, length
    metric = searcher.get("metric")
    if metric is not None:
        if metric not in searcher_metrics:
            hint = (" (reported only once the target is reached; use projected_energy_to_target_wh)"
                    if metric == "energy_to_target_wh" else did_you_mean(metric, searcher_metrics))
            out.add("searcher.metric", f"{metric!r} is not a validation metric the trial reports at "
                                       f"every validation{hint}; known: {', '.join(searcher_metrics)}")
        else:
            smaller = searcher.get("smaller_is_better")
            smaller = True if smaller is None else smaller  # Determined's default
            if smaller == searcher_metrics[metric]:
                default = " (Determined's default)" if searcher.get("smaller_is_better") is None else ""
                out.add("searcher.smaller_is_better",
                        f"{str(smaller).lower()}{default} ranks '{metric}' backwards: set it to "
                        f"{str(not smaller).lower()}")
    if searcher.get("name") in ("adaptive_asha", "async_halving"):
        if searcher.get("time_metric") != "batches":
            out.add("searcher.time_metric", f"{searcher.get('time_metric')!r}: the trial measures "
                                            f"its length in batches; set time_metric: batches")
        lengths = _const_values(space, "max_batches")
        if lengths is None or len(lengths) != 1:
            out.add("hyperparameters.max_batches", "must be a constant equal to searcher.max_time")
        elif lengths[0] != searcher.get("max_time"):
            out.add("searcher.max_time", f"{searcher.get('max_time')} != hyperparameters.max_batches "
                                         f"({lengths[0]}): the trial trains max_time batches, so the "
                                         f"rungs and the lr schedule would disagree")

    # energy
    energy = space.get("energy") if isinstance(space.get("energy"), dict) else {}
    if metric in ENERGY_METRICS:
        enabled = _const_values(energy, "enabled") if "enabled" in energy else [True]
        sources = _const_values(energy, "sources") if "sources" in energy else ["auto"]
        if enabled != [True] and enabled != [None]:
            out.add("hyperparameters.energy.enabled", f"searcher.metric '{metric}' needs energy "
                                                      f"measured; energy.enabled must stay true")
        if sources is None or any(s in ("none", "", None, []) for s in sources):
            out.add("hyperparameters.energy.sources", f"searcher.metric '{metric}' needs an energy "
                                                      f"source; leave energy.sources at 'auto'")

    # data inside the container
    data_dir = _const_values(space, "data_dir")
    mounts = [m.get("container_path", "") for m in conf.get("bind_mounts") or [] if isinstance(m, dict)]
    if mounts and data_dir and len(data_dir) == 1 and isinstance(data_dir[0], str) \
            and data_dir[0].startswith("/") and not any(_under(data_dir[0], m) for m in mounts):
        out.add("hyperparameters.data_dir", f"{data_dir[0]} is under no bind_mounts container_path "
                                            f"({', '.join(mounts)}): the task would not see the data")

    if trial_cls is not None:
        _check_points(space, trial_cls, seed, out)


def _under(path: str, root: str) -> bool:
    p, r = pathlib.PurePosixPath(path), pathlib.PurePosixPath(root)
    return p == r or r in p.parents


def _check_points(space: Dict[str, Any], trial_cls: type, seed: int, out: Problems) -> None:
    common = getattr(trial_cls, "COMMON_PARAMS", hpmod.COMMON)
    schema = {**common, **trial_cls.MODEL_PARAMS}
    for key in space:
        if key not in schema:
            out.add(f"hyperparameters.{key}", f"unknown hyperparameter for {trial_cls.__name__}"
                                              f"{did_you_mean(key, schema)}")
    if out.items:
        return
    for label, point in points_to_check(space, seed):
        try:
            hp = hpmod.resolve(point, trial_cls.MODEL_PARAMS, where=out.where, common=common)
            if hasattr(trial_cls, "check_target"):
                trial_cls.check_target(hp, out.where)
        except ConfigError as e:
            message = str(e)
            prefix = f"{out.where}: "
            out.add("", f"{message[len(prefix):] if message.startswith(prefix) else message} (at {label})")
            continue
        for key in ("validation_period", "checkpoint_period"):
            if hp[key] > hp["max_batches"]:
                out.add(f"hyperparameters.{key}", f"{hp[key]} > max_batches ({hp['max_batches']}) "
                                                  f"(at {label})")
        if hp["warmup_batches"] >= hp["max_batches"]:
            out.add("hyperparameters.warmup_batches", f"{hp['warmup_batches']} >= max_batches "
                                                      f"({hp['max_batches']}) (at {label})")


def _default_trial_dir(path: pathlib.Path, repo_root: Optional[pathlib.Path]) -> pathlib.Path:
    """``trials/<model>`` for ``.../experiment_configs/<model>/<name>.yaml``: under
    ``repo_root`` if given, else the repository the config lives in, else the one this
    package lives in (a copy of a config elsewhere still finds its trial)."""
    model = path.resolve().parent.name
    if repo_root is None:
        candidate = path.resolve().parents[2] if len(path.resolve().parents) > 2 else None
        if candidate is not None and (candidate / "trials").is_dir():
            repo_root = candidate
        else:
            repo_root = recipes.REPO_ROOT
    return pathlib.Path(repo_root) / recipes.TRIALS / model


def check_config(path: str | pathlib.Path, *, repo_root: Optional[str | pathlib.Path] = None,
                 per_slot_batch: int = PER_SLOT_BATCH, seed: int = 0,
                 model: Optional[str] = None) -> List[str]:
    """Problems of the experiment config at ``path`` (an empty list if none).

    The model is ``model`` if given (a config kept anywhere), else the config's directory
    name (``experiment_configs/<model>/<name>.yaml``); its trial is
    ``<repo_root>/trials/<model>`` (default: the repository holding the config, else this
    one). The slot rule comes from the file name. Each problem reads
    ``'<path>: <key.path>: <what is wrong>'``.
    """
    p = pathlib.Path(path)
    try:
        conf = load_yaml(p)
    except ConfigError as e:
        return [str(e)]
    if model is not None:
        root = pathlib.Path(repo_root) if repo_root else recipes.REPO_ROOT
        trial_dir = root / recipes.TRIALS / model
    else:
        trial_dir = _default_trial_dir(p, pathlib.Path(repo_root) if repo_root else None)
    return check_experiment(conf, str(path), kind=p.stem, trial_dir=trial_dir,
                            per_slot_batch=per_slot_batch, seed=seed)


def validate_config(path: str | pathlib.Path, **kwargs: Any) -> Dict[str, Any]:
    """``check_config``, raising instead: returns the parsed config if it has no problem.

    Raises:
        ConfigError: every problem, one per line, each naming the file and the key path.
    """
    problems = check_config(path, **kwargs)
    if problems:
        raise ConfigError("\n".join(problems))
    return load_yaml(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m shared.expconf CONFIG...``: print every problem; exit 1 if there is one."""
    ap = argparse.ArgumentParser(prog="python -m shared.expconf",
                                 description="Check Determined 0.38 experiment configs of this project "
                                             "before submitting them.")
    ap.add_argument("configs", nargs="+", type=pathlib.Path, help="experiment config YAML files")
    ap.add_argument("--repo-root", type=pathlib.Path,
                    help="where trials/<model>/ live (default: the repository of each config)")
    ap.add_argument("--per-slot-batch", type=int, default=PER_SLOT_BATCH,
                    help=f"images per slot per step global_batch_size must give (default {PER_SLOT_BATCH})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random hyperparameter point checked")
    ap.add_argument("--model", help="the recipe (trials/<model>/) to check the configs against, for "
                                    "configs kept outside experiment_configs/<model>/ (default: "
                                    "each config's directory name)")
    args = ap.parse_args(argv)
    if args.model is not None:
        root = args.repo_root or recipes.REPO_ROOT
        known = sorted(recipes.discover(root))
        if args.model not in known:
            ap.error(f"--model {args.model}: no trials/{args.model}/train.py under {root} "
                     f"(known: {', '.join(known)})")
    failed = 0
    for path in args.configs:
        problems = check_config(path, repo_root=args.repo_root, per_slot_batch=args.per_slot_batch,
                                seed=args.seed, model=args.model)
        for line in problems:
            print(line)
        failed += bool(problems)
    n = len(args.configs)
    print(f"{n - failed} of {n} configs ok" if failed else f"all {n} config{'s' if n > 1 else ''} ok",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
