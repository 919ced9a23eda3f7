"""Building one recipe's package: the staging directory (trial files, the library closure,
configs with their comment lines rewritten, cited docs, README, requirements.txt,
.detignore), the git version stamp, Determined's context-size check and the reproducible
``.tar.gz``."""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import gzip
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tarfile
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from shared import configfile
from shared import recipes
from shared.configfile import parse_yaml  # the one config reader
from shared.package.closure import (LIBRARY, Closure, _installed_version, _requirement_name, analyse,
                                    read_pyproject, requirements)
from shared.package.errors import PackageError
from shared.package.readme import MARKER, family_text, render_readme

ROOT = recipes.REPO_ROOT

#: file names that look like secrets (fnmatch, case-insensitive): never shipped, and a package
#: that would ship one is refused naming it; also in every .detignore of the repository
SECRET_PATTERNS = (".env", ".env.*", "*.env", "*credential*", "*secret*", "*.pem", "*.key",
                   "*.p12", "*.pfx", "*.jks", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
                   ".netrc", ".pgpass", ".htpasswd")
#: what no context may carry: virtual environments, run outputs, caches, secrets. Every
#: .detignore of the repository (trials/*/, trials/, shared/) and of a package lists them
#: (tests/test_package.py checks), so neither `det experiment create` nor local mode's copy of
#: the working directory into each checkpoint takes them along.
CONTEXT_EXCLUDES = (".venv/", "venv/", "env/", "runs/", "demo_runs/", "dist/", "checkpoints/",
                    "tensorboard/", "__pycache__/", "*.pyc", ".pytest_cache/", ".cache/",
                    ".ipynb_checkpoints/", "*.npy", "*.tar.gz", "*.pth", *SECRET_PATTERNS)
#: non-Python files of an included library package that may ship (data a module reads);
#: anything else there (a key, an editor's file, a local .env) stays out
DATA_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".csv", ".tsv")

DETIGNORE = ("# Kept out of the context that `det experiment create <config> .` uploads (the\n"
             "# config file is sent on its own) and out of local runs' checkpoint copies: docs and\n"
             "# configs, virtual environments, run outputs, caches and anything that looks like a\n"
             "# secret. Determined also skips .detignore itself.\n"
             + "".join(f"{p}\n" for p in ("configs/", "docs/", "tests/", "test_*.py",
                                          *CONTEXT_EXCLUDES)))


def looks_secret(name: str) -> bool:
    """Whether a file name matches ``SECRET_PATTERNS``."""
    return any(fnmatch.fnmatch(name.lower(), p) for p in SECRET_PATTERNS)


def check_shipped(files: Sequence[pathlib.Path], root: pathlib.Path) -> None:
    """Refuse a package that would ship a file that looks like a secret, or a symbolic link
    that leaves the repository (it would ship whatever it points at: a key, a home directory
    file), naming each.

    Raises:
        PackageError: ``refusing to ship files that look like secrets: shared/data/credentials.json``.
    """
    secrets = [f for f in files if looks_secret(f.name)]
    if secrets:
        raise PackageError("refusing to ship files that look like secrets: "
                           + ", ".join(str(f.relative_to(root)) for f in secrets)
                           + " (move them out of the repository's trial and library directories)")
    outside = [f for f in files if f.is_symlink() and not f.resolve().is_relative_to(root)]
    if outside:
        raise PackageError("refusing to ship symbolic links that leave the repository: "
                           + ", ".join(f"{f.relative_to(root)} -> {os.readlink(f)}" for f in outside))


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



def check_config(path: pathlib.Path, trial_cls: type, package_dir: pathlib.Path) -> Dict[str, Any]:
    """Load an experiment config and check what would fail on the customer's cluster: the
    hyperparameters (the fixed point of the space) against the trial's schema, and that the
    entrypoint's scripts are in the package.

    Raises:
        shared.hparams.ConfigError: a bad config (the message names the file and key).
        PackageError: the entrypoint names a script the package does not have.
    """
    from shared import hparams

    conf = configfile.load_experiment_config(path)
    point = configfile.point_from_space(conf["hyperparameters"], str(path))
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


def models_used(files: Sequence[pathlib.Path]) -> List[str]:
    """The recipes whose ``model.py`` the trial's files load through the registry: the
    literal names of ``model_of("<name>")`` calls (``shared.recipes.model_of``), sorted."""
    names: Set[str] = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and \
                    getattr(node.func, "id", getattr(node.func, "attr", None)) == "model_of":
                names.add(node.args[0].value)
    return sorted(names)


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
        model: a recipe of ``root`` (``shared.recipes``: ``root/trials/<model>/train.py``).
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
    try:
        recipe = recipes.get(model, root)
    except recipes.RecipeError as err:
        raise PackageError(f"unknown model {model!r}: {err}") from None
    trial_dir, config_dir = recipe.trial_dir, recipe.configs_dir
    config_files = recipe.config_files()
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

    trial_files = recipe.trial_files()
    try:
        trial_cls = recipe.trial_class()
        family = recipe.family
    except recipes.RecipeError as err:
        raise PackageError(str(err)) from None
    # another recipe's model.py loaded through the registry goes along at its own path,
    # trials/<name>/model.py, where shared.recipes.model_of finds it in the package too
    borrowed = [root / recipes.TRIALS / name / "model.py" for name in models_used(trial_files)]
    missing = [str(p) for p in borrowed if not p.is_file()]
    if missing:
        raise PackageError(f"{model}: model_of() names a recipe without model.py: {', '.join(missing)}")
    # the README's smoke test runs the family's data generator: ship it too
    closure = analyse([*trial_files, *borrowed], root, extra=[family_text(family).generator])
    # the allow-list: the trial's files, the library modules it imports, data files of the
    # packages it imports with a data suffix; configs, docs, README, requirements are added below
    closure.data_files = [f for f in closure.data_files if f.suffix.lower() in DATA_SUFFIXES
                          and not f.name.startswith(".")]
    check_shipped([*trial_files, *borrowed, *closure.modules.values(), *closure.data_files,
                   *config_files], root)
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
        for f in borrowed:
            dest = staging / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        for path in [*closure.modules.values(), *closure.data_files]:
            dest = staging / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)

        (staging / "configs").mkdir()
        configs: Dict[str, Dict[str, Any]] = {}
        config_texts: List[str] = []
        for path in config_files:
            conf = check_config(path, trial_cls, staging)
            text = path.read_text(encoding="utf-8")
            new = _rewrite_config(text, model, str(path.relative_to(root)), stamp, path.name)
            if parse_yaml(new, str(path)) != parse_yaml(text, str(path)):
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
        readme = render_readme(model=model, family=family, stamp=stamp, version=version, trial_cls=trial_cls,
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
