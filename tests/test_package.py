"""Customer packages (shared/package/) and the cluster kit (cluster/).

The package is built once, unpacked outside the repository and trained from there in a
subprocess that cannot see the repository on its path; the import analysis is checked on a
small library written here; the cluster files are parsed and cross-checked.
"""
import importlib.util
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
from typing import Any, Dict, List

import pytest
import yaml

from mdtables import squeeze
from shared import package as pkg
from shared import recipes
from shared.data.synthetic import generate
from shared.hparams import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
TINY = ["crop_size=32", "scale=[64,32]", "num_classes=4", "global_batch_size=4", "workers_per_slot=0",
        "warmup_batches=2", "report_period=2", "unet_base_channels=8", "unet_depth=2",
        "energy.enabled=false"]


def _env_outside_repo(**extra):
    """The environment of a customer's shell: no PYTHONPATH, no user site; bytecode written
    (the test reads the __pycache__ it leaves to see which copy was imported)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHOME")
           and not k.startswith("ENERGY_")}
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


EPOCH = "1700000000"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        return pkg.build_package("unet", tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def unpacked(built, tmp_path_factory):
    dest = tmp_path_factory.mktemp("customer")
    with tarfile.open(built.archive) as tar:
        # the "data" filter refuses absolute paths, links out of dest, devices (Python >= 3.11.4)
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (top,) = list(dest.iterdir())
    return top


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), num_train=8, num_val=2, num_classes=4,
                    min_size=32, max_size=48, seed=1)


# --------------------------------------------------------------------------- the package runs
def test_unpacked_package_trains_with_its_own_copy_of_shared(unpacked, data):
    assert unpacked.name == f"unet-recipe-{pkg.read_pyproject(ROOT)['version']}"
    assert not list(unpacked.rglob("__pycache__")), "the archive must not carry bytecode"
    env = _env_outside_repo()
    assert str(ROOT) not in env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/single_gpu.yaml", "--data-dir", str(data),
         "--batches", "3", "--set", *TINY],
        cwd=unpacked, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = list((unpacked / "runs").iterdir())  # the default output dir, under the cwd
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps_completed"] for r in records if r["group"] == "training"] == [2, 3]
    assert [r["steps_completed"] for r in records if r["group"] == "validation"] == [3]
    # The package's shared/ was the one imported: Python compiled it there. (shared/__init__
    # from the copy makes shared.__path__ the copy, so every submodule came from it too.)
    compiled = {p.name.split(".")[0] for p in (unpacked / "shared" / "__pycache__").glob("*.pyc")}
    assert {"__init__", "launch", "trial", "hparams"} <= compiled
    # Local mode copies the working directory into checkpoints through .detignore.
    code_dirs = list(run.glob("checkpoints/*/code"))
    assert code_dirs and (code_dirs[0] / "train.py").is_file()
    assert not (code_dirs[0] / "configs").exists() and not (code_dirs[0] / "runs").exists()


def test_script_directory_comes_before_any_installed_shared(unpacked, tmp_path):
    probe = "import json, sys, shared; print(json.dumps([sys.path[0], shared.__file__]))\n"
    (unpacked / "probe_import.py").write_text(probe)
    # Even with the repository explicitly on PYTHONPATH, the copy beside the script wins.
    proc = subprocess.run([sys.executable, str(unpacked / "probe_import.py")], cwd=tmp_path,
                          env=_env_outside_repo(PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path0, found = json.loads(proc.stdout)
    assert pathlib.Path(path0) == unpacked
    assert pathlib.Path(found) == unpacked / "shared" / "__init__.py"
    # Control: the same script elsewhere imports another shared (the repository's editable
    # install) or none, so the check above can tell the two apart.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "probe_import.py").write_text(probe)
    proc = subprocess.run([sys.executable, str(elsewhere / "probe_import.py")], cwd=elsewhere,
                          env=_env_outside_repo(), capture_output=True, text=True)
    if proc.returncode == 0:
        assert unpacked not in pathlib.Path(json.loads(proc.stdout)[1]).parents
    else:
        assert "No module named 'shared'" in proc.stderr


# --------------------------------------------------------------------------- what is in it
def test_layout_trial_files_and_configs(built):
    d = built.directory
    for f in (ROOT / "trials" / "unet").glob("*.py"):
        assert (d / f.name).read_bytes() == f.read_bytes()
    sources = sorted((ROOT / "experiment_configs" / "unet").glob("*.yaml"))
    assert sorted(p.name for p in (d / "configs").iterdir()) == [p.name for p in sources]
    for src in sources:
        shipped = (d / "configs" / src.name).read_text()
        assert yaml.safe_load(shipped) == yaml.safe_load(src.read_text())
        assert f"det experiment create configs/{src.name} ." in shipped
        assert "trials/unet" not in shipped and "--include shared" not in shipped
    req = (d / "requirements.txt").read_text().splitlines()
    assert [r for r in req if not r.startswith("#")] == built.requirements
    assert "timm" not in " ".join(built.requirements)  # U-Net does not import timm
    project = pkg.read_pyproject(ROOT)
    allowed = set(project["dependencies"]) | set(project["optional-dependencies"]["local"])
    assert set(built.requirements) <= allowed


def test_shared_copy_is_the_import_closure(built):
    names = set(built.closure.modules)
    # the trial's direct imports, lazy imports inside functions, and the energy sources that
    # shared.energy.select imports by name from a string table
    assert {"shared", "shared.launch", "shared.trial", "shared.data.ade20k", "shared.pretrained",
            "shared.energy.sources.redfish", "shared.energy.sources.prometheus"} <= names
    assert "shared.demo" in built.closure.dropped and "shared.package" in built.closure.dropped
    shipped = {str(p.relative_to(built.directory)) for p in (built.directory / "shared").rglob("*.py")}
    assert shipped == {str(p.relative_to(ROOT)) for p in built.closure.modules.values()}
    assert not (built.directory / "shared" / "demo.py").exists()


def test_detignore_keeps_the_context_small(built, tmp_path):
    files = set(built.context_files)
    assert {"train.py", "model.py", "shared/trial.py", "README.md", "requirements.txt"} <= files
    assert not any(f.startswith(("configs/", "docs/", "runs/")) for f in files)
    assert 0 < built.context_bytes < 95 * 2**20
    # What a customer adds next to the recipe stays out too (Determined's own .detignore walk).
    copy = tmp_path / "recipe"
    shutil.copytree(built.directory, copy)
    for rel in ("runs/r1/big.bin", "tests/test_x.py", "test_local.py", "old.tar.gz",
                "shared/__pycache__/x.cpython-311.pyc"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(b"x" * 1000)
    files2, size2 = pkg.context_contents(copy)
    assert set(files2) == files and size2 == built.context_bytes


def test_docs_figures_of_the_unet_package_are_measured(built):
    """docs/packages.md's module count, files and size of the U-Net package are this build's,
    within 10% (they grow with the library: update the doc when this fails)."""
    import re
    doc = (ROOT / "docs" / "packages.md").read_text()
    modules = int(re.search(r"the library modules the trial imports \((\d+) of them for U-Net", doc)[1])
    files, kib = re.search(r"a U-Net package\s+uploads (\d+) files, about (\d+) KiB", doc).groups()
    assert len(built.closure.modules) == pytest.approx(modules, rel=0.10), len(built.closure.modules)
    assert len(built.context_files) == pytest.approx(int(files), rel=0.10), len(built.context_files)
    assert built.context_bytes / 1024 == pytest.approx(int(kib), rel=0.10), built.context_bytes / 1024


def test_readme_documents_what_the_code_does(built):
    readme = squeeze((built.directory / "README.md").read_text())
    version = pkg.read_pyproject(ROOT)["version"]
    assert readme.splitlines()[0] == pkg.MARKER
    assert f"energy-seg-recipes {version} (" in readme and built.stamp in readme
    # every variable the energy code reads from the environment is documented (found here
    # independently of the generator: env lookups and ENV_* constants in the source)
    read = set()
    for path in (ROOT / "shared" / "energy").rglob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r'(?:environ|env)\.get\(\s*"(ENERGY_[A-Z_]+)"', text))
        read |= set(re.findall(r'^ENV_\w+ = "(ENERGY_[A-Z_]+)"', text, re.M))
    assert read, "the scan found no variable: its patterns are stale"
    assert {v for v in read if f"`{v}`" not in readme} == set()
    # every hyperparameter of the trial's schema has a row
    trial_cls = recipes.get("unet").trial_class()
    for key in {**trial_cls.COMMON_PARAMS, **trial_cls.MODEL_PARAMS}:
        assert f"| `{key}` |" in readme or key == "energy"
    # every metric listed is one the shipped code names (nothing invented)
    code = "\n".join(p.read_text() for p in (built.directory / "shared").rglob("*.py"))
    metrics = re.findall(r"^\| (?:training|validation|energy|run) \| `(\w+)` \|", readme, re.M)
    assert len(metrics) > 20 and all(f'"{m}"' in code for m in metrics)
    assert "`shared.demo`" in readme.split("Left out")[1]


# --------------------------------------------------------------------------- classification
@pytest.fixture(scope="module")
def built_classification(tmp_path_factory):
    return pkg.build_package("image_classification", tmp_path_factory.mktemp("dist-cls"))


def _smoke_commands(readme: str):
    """The README's smoke-test commands, continuation lines joined."""
    block = readme.split("A smoke test on a generated data set")[1].split("```bash\n")[1].split("```")[0]
    return [shlex.split(cmd) for cmd in block.replace("\\\n", " ").splitlines() if cmd.strip()]


