"""The recipe registry (shared/recipes.py): discovery, loading several recipes in one process,
its error messages, the docs that must list every recipe, and a throw-away sixth
segmentation recipe in a temporary root that the registry, the config checker, the packager
and the docs check find without any other file changing."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Dict, List

import pytest

from shared import expconf
from shared import package as pkg
from shared import recipes

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEGMENTATION = ["deeplabv3plus", "segformer", "segmenter", "unet"]


# --------------------------------------------------------------------------- the registry
def test_discover_finds_every_recipe_sorted_with_its_family():
    found = recipes.discover()
    assert list(found) == sorted(p.parent.name for p in (ROOT / "trials").glob("*/train.py"))
    assert {n for n, r in found.items() if r.family == "segmentation"} == set(SEGMENTATION)
    assert found["image_classification"].family == "classification"
    assert found["rare_objects"].family == "binary_segmentation"
    unet = found["unet"]
    assert unet.trial_dir == ROOT / "trials" / "unet"
    assert unet.configs_dir == ROOT / "experiment_configs" / "unet"
    assert unet.train_script == ROOT / "trials" / "unet" / "train.py"
    assert unet.model_file == ROOT / "trials" / "unet" / "model.py"
    assert [p.name for p in unet.config_files()] == sorted(
        p.name for p in (ROOT / "experiment_configs" / "unet").glob("*.yaml"))


def test_trial_classes_are_loaded_once_each_with_its_own_model():
    unet, segformer = recipes.get("unet"), recipes.get("segformer")
    assert unet.trial_class() is recipes.get("unet").trial_class()  # cached per process
    assert unet.trial_class().__name__ == "UNetTrial"
    assert segformer.trial_class().__name__ == "SegFormerTrial"
    # each train.py imported "model": each got its own, and no "model" is left behind
    assert pathlib.Path(unet.model_module().__file__) == unet.model_file
    assert pathlib.Path(segformer.model_module().__file__) == segformer.model_file
    assert unet.train_module().UNet is unet.model_module().UNet
    assert segformer.train_module().SegFormer is segformer.model_module().SegFormer
    assert "model" not in sys.modules or \
        pathlib.Path(sys.modules["model"].__file__).parent.parent != ROOT / "trials"
    # registered under their own names (dataclasses and pickling look modules up there)
    assert sys.modules[unet.model_module().__name__] is unet.model_module()


def test_unknown_recipe_names_the_path_and_the_known_ones(tmp_path):
    with pytest.raises(recipes.RecipeError) as err:
        recipes.get("nope")
    assert str(err.value) == (f"no recipe 'nope': {ROOT / 'trials' / 'nope' / 'train.py'} does not "
                              f"exist; known recipes: {', '.join(recipes.discover())}")
    assert isinstance(err.value, ValueError)
    with pytest.raises(recipes.RecipeError, match=r"known recipes: none$"):
        recipes.get("x", tmp_path)


def _write(root: pathlib.Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


TRIAL = ("from determined.pytorch import PyTorchTrial\n"
         "class {name}(PyTorchTrial):\n    MODEL_PARAMS = {{}}\n")


@pytest.mark.parametrize("source, message", [
    ("import nosuchmodule_xyz\n",
     r"broken/train\.py: cannot be imported: ModuleNotFoundError: No module named 'nosuchmodule_xyz'"),
    ("X = 1\n", r"broken/train\.py: expected one trial class \(a PyTorchTrial subclass with "
                r"MODEL_PARAMS\), found 0 \(none\)"),
    (TRIAL.format(name="A") + TRIAL.format(name="B").split("\n", 1)[1],
     r"broken/train\.py: expected one trial class .*found 2 \(A, B\)"),
])
def test_loading_errors_name_the_file(tmp_path, source, message):
    _write(tmp_path, {"trials/broken/train.py": source})
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.get("broken", tmp_path).trial_class()


def test_a_directory_without_train_py_is_not_a_recipe_and_family_needs_a_known_base(tmp_path):
    _write(tmp_path, {"trials/notes/README.md": "", "trials/odd/train.py": TRIAL.format(name="Odd"),
                      "experiment_configs/odd/b.yaml": "", "experiment_configs/odd/a.yaml": ""})
    assert list(recipes.discover(tmp_path)) == ["odd"]
    odd = recipes.get("odd", tmp_path)
    assert [p.name for p in odd.config_files()] == ["a.yaml", "b.yaml"]
    with pytest.raises(recipes.RecipeError, match=r"odd/train\.py: Odd derives from none of the family "
                                                  r"bases \(shared\.trial:SegmentationTrial, "
                                                  r"shared\.classification\.trial:ClassificationTrial, "
                                                  r"shared\.objects\.trial:BinarySegmentationTrial\)"):
        odd.family
    with pytest.raises(recipes.RecipeError, match=r"odd/model\.py: no such file"):
        odd.model_module()


def test_same_name_under_another_root_is_another_recipe(tmp_path):
    shutil.copytree(ROOT / "trials" / "unet", tmp_path / "trials" / "unet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    copy, original = recipes.get("unet", tmp_path), recipes.get("unet")
    assert copy.trial_class() is not original.trial_class()
    assert copy.trial_class().__module__ != original.trial_class().__module__
    assert pathlib.Path(copy.model_module().__file__) == tmp_path / "trials" / "unet" / "model.py"


# --------------------------------------------------------------------------- the docs check
def _section(text: str, heading: str) -> str:
    """The Markdown section under ``heading`` (up to the next heading of its level)."""
    level = heading.split(" ")[0]
    after = text.split(f"\n{heading}\n", 1)
    if len(after) < 2:
        return ""
    return re.split(rf"\n{level} ", after[1], maxsplit=1)[0]


def undocumented(root: pathlib.Path) -> List[str]:
    """Recipes under ``root`` missing from the docs that list models: every segmentation
    recipe needs a row in the README's "Models" table and a section in docs/models.md; every
    classification recipe is named in docs/classification.md; a binary-segmentation recipe
    has a row in the "Models" table and names itself in docs/<name>.md."""
    readme = (root / "README.md").read_text()
    models_md = (root / "docs" / "models.md").read_text()
    classification_md = (root / "docs" / "classification.md").read_text()
    table = _section(readme, "## Models")
    missing = []
    for name, recipe in recipes.discover(root).items():
        if recipe.family == "segmentation":
            if not re.search(rf"^\| `trials/{name}` \|", table, re.M):
                missing.append(f"README.md, table under '## Models': no row | `trials/{name}` |")
            if not re.search(rf"^## .*\(`trials/{name}`\)$", models_md, re.M):
                missing.append(f"docs/models.md: no section '## ... (`trials/{name}`)'")
        elif recipe.family == "classification":
            if f"trials/{name}/" not in classification_md:
                missing.append(f"docs/classification.md: trials/{name}/ is not named")
        else:  # binary_segmentation: a row in the Models table and its own doc
            if not re.search(rf"^\| `trials/{name}` \|", table, re.M):
                missing.append(f"README.md, table under '## Models': no row | `trials/{name}` |")
            doc = root / "docs" / f"{name}.md"
            if not doc.is_file() or f"trials/{name}/" not in doc.read_text():
                missing.append(f"docs/{name}.md: trials/{name}/ is not named")
    return missing


def test_every_recipe_is_in_the_docs_that_list_models():
    assert undocumented(ROOT) == []


# --------------------------------------------------------------------------- a sixth recipe
@pytest.fixture(scope="module")
def sixth(tmp_path_factory) -> pathlib.Path:
    """A repository root in tmp with a sixth segmentation recipe 'tinyseg' (U-Net's files
    copied) and nothing else: the library, pyproject.toml and the docs."""
    root = tmp_path_factory.mktemp("repo")
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "trials" / "unet", root / "trials" / "tinyseg", ignore=skip)
    (root / "experiment_configs" / "tinyseg").mkdir(parents=True)
    for kind in ("single_gpu", "asha"):
        shutil.copyfile(ROOT / "experiment_configs" / "unet" / f"{kind}.yaml",
                        root / "experiment_configs" / "tinyseg" / f"{kind}.yaml")
    shutil.copytree(ROOT / "shared", root / "shared", ignore=skip)
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("img"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / f, root / f)
    return root


def test_sixth_recipe_is_found_by_the_registry(sixth):
    (name,) = recipes.discover(sixth)
    recipe = recipes.get("tinyseg", sixth)
    assert name == "tinyseg" and recipe.family == "segmentation"
    assert recipe.trial_class().__module__.startswith("_recipe_tinyseg_train")
    assert [p.name for p in recipe.config_files()] == ["asha.yaml", "single_gpu.yaml"]


def test_sixth_recipe_is_found_by_the_config_checker(sixth, capsys):
    configs = recipes.get("tinyseg", sixth).config_files()
    for path in configs:
        assert expconf.check_config(path) == []  # its trial found beside it, under the tmp root
    assert expconf.main([str(p) for p in configs]) == 0
    assert "all 2 configs ok" in capsys.readouterr().out
    # and it is checked against its own trial: an unknown hyperparameter is caught
    bad = sixth / "experiment_configs" / "tinyseg" / "bad.yaml"
    bad.write_text(configs[1].read_text().replace("unet_base_channels", "unet_base_chanels"))
    try:
        (problem,) = expconf.check_config(bad)
    finally:
        bad.unlink()
    assert re.search(r"bad\.yaml: hyperparameters\.unet_base_chanels: unknown hyperparameter for "
                     r"UNetTrial \(did you mean 'unet_base_channels'\?\)", problem), problem


def test_sixth_recipe_is_found_by_the_packager(sixth, tmp_path, capsys):
    assert pkg.main(["all", "--root", str(sixth), "--out", str(tmp_path)]) == 0
    version = pkg.read_pyproject(sixth)["version"]
    built = tmp_path / f"tinyseg-recipe-{version}"
    assert "tinyseg-recipe-" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [built.name, built.name + ".tar.gz"]
    assert (built / "train.py").read_bytes() == (sixth / "trials" / "tinyseg" / "train.py").read_bytes()
    assert sorted(p.name for p in (built / "configs").iterdir()) == ["asha.yaml", "single_gpu.yaml"]
    readme = (built / "README.md").read_text()
    assert readme.startswith(pkg.MARKER) and "# tinyseg: energy-aware semantic segmentation" in readme


def test_sixth_recipe_is_found_by_the_docs_check(sixth):
    assert undocumented(sixth) == [
        "README.md, table under '## Models': no row | `trials/tinyseg` |",
        "docs/models.md: no section '## ... (`trials/tinyseg`)'",
    ]
    # documenting it is all it takes
    readme = sixth / "README.md"
    models_md = sixth / "docs" / "models.md"
    saved = readme.read_text(), models_md.read_text()
    try:
        readme.write_text(saved[0].replace("| `trials/unet` |", "| `trials/tinyseg` | tiny |\n| `trials/unet` |"))
        models_md.write_text(saved[1] + "\n## Tiny (`trials/tinyseg`)\n")
        assert undocumented(sixth) == []
    finally:
        readme.write_text(saved[0])
        models_md.write_text(saved[1])


def test_sixth_recipe_is_found_by_the_benchmark(sixth):
    from benchmarks import specs
    assert [s.name for s in specs._ours(sixth)] == ["tinyseg", *(v.name for v in specs.VARIANTS)]
    assert [s.name for s in specs.our_models()][:4] == \
        [n for n, r in recipes.discover().items() if r.family == "segmentation"]


# --------------------------------------------------------------------------- which shared/
#: how every train.py starts when run: its checkout's shared/ first (shared.localargs)
BOOTSTRAP = '''if __name__ == "__main__":  # --help and usage errors at once, before torch is imported
    # Run from a checkout (trials/<name>/train.py), its own shared/ comes first, before an
    # installed one or another checkout's; shipped beside us (a package, a cluster's context
    # directory) it is first already. parse_before_imports says if another one was imported.
    _trials = pathlib.Path(__file__).resolve().parent.parent
    if _trials.name == "trials" and (_trials.parent / "shared").is_dir():
        sys.path.insert(0, str(_trials.parent))
    from shared.localargs import parse_before_imports
'''


@pytest.mark.parametrize("name", list(recipes.discover()))
def test_every_train_py_puts_its_checkout_first(name):
    text = recipes.get(name).train_script.read_text()
    assert BOOTSTRAP in text, f"trials/{name}/train.py: the bootstrap stanza differs from the others'"
    assert text.index(BOOTSTRAP) < text.index("\nfrom shared."), \
        f"trials/{name}/train.py: the stanza must come before the module's shared imports"


def _run_help(script: pathlib.Path, pythonpath: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, str(script), "--help"], cwd=script.parent, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_checkouts_train_py_imports_its_own_shared_under_another_checkouts_path(tmp_path):
    """A clone's train.py run with this checkout on PYTHONPATH (as another checkout's
    virtualenv with its editable install would put it) imports the clone's shared/."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "shared", tmp_path / "shared", ignore=skip)
    shutil.copytree(ROOT / "trials" / "unet", tmp_path / "trials" / "unet", ignore=skip)
    with open(tmp_path / "shared" / "__init__.py", "a") as f:  # the copy says it was imported
        f.write("\nimport sys as _s\nprint('shared from', __file__, file=_s.stderr)\n")
    proc = _run_help(tmp_path / "trials" / "unet" / "train.py", ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: trials/unet/train.py"), proc.stderr
    assert proc.stderr.splitlines() == [f"shared from {tmp_path / 'shared' / '__init__.py'}"]


def test_a_train_py_without_its_own_shared_says_which_it_imported(tmp_path):
    shutil.copyfile(ROOT / "trials" / "unet" / "train.py", tmp_path / "train.py")
    proc = _run_help(tmp_path / "train.py", ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: trials/unet/train.py")
    assert proc.stderr.splitlines()[0] == (
        f"{tmp_path / 'train.py'}: imported the shared package from {ROOT / 'shared'}; it has "
        f"none of its own (no shared/ beside it or in a checkout above it)")


def test_the_origin_note_names_the_checkouts_own(tmp_path):
    from shared.localargs import shared_origin_note
    assert shared_origin_note(ROOT / "trials" / "unet" / "train.py") is None
    assert shared_origin_note(ROOT / "train.py") is None  # beside it: a package's layout
    (tmp_path / "trials" / "unet").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    assert shared_origin_note(tmp_path / "trials" / "unet" / "train.py") == (
        f"{tmp_path / 'trials' / 'unet' / 'train.py'}: imported the shared package from "
        f"{ROOT / 'shared'}; not its own {tmp_path / 'shared'}")