def test_classification_package_trains_by_its_readme_outside_the_repository(built_classification,
                                                                            tmp_path):
    with tarfile.open(built_classification.archive) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    unpacked = tmp_path / built_classification.directory.name
    readme = (unpacked / "README.md").read_text()
    commands = _smoke_commands(readme)
    assert [c[:3] for c in commands] == [["python", "-m", "shared.classification.synthetic"],
                                         ["python", "train.py", "--config"]]
    data = tmp_path / "cls"
    env = _env_outside_repo()
    for cmd in commands:
        args = [str(data) if c == "/tmp/cls" else c for c in cmd[1:]]  # cmd[0] is "python"
        proc = subprocess.run([sys.executable, *args], cwd=unpacked, env=env, capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = list((unpacked / "runs").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (validation,) = [r for r in records if r["group"] == "validation"]
    assert validation["steps_completed"] == 3 and 0 <= validation["metrics"]["accuracy"] <= 100
    assert any(r["group"] == "resources" for r in records)
    # the package's shared/ was imported (the generator and the trial's modules are shipped)
    assert (unpacked / "shared" / "classification" / "synthetic.py").is_file()
    assert not (unpacked / "shared" / "package").exists()


def test_classification_readme_is_the_classification_one(built_classification):
    readme = squeeze((built_classification.directory / "README.md").read_text())
    assert "energy-aware image classification recipe" in readme
    prose = readme.split("## What `shared/` holds")[0]  # (the module list names shared.data.ade20k)
    assert not {w for w in ("segmentation", "ADE20K", "miou", "mIoU") if w in prose}
    trial_cls = recipes.get("image_classification").trial_class()
    for key in {**trial_cls.COMMON_PARAMS, **trial_cls.MODEL_PARAMS}:
        assert f"| `{key}` |" in readme or key == "energy", key
    assert "--data-dir /data/imagefolder" in readme and "`--epochs N`" not in readme
    code = "\n".join(p.read_text() for p in (built_classification.directory / "shared").rglob("*.py"))
    metrics = re.findall(r"^\| (training|validation|energy|run|resources) \| `(\w+)` \|", readme, re.M)
    names = {(g, m) for g, m in metrics}
    assert {("validation", "accuracy"), ("validation", "top5_accuracy"),
            ("validation", "mean_class_accuracy"), ("validation", "validation_loss"),
            ("resources", "cpu_percent"), ("resources", "gpu_peak_mb")} <= names
    assert all(f'"{m}"' in code for _, m in metrics)
    assert "psutil" in " ".join(built_classification.requirements)


def test_segmentation_readme_smoke_generator_is_shipped(built):
    readme = (built.directory / "README.md").read_text()
    (generate_cmd, _) = _smoke_commands(readme)
    module = generate_cmd[2]
    assert (built.directory / (module.replace(".", "/") + ".py")).is_file()
    assert "energy-aware semantic segmentation recipe" in readme


def test_unknown_family_is_refused_with_the_known_ones():
    with pytest.raises(pkg.PackageError, match=r"no README texts for trial family 'detection'; "
                                               r"known: segmentation, classification"):
        pkg.readme.family_text("detection")


def test_extra_module_must_exist(tmp_path):
    _write(tmp_path, {"shared/__init__.py": "", "trials/foo/train.py": "import shared\n"})
    with pytest.raises(pkg.PackageError, match=r"shared\.nope: asked to ship it, but .*shared has no"):
        pkg.analyse([tmp_path / "trials" / "foo" / "train.py"], tmp_path, extra=["shared.nope"])


# --------------------------------------------------------------------------- import analysis
def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_analysis_follows_lazy_relative_dynamic_and_registry_imports(tmp_path):
    _write(tmp_path, {
        "shared/__init__.py": "",
        "shared/a.py": "from . import b\n",
        "shared/b.py": 'TABLE = {"c": ("shared.c", "C")}\n',
        "shared/c.py": "def f():\n    from .d import x\n    return x\n",
        "shared/d.py": "x = 1\n",
        "shared/e.py": "import matplotlib\n",
        "shared/t.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shared import e\n",
        "shared/sub/__init__.py": "",
        "shared/sub/m.py": "try:\n    import optpkg\nexcept ImportError:\n    optpkg = None\n",
        "shared/sub/classes.json": "[]",
        "shared/sub/inner/__init__.py": "",
        "shared/sub/inner/res.txt": "not shipped: shared.sub.inner is not imported",
        "trials/foo/train.py": "import shared.a\nimport shared.t\nfrom model import build\nimport reqpkg.sub\n",
        "trials/foo/model.py": 'import importlib\nM = importlib.import_module("shared.sub.m")\n',
    })
    closure = pkg.analyse(sorted((tmp_path / "trials" / "foo").glob("*.py")), tmp_path)
    assert set(closure.modules) == {"shared", "shared.a", "shared.b", "shared.c", "shared.d",
                                    "shared.t", "shared.sub", "shared.sub.m"}
    assert set(closure.dropped) == {"shared.e", "shared.sub.inner"}
    assert [p.name for p in closure.data_files] == ["classes.json"]
    assert {k: v[0] for k, v in closure.third_party.items()} == {"reqpkg": True, "optpkg": False}

    project = {"version": "1", "dependencies": ["reqpkg>=2", "unused"], "optional-dependencies":
               {"local": ["tensorboard"]}}
    assert pkg.requirements(closure.third_party, project, tmp_path / "pyproject.toml") == \
        ["reqpkg>=2", "tensorboard"]
    with pytest.raises(pkg.PackageError, match=r"train\.py imports 'reqpkg' .* does not list"):
        pkg.requirements(closure.third_party, {"dependencies": []}, tmp_path / "pyproject.toml")


def test_segformer_needs_timm():
    closure = pkg.analyse(sorted((ROOT / "trials" / "segformer").glob("*.py")), ROOT)
    assert closure.third_party["timm"][0] is True
    reqs = pkg.requirements(closure.third_party, pkg.read_pyproject(ROOT), ROOT / "pyproject.toml")
    assert "timm" in reqs


@pytest.mark.parametrize("files, message", [
    ({"shared/__init__.py": "", "shared/x.py": "from ... import y\n"}, r"x\.py:1: relative import beyond"),
    ({"shared/__init__.py": "", "shared/x.py": "def (:\n"}, r"x\.py: cannot be parsed"),
    ({"shared/x.py": ""}, r"shared: no such package"),
])
def test_analysis_errors_name_the_file(tmp_path, files, message):
    _write(tmp_path, {**files, "trials/foo/train.py": "import shared.x\n"})
    with pytest.raises(pkg.PackageError, match=message):
        pkg.analyse([tmp_path / "trials" / "foo" / "train.py"], tmp_path)


# --------------------------------------------------------------------------- build errors
def test_unknown_model_and_missing_configs(tmp_path):
    with pytest.raises(pkg.PackageError, match=r"unknown model 'nope': .*trials/nope/train\.py does "
                                               r"not exist; known recipes: .*unet"):
        pkg.build_package("nope", tmp_path)
    _write(tmp_path / "repo", {"trials/foo/train.py": "", "pyproject.toml": '[project]\nversion = "1"\n'})
    with pytest.raises(pkg.PackageError, match=r"no experiment configs for foo: .*experiment_configs/foo"):
        pkg.build_package("foo", tmp_path / "out", root=tmp_path / "repo")


def test_refuses_to_replace_a_directory_it_did_not_make(tmp_path):
    version = pkg.read_pyproject(ROOT)["version"]
    (tmp_path / f"unet-recipe-{version}").mkdir()
    (tmp_path / f"unet-recipe-{version}" / "notes.txt").write_text("mine")
    with pytest.raises(pkg.PackageError, match=r"exists and was not made by shared\.package"):
        pkg.build_package("unet", tmp_path)
    assert (tmp_path / f"unet-recipe-{version}" / "notes.txt").read_text() == "mine"


def test_config_checks_name_the_file(tmp_path, built):
    trial_cls = recipes.get("unet").trial_class()
    bad = tmp_path / "bad.yaml"
    bad.write_text("entrypoint: python3 train.py\nhyperparameters:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown hyperparameter 'lrr'"):
        pkg.check_config(bad, trial_cls, built.directory)
    bad.write_text("entrypoint: python3 other.py\nhyperparameters:\n  lr: 0.1\n")
    with pytest.raises(pkg.PackageError, match=r"bad\.yaml: entrypoint .* runs other\.py"):
        pkg.check_config(bad, trial_cls, built.directory)


def test_context_over_the_limit_is_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(pkg.PackageError, match=r"context of unet-recipe-.* MiB, over the"):
        pkg.build_package("unet", tmp_path, max_context_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_command_line_rebuilds_and_reports_errors(built, capsys, monkeypatch):
    out = built.directory.parent
    first = built.archive.read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    assert pkg.main(["unet", "--out", str(out)]) == 0  # replaces its own earlier build
    printed = capsys.readouterr().out
    assert "left out: " in printed and "shared.demo" in printed
    assert (built.directory / "README.md").read_text().startswith(pkg.MARKER)
    assert built.archive.read_bytes() == first  # same sources, same SOURCE_DATE_EPOCH: same bytes
    assert pkg.main(["nope", "--out", str(out)]) == 2
    assert "error: unknown model 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- cluster kit
def test_every_cluster_yaml_parses():
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {f.name for f in files} >= {"master.yaml", "agent.yaml", "helm-values.yaml"}
    for f in files:
        assert isinstance(yaml.safe_load(f.read_text()), dict), f


def _pools(conf):
    return {p["pool_name"]: p for p in conf["resource_pools" if "resource_pools" in conf else "resourcePools"]}


def test_master_agent_and_helm_pools_agree():
    master = yaml.safe_load((CLUSTER / "master.yaml").read_text())
    agent = yaml.safe_load((CLUSTER / "agent.yaml").read_text())
    helm = yaml.safe_load((CLUSTER / "helm-values.yaml").read_text())
    assert set(_pools(master)) == set(_pools(helm)) == {"single-node", "a100-ib"}
    assert agent["resource_pool"] in _pools(master) and agent["container_runtime"] == "docker"
    assert master["checkpoint_storage"]["type"] == helm["checkpointStorage"]["type"] == "shared_fs"
    assert master["resource_manager"]["default_compute_resource_pool"] in _pools(master)
    # the pool the multi-node configs ask for exists
    for conf in ROOT.glob("experiment_configs/*/multi_node.yaml"):
        assert yaml.safe_load(conf.read_text())["resources"]["resource_pool"] in _pools(master)
    for name, pool in _pools(master).items():
        tcd = pool["task_container_defaults"]
        # a pool's defaults reset these two unless repeated (docs/cluster.md)
        assert "shm_size_bytes" in tcd and "network_mode" in tcd, name
        for mount in tcd.get("bind_mounts", []):
            assert mount["host_path"].startswith("/") and mount["read_only"] is True
        for dev in tcd.get("devices", []):
            assert dev["host_path"].startswith("/dev/") and dev["container_path"].startswith("/dev/")
        env = dict(e.split("=", 1) for e in tcd["environment_variables"])
        rapl = env["ENERGY_RAPL_ROOT"]
        assert any(m["container_path"] == rapl for m in tcd["bind_mounts"]), name
    ib = _pools(master)["a100-ib"]["task_container_defaults"]
    assert ib["network_mode"] == "host" and "IPC_LOCK" in ib["add_capabilities"]
    # the credentials file the pool names lives in the directory it mounts
    env = dict(e.split("=", 1) for e in ib["environment_variables"])
    assert any(env["ENERGY_REDFISH_CREDENTIALS_FILE"].startswith(m["container_path"] + "/")
               for m in ib["bind_mounts"])
    images = {master["task_container_defaults"]["image"]["cuda"], helm["taskContainerDefaults"]["gpuImage"]}
    version = pkg.read_pyproject(ROOT)["version"]
    assert images == {pkg.TASK_IMAGE.format(version=version)}


def test_dockerfile_pins_what_the_project_pins():
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    pinned = dict(re.findall(r"^(\S+)==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M))
    assert args["DETERMINED_VERSION"] == pinned["determined"]
    assert args["PROJECT_VERSION"] == pkg.read_pyproject(ROOT)["version"]
    base = re.fullmatch(r"pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda12\.\d+-cudnn\d+-runtime", args["BASE_IMAGE"])
    assert base and (int(base[1]), int(base[2])) >= (2, 4)
    # every package installed with pip is pinned to one of those ARGs
    installs = re.findall(r'"([\w.-]+)==\$\{(\w+)\}"', text)
    assert {p for p, _ in installs} == {"determined", "timm", "nvidia-ml-py", "tensorboard"}
    assert all(a in args for _, a in installs)
    assert "apt-get install" in text and "ipmitool" in text
    assert re.search(r"^COPY pyproject\.toml ", text, re.M) and re.search(r"^COPY shared ", text, re.M)
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!pyproject.toml" in ignore and "!shared" in ignore


def test_build_script_tags_from_pyproject(tmp_path):
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "BUILDKIT=$DOCKER_BUILDKIT $*" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "DOCKER": str(fake)}
    proc = subprocess.run(["bash", str(CLUSTER / "build-image.sh"), "--push", "reg.example:5000/team/"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    tag = pkg.TASK_IMAGE.format(version=pkg.read_pyproject(ROOT)["version"])
    build, tagcmd, push = log.read_text().splitlines()
    assert build == f"BUILDKIT=1 build -f {CLUSTER}/Dockerfile -t {tag} --build-arg " \
                    f"PROJECT_VERSION={pkg.read_pyproject(ROOT)['version']} {ROOT}"
    assert tagcmd.endswith(f"tag {tag} reg.example:5000/team/{tag}")
    assert push.endswith(f"push reg.example:5000/team/{tag}")
    bad = subprocess.run(["bash", str(CLUSTER / "build-image.sh"), "--push"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--push needs a registry" in bad.stderr


def _bench():
    spec = importlib.util.spec_from_file_location("allreduce_bench", CLUSTER / "allreduce_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_allreduce_bench_formulas_and_a_one_rank_run(tmp_path, monkeypatch):
    bench = _bench()
    assert bench.bus_bandwidth(10.0, 8) == pytest.approx(17.5)  # 2 (n - 1) / n
    assert bench.bus_bandwidth(10.0, 1) == 0.0
    assert bench.message_sizes(1000, 64000, 4, 4) == [1000, 4000, 16000, 64000]
    assert bench.message_sizes(6, 6, 2, 4) == [4]
    with pytest.raises(ValueError, match="--min-bytes <= --max-bytes"):
        bench.message_sizes(10, 5, 2, 4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "bench.json"
    assert bench.main(["--min-bytes", "1K", "--max-bytes", "4K", "--factor", "2", "--iters", "2",
                       "--warmup", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["world_size"] == 1 and [r["bytes"] for r in result["results"]] == [1024, 2048, 4096]
    assert all(r["time_us"] > 0 and r["busbw_gbps"] == 0.0 for r in result["results"])


# --------------------------------------------------------------------------- rare objects
def test_rare_objects_package_trains_in_two_processes_to_its_validation_loss_target(tmp_path):
    """Issue 15, in one pair of processes: the package carries trials/unet's model.py (the
    recipe's model is that U-Net, through the registry) and, unpacked outside the repository,
    its README's smoke test trains under torchrun (2 ranks, gloo), mines hard negatives, reaches
    its validation-loss target with time and energy to target (fake RAPL), and the report
    draws the run's object precision and recall against energy."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes.powercap import FakePowercap
    from shared.report import build_report, load_local

    result = pkg.build_package("rare_objects", tmp_path / "dist")
    with tarfile.open(result.archive) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    unpacked = tmp_path / result.directory.name
    assert (unpacked / "trials" / "unet" / "model.py").read_bytes() == \
        (ROOT / "trials" / "unet" / "model.py").read_bytes()
    assert not (unpacked / "trials" / "unet" / "train.py").exists()
    readme = (unpacked / "README.md").read_text()
    assert "energy-aware rare-small-objects (binary segmentation) recipe" in readme
    generate_cmd, train_cmd = _smoke_commands(readme)
    assert generate_cmd[:3] == ["python", "-m", "shared.data.synthetic_rare"]
    assert train_cmd[:3] == ["python", "train.py", "--config"]
    data, out = tmp_path / "rare", tmp_path / "run"
    tree = FakePowercap(tmp_path / "powercap")
    tree.add_zone("intel-rapl:0", "package-0")
    env = _env_outside_repo(OMP_NUM_THREADS="1", ENERGY_SOURCES="rapl",
                            ENERGY_RAPL_ROOT=str(tmp_path / "powercap"))
    proc = subprocess.run([sys.executable, *[str(data) if c == "/tmp/rare" else c for c in generate_cmd[1:]]],
                          cwd=unpacked, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = subprocess.run([sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True).stdout.strip()
    # the README's command (its cmd[0] is "python"), under torchrun, with a longer run
    train = [str(data) if c == "/tmp/rare" else c for c in train_cmd[1:]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           *train, "--batches", "30", "--output-dir", str(out),
           "--set", "lr=0.01", "global_batch_size=8", "base_batch_size=8", "unet_base_channels=4",
           "dropout=0.0", "report_period=5", "validation_period=10", "checkpoint_period=20",
           "mine_period=5", "mine_tiles=32", "hard_negative_pool=4", "ap_thresholds=3",
           "target_value=0.68", "stop_at_target=true", "energy.enabled=true",
           f"tile_cache_dir={tmp_path / 'cache'}"]
    # the counter advances every 2 ms, so that one mining of 32 tiles (a few ms) sees it move
    with tree.constant_power("intel-rapl:0", 40.0, period_s=0.002):
        proc = subprocess.run(cmd, cwd=unpacked, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by: Dict[str, List[Dict[str, Any]]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["group"], []).append(r)
    run = by["run"][0]["metrics"]
    assert (run["slots"], run["target_metric"], run["target_smaller_is_better"]) == (2, "validation_loss", True)
    last = by["validation"][-1]["metrics"]
    assert last["validation_loss"] <= 0.68 and last["time_to_target_s"] > 0
    assert 0 < last["energy_to_target_wh"] <= last["energy_wh"]
    assert last["batches_to_target"] == by["validation"][-1]["steps_completed"] < 30  # stopped there
    for key in ("iou", "f1", "object_precision", "object_recall", "object_f1", "average_precision"):
        assert 0 <= last[key] <= 100, key
    assert last["validation_images"] == 2 and math.isfinite(last["false_positives_per_image"])
    mining = by["mining"][-1]["metrics"]
    assert mining["minings"] >= 1 and mining["mined_tiles"] >= 1 and mining["mining_s"] > 0
    energy = by["energy"][-1]["metrics"]
    phases = ("setup_wh", "train_wh", "validation_wh", "checkpoint_wh", "mining_wh")
    assert energy["mining_wh"] > 0
    assert sum(energy[k] for k in phases) == pytest.approx(energy["energy_wh"], rel=1e-9)
    report = build_report(load_local(out), tmp_path / "report")
    (chart,) = [c for c in report.charts if c.name == "objects_vs_energy"]
    assert len(chart.plotted) == 1 and chart.path.stat().st_size > 0


# ----------------------------------------------------------------------------- what never ships (issue 22)
def _repo_copy(dest: pathlib.Path, *models: str) -> pathlib.Path:
    """A throw-away copy of the repository parts a package is built from."""
    ignore = shutil.ignore_patterns("__pycache__", "runs", "*.pyc")
    shutil.copytree(ROOT / "shared", dest / "shared", ignore=ignore)
    for m in models:
        shutil.copytree(ROOT / "trials" / m, dest / "trials" / m, ignore=ignore)
        shutil.copytree(ROOT / "experiment_configs" / m, dest / "experiment_configs" / m)
    shutil.copytree(ROOT / "docs", dest / "docs")
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(ROOT / "trials" / ".detignore", dest / "trials" / ".detignore")
    return dest


def _everything_shipped(result) -> List[str]:
    with tarfile.open(result.archive) as tar:
        in_tar = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    on_disk = [str(p.relative_to(result.directory)) for p in result.directory.rglob("*")]
    return sorted(set(in_tar) | set(on_disk) | set(result.context_files))


def test_the_package_is_an_allow_list_and_refuses_secrets_and_outside_links(tmp_path):
    """A git-ignored shared/energy/.env, a key linked in from outside the tree, a stray data
    file of another kind: none reaches the directory, the tarball or the upload. A file that
    the allow-list would ship but that looks like a secret, or a link out of the tree, stops
    the build, named."""
    root = _repo_copy(tmp_path / "repo", "unet")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (root / "shared" / "energy" / ".env").write_text("ENERGY_REDFISH_PASSWORD=hunter2\n")
    (root / "shared" / "data" / "bmc_key.pem").symlink_to(outside / "id_rsa")
    (root / "shared" / "data" / "notes.bin").write_bytes(b"\0" * 10)
    (root / "trials" / "unet" / ".env").write_text("TOKEN=x\n")
    result = pkg.build_package("unet", tmp_path / "dist", root=root)
    shipped = _everything_shipped(result)
    for name in (".env", "bmc_key.pem", "notes.bin", "id_rsa"):
        assert not any(pathlib.PurePath(p).name == name for p in shipped), name
    assert not any("hunter2" in p.read_text(errors="ignore")
                   for p in result.directory.rglob("*") if p.is_file())

    (root / "shared" / "data" / "credentials.json").write_text('{"password": "hunter2"}')
    with pytest.raises(pkg.PackageError) as e:
        pkg.build_package("unet", tmp_path / "dist", root=root)
    assert str(e.value) == ("refusing to ship files that look like secrets: "
                            "shared/data/credentials.json (move them out of the repository's "
                            "trial and library directories)")
    (root / "shared" / "data" / "credentials.json").unlink()
    (outside / "table.json").write_text("[]")
    (root / "shared" / "data" / "table.json").symlink_to(outside / "table.json")
    with pytest.raises(pkg.PackageError, match=r"refusing to ship symbolic links that leave the "
                                               r"repository: shared/data/table\.json -> .*outside/table\.json"):
        pkg.build_package("unet", tmp_path / "dist", root=root)


def test_every_detignore_keeps_venvs_runs_caches_and_secrets_out():
    from shared.package.build import CONTEXT_EXCLUDES, DETIGNORE
    files = [*sorted((ROOT / "trials").glob("*/.detignore")), ROOT / "trials" / ".detignore",
             ROOT / "shared" / ".detignore"]
    assert {f.parent.name for f in files} >= {*recipes.discover(), "trials", "shared"}
    for text, where in [(f.read_text(), f) for f in files] + [(DETIGNORE, "the package's")]:
        lines = {x.strip() for x in text.splitlines()}
        assert set(CONTEXT_EXCLUDES) <= lines, (where, set(CONTEXT_EXCLUDES) - lines)

def test_local_checkpoints_copy_no_venv_runs_or_secrets(tmp_path):
    """Local mode copies the working directory (the trial's) into every checkpoint's code/,
    filtered by its .detignore: a .env in a trial directory used to land in every checkpoint."""
    from determined.common import detignore
    trial = tmp_path / "unet"
    trial.mkdir()
    shutil.copy(ROOT / "trials" / "unet" / ".detignore", trial / ".detignore")
    for d in (".venv", "venv", "runs"):
        (trial / d).mkdir()
    files = [".env", ".env.local", "train.py", "model.py", "id_rsa", "site_credentials.yaml",
             "cache.npy"]
    for f in files:
        (trial / f).write_text("x")
    ignore = detignore.make_shutil_ignore(trial)
    assert sorted(ignore(str(trial), [".venv", "venv", "runs", *files])) == sorted(
        {".venv", "venv", "runs", *files} - {"train.py", "model.py"})


def test_the_rare_objects_context_cannot_grow_with_old_runs(tmp_path):
    """Its documented `--include shared --include trials`: Determined reads only each included
    directory's top-level .detignore; trials/.detignore keeps every trial's runs out (two 60 MB
    checkpoints in another trial's runs/ used to exceed the 95 MB limit)."""
    from determined.common import context
    root = _repo_copy(tmp_path / "repo", "rare_objects", "unet")
    for where in ("trials/unet/runs/old/checkpoints/x", "trials/rare_objects/runs/y",
                  "trials/unet/.venv/lib"):
        (root / where).mkdir(parents=True)
        (root / where / "big.bin").write_bytes(b"\0" * 2**20)
    (root / "shared" / "energy" / ".env").write_text("x")
    files = context.read_v1_context(root / "trials" / "rare_objects",
                                     [root / "shared", root / "trials"])
    paths = [f.path for f in files]
    assert "trials/unet/model.py" in paths and "shared/trial.py" in paths
    assert not [p for p in paths if "runs" in p.split("/") or ".venv" in p or p.endswith(".env")]
    assert sum(f.content and len(f.content) or 0 for f in files) < 5 * 2**20


def test_the_readme_puts_the_venv_outside_the_package(built, tmp_path):
    readme = (built.directory / "README.md").read_text()
    assert "python -m venv ~/venvs/unet-recipe && . ~/venvs/unet-recipe/bin/activate" in readme
    assert "venv .venv" not in readme and "Keep the virtual environment outside this directory" in readme
    copy = tmp_path / "pkg"
    shutil.copytree(built.directory, copy)
    (copy / ".venv" / "lib").mkdir(parents=True)
    (copy / ".venv" / "lib" / "torch.so").write_bytes(b"\0" * 1000)
    (copy / "runs" / "unet-1").mkdir(parents=True)
    (copy / "runs" / "unet-1" / "metrics.jsonl").write_text("{}\n")
    files, size = pkg.build.context_contents(copy)
    assert files == built.context_files and size == built.context_bytes
