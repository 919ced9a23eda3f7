"""The experiment-config matrix (4 models x single_gpu, 8_gpu, multi_node, asha, asha_energy)
and the checker of Determined 0.38 configs, ``shared.expconf``: every shipped config passes,
broken copies fail with a message naming the file and the key, the multi-GPU configs are the
single-GPU recipe scaled to the same images, and each config's point builds its model and
takes one training step (CPU, 32x32)."""
from __future__ import annotations

import copy
import math
import pathlib
import random
import re
from typing import Any, Callable, Dict

import pytest
import torch
import torch.nn.functional as F
import yaml

from shared import configfile
from shared import expconf
from shared import hparams as hpmod
from shared.engine import build_optimizer
from shared.hparams import ConfigError
from shared.schedule import WarmupPoly, lr_scaling_rule, scaled_lr

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("unet", "segformer", "deeplabv3plus", "segmenter")
KINDS = ("single_gpu", "8_gpu", "multi_node", "asha", "asha_energy")
MINE = ("8_gpu", "multi_node", "asha", "asha_energy")
SIZE_KEY = {"unet": "unet_base_channels", "segformer": "segformer_variant",
            "deeplabv3plus": "deeplab_backbone", "segmenter": "segmenter_backbone"}
IMAGE = "energy-seg-recipes/task:0.1.0-cuda12"
# every config of every trial family (image_classification included), not only the matrix above
SHIPPED = sorted(ROOT.glob("experiment_configs/*/*.yaml"))


def config_path(model: str, kind: str) -> pathlib.Path:
    return ROOT / "experiment_configs" / model / f"{kind}.yaml"


def need_trial(model: str) -> None:
    if not (ROOT / "trials" / model / "train.py").is_file():
        pytest.skip(f"trials/{model}/train.py is not there yet")


def load(model: str, kind: str) -> Dict[str, Any]:
    return yaml.safe_load(config_path(model, kind).read_text())


def point(conf: Dict[str, Any]) -> Dict[str, Any]:
    return configfile.point_from_space(conf["hyperparameters"], "test")


# ----------------------------------------------------------------------------- shipped configs
def test_the_matrix_is_complete():
    missing = [f"{m}/{k}.yaml" for m in MODELS for k in KINDS if not config_path(m, k).is_file()]
    assert not missing, f"missing configs: {missing}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_passes(path):
    need_trial(path.parent.name)
    assert expconf.check_config(path) == []
    assert expconf.validate_config(path)["name"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ("8_gpu", "multi_node"))
def test_scaled_configs_are_the_single_gpu_recipe_on_the_same_images(model, kind):
    single, conf = load(model, "single_gpu"), load(model, kind)
    slots = {"8_gpu": 8, "multi_node": 32}[kind]
    s, c = point(single), point(conf)
    assert conf["resources"]["slots_per_trial"] == slots
    assert c["global_batch_size"] == 16 * slots and c["base_batch_size"] == s["base_batch_size"] == 16
    # the trial scales lr itself: the config keeps the single-GPU value
    assert c["lr"] == s["lr"]
    per_step, per_step_1 = c["global_batch_size"], s["global_batch_size"]
    for key in ("max_batches", "validation_period", "warmup_batches"):
        # the same images, to within half a step of rounding
        assert abs(c[key] * per_step - s[key] * per_step_1) <= per_step / 2, key
    # checkpoints stay ~1000 batches apart (a checkpoint's cost does not shrink with slots),
    # and land on validations so that Determined's "best" checkpoint has a metric
    assert c["checkpoint_period"] % c["validation_period"] == 0
    assert 900 <= c["checkpoint_period"] <= 1000
    scaled = {"global_batch_size", "max_batches", "validation_period", "warmup_batches",
              "checkpoint_period", "report_period"}
    assert {k: v for k, v in c.items() if k not in scaled} == {k: v for k, v in s.items() if k not in scaled}
    assert "determined.launch.torch_distributed" in conf["entrypoint"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", MINE)
def test_conventions_of_every_config(model, kind):
    conf = load(model, kind)
    hp = point(conf)
    assert conf["profiling"] == {"enabled": True}
    assert conf["environment"]["image"] == IMAGE
    assert conf["max_restarts"] >= 1
    assert conf["bind_mounts"][0]["container_path"] == hp["data_dir"] == "/data/ADEChallengeData2016"
    assert (hp["target_metric"], hp["target_value"]) == ("miou", 16) and hp["crop_size"] == 512 and hp["num_classes"] == 150
    assert hp["scale"] == [2048, 512] and hp["global_batch_size"] // conf["resources"]["slots_per_trial"] == 16
    assert hp["energy"]["sources"] == "auto"


@pytest.mark.parametrize("model", MODELS)
def test_multi_node_sets_nccl_and_pool(model):
    conf = load(model, "multi_node")
    assert conf["resources"]["resource_pool"]
    env = conf["environment"]["environment_variables"]
    assert "NCCL_DEBUG=INFO" in env
    text = config_path(model, "multi_node").read_text()
    for knob in ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "NCCL_IB_GID_INDEX", "NCCL_NET_GDR_LEVEL"):
        assert re.search(rf"^\s*# - {knob}=", text, re.M), f"{knob}: commented example missing"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ("asha", "asha_energy"))
def test_asha_searches(model, kind):
    conf = load(model, kind)
    s, space = conf["searcher"], conf["hyperparameters"]
    assert s["name"] == "adaptive_asha" and s["time_metric"] == "batches"
    assert s["max_time"] == space["max_batches"]
    assert (s["metric"], s["smaller_is_better"]) == (
        ("miou", False) if kind == "asha" else ("projected_energy_to_target_wh", True))
    assert conf["resources"]["slots_per_trial"] == 1
    assert space["lr"]["type"] == "log" and space["weight_decay"]["type"] in ("log", "double")
    assert space["warmup_batches"]["type"] == "int" and space[SIZE_KEY[model]]["type"] == "categorical"
    assert space["stop_at_target"] is False
    # every rung (max_time / divisor^k) is a validation point
    rungs = [s["max_time"] // s["divisor"] ** k for k in range(s["max_rungs"])]
    assert all(r % space["validation_period"] == 0 for r in rungs)
    # the two searches differ only in what they rank by
    other = load(model, "asha_energy" if kind == "asha" else "asha")
    assert other["hyperparameters"] == space
    assert {k: v for k, v in other["searcher"].items() if k not in ("metric", "smaller_is_better")} == \
        {k: v for k, v in s.items() if k not in ("metric", "smaller_is_better")}


# ----------------------------------------------------------------------------- broken copies
def broken(tmp_path: pathlib.Path, model: str, kind: str, edit: Callable[[Dict[str, Any]], None]) -> pathlib.Path:
    """A copy of a shipped config with one edit, at <tmp>/<model>/<kind>.yaml (the checker
    reads the model from the directory and the slot rule from the file name)."""
    conf = copy.deepcopy(load(model, kind))
    edit(conf)
    path = tmp_path / model / f"{kind}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def rename(section: str, old: str, new: str) -> Callable[[Dict[str, Any]], None]:
    def edit(conf):
        node = conf[section] if section else conf
        node[new] = node.pop(old)
    return edit


def setter(keys: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(conf):
        *parents, last = keys.split(".")
        node = conf
        for k in parents:
            node = node[k]
        node[last] = value
    return edit


BROKEN = [
    ("misspelled top-level key", "unet", "8_gpu", rename("", "profiling", "profilng"),
     r"profilng: unknown key \(did you mean 'profiling'\?\)"),
    ("misspelled searcher key", "unet", "asha", rename("searcher", "max_time", "max_tme"),
     r"searcher\.max_tme: unknown key \(did you mean 'max_time'\?\)"),
    ("required searcher key", "segformer", "asha", lambda c: c["searcher"].pop("time_metric"),
     r"searcher\.time_metric: required"),
    ("minval > maxval", "unet", "asha",
     setter("hyperparameters.lr", {"type": "log", "base": 10, "minval": -2.0, "maxval": -4.0}),
     r"hyperparameters\.lr: minval \(-2\.0\) must be < maxval \(-4\.0\)"),
    ("log without base", "unet", "asha", lambda c: c["hyperparameters"]["lr"].pop("base"),
     r"hyperparameters\.lr\.base: required for a 'log' hyperparameter"),
    ("int with float bounds", "unet", "asha", setter("hyperparameters.warmup_batches.maxval", 2000.5),
     r"hyperparameters\.warmup_batches\.maxval: 2000\.5 must be an integer"),
    ("empty categorical", "segformer", "asha", setter("hyperparameters.segformer_variant.vals", []),
     r"hyperparameters\.segformer_variant\.vals: must be a non-empty list"),
    ("misspelled hyperparameter type", "unet", "asha", setter("hyperparameters.unet_base_channels.type", "categorial"),
     r"hyperparameters\.unet_base_channels\.type: 'categorial' is not a hyperparameter type "
     r"\(did you mean 'categorical'\?\)"),
    ("wrong slots", "segformer", "8_gpu", setter("resources.slots_per_trial", 4),
     r"resources\.slots_per_trial: 4 in a '8_gpu' config; expected 8"),
    ("per-slot batch not 16", "unet", "multi_node", setter("hyperparameters.global_batch_size", 256),
     r"hyperparameters\.global_batch_size: 256 / 32 slots = 8 images per slot; expected 16"),
    ("global batch not divisible", "unet", "8_gpu", setter("hyperparameters.global_batch_size", 100),
     r"hyperparameters\.global_batch_size: 100 is not divisible by resources\.slots_per_trial=8"),
    ("no launcher with 8 slots", "unet", "8_gpu", setter("entrypoint", "python3 train.py"),
     r"entrypoint: 8 slots need 'python3 -m determined\.launch\.torch_distributed python3 train\.py'"),
    ("entrypoint script missing", "unet", "asha", setter("entrypoint", "python3 main.py"),
     r"entrypoint: main\.py not found in .*trials/unet"),
    ("entrypoint list of non-strings", "unet", "asha", setter("entrypoint", ["python3", 3]),
     r"entrypoint\[1\]: 3 has type int; expected string"),
    ("unknown hyperparameter", "unet", "8_gpu", rename("hyperparameters", "warmup_batches", "warmup_batch"),
     r"hyperparameters\.warmup_batch: unknown hyperparameter for UNetTrial \(did you mean 'warmup_batches'\?\)"),
    ("unknown nested hyperparameter", "unet", "asha_energy",
     lambda c: c["hyperparameters"]["energy"].update(sourcse=c["hyperparameters"]["energy"].pop("sources")),
     r"unknown hyperparameter 'energy\.sourcse' \(did you mean 'sources'\?\)"),
    ("bad value", "unet", "8_gpu", setter("hyperparameters.optimizer", "adam"),
     r"hyperparameter 'optimizer' = 'adam' is not one of 'adamw', 'sgd' \(at the middle point\)"),
    ("bad value at a bound only", "unet", "asha", setter("hyperparameters.warmup_batches.minval", -100),
     r"hyperparameter 'warmup_batches' = -100 must be in 0\.\.1000000000 \(at warmup_batches = -100 \(minval\)\)"),
    ("bad category", "segformer", "asha", setter("hyperparameters.segformer_variant.vals", ["b0", "b9"]),
     r"hyperparameter 'segformer_variant' = 'b9' is not one of .* \(at segformer_variant = 'b9'\)"),
    ("max_time != max_batches", "unet", "asha", setter("searcher.max_time", 8000),
     r"searcher\.max_time: 8000 != hyperparameters\.max_batches \(16000\)"),
    ("time in epochs", "unet", "asha", setter("searcher.time_metric", "epochs"),
     r"searcher\.time_metric: 'epochs': the trial measures its length in batches"),
    ("deprecated max_length", "unet", "asha", setter("searcher.max_length", {"batches": 16000}),
     r"searcher\.max_length: deprecated in Determined 0\.38"),
    ("metric typo", "unet", "8_gpu", setter("searcher.metric", "mIoU"),
     r"searcher\.metric: 'mIoU' is not a validation metric .*\(did you mean 'miou'\?\)"),
    ("metric only reported at the target", "unet", "asha_energy", setter("searcher.metric", "energy_to_target_wh"),
     r"searcher\.metric: 'energy_to_target_wh' .*reported only once the target is reached"),
    ("direction left at the default", "unet", "asha", lambda c: c["searcher"].pop("smaller_is_better"),
     r"searcher\.smaller_is_better: true \(Determined's default\) ranks 'miou' backwards: set it to false"),
    ("energy search without energy", "segformer", "asha_energy", setter("hyperparameters.energy.enabled", False),
     r"hyperparameters\.energy\.enabled: searcher\.metric 'projected_energy_to_target_wh' needs energy measured"),
    ("energy search with no source", "unet", "asha_energy", setter("hyperparameters.energy.sources", "none"),
     r"hyperparameters\.energy\.sources: searcher\.metric 'projected_energy_to_target_wh' needs an energy source"),
    ("removed searcher", "unet", "asha", setter("searcher.name", "adaptive_simple"),
     r"searcher\.name: the 'adaptive_simple' searcher has been removed"),
    ("relative bind mount", "unet", "8_gpu", setter("bind_mounts", [{"host_path": "data", "container_path": "/data"}]),
     r"bind_mounts\[0\]\.host_path: 'data' must be an absolute path"),
    ("data outside the mounts", "unet", "8_gpu", setter("hyperparameters.data_dir", "/datasets/ade"),
     r"hyperparameters\.data_dir: /datasets/ade is under no bind_mounts container_path"),
    ("bad environment variable", "unet", "multi_node", setter("environment.environment_variables", ["NCCL_DEBUG"]),
     r"environment\.environment_variables\[0\]: 'NCCL_DEBUG' is not a 'NAME=value' string"),
    ("bad type", "unet", "8_gpu", setter("max_restarts", "two"),
     r"max_restarts: 'two' has type string; expected int"),
    ("profiling window", "unet", "8_gpu",
     setter("profiling", {"enabled": True, "begin_on_batch": 50, "end_after_batch": 10}),
     r"profiling: begin_on_batch must be <= end_after_batch"),
    ("validation after the end", "unet", "multi_node", setter("hyperparameters.validation_period", 5000),
     r"hyperparameters\.validation_period: 5000 > max_batches \(2500\)"),
]


@pytest.mark.parametrize("case, model, kind, edit, pattern", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_copies_fail_naming_file_and_key(tmp_path, case, model, kind, edit, pattern):
    need_trial(model)
    path = broken(tmp_path, model, kind, edit)
    problems = expconf.check_config(path)
    assert problems, f"{case}: no problem found"
    assert all(p.startswith(f"{path}: ") for p in problems), problems
    assert any(re.search(pattern, p) for p in problems), problems
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": " + r"(.|\n)*" + pattern):
        expconf.validate_config(path)


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "unet" / "asha.yaml"
    path.parent.mkdir()
    text = config_path("unet", "asha").read_text()
    path.write_text(text + "hyperparameters: {}\n")
    (problem,) = expconf.check_config(path)
    first = text.splitlines().index("hyperparameters:") + 1
    assert problem == (f"{path}: line {len(text.splitlines()) + 1}: duplicate key 'hyperparameters' "
                       f"(first at line {first})")


def test_a_duplicated_hyperparameter_is_refused_by_the_checker(tmp_path):
    path = tmp_path / "unet" / "single_gpu.yaml"
    path.parent.mkdir()
    text = config_path("unet", "single_gpu").read_text()
    path.write_text(text.replace("\n  lr: ", "\n  lr: 5.0e-4\n  lr: ", 1))
    first = text.splitlines().index(next(l for l in text.splitlines() if l.startswith("  lr: "))) + 1
    assert expconf.check_config(path) == [
        f"{path}: line {first + 1}: duplicate key 'lr' (first at line {first})"]


def test_scientific_notation_in_a_config_is_a_number(tmp_path):
    """YAML 1.1 reads 2e-3 as a string; the checker reads it as a float, as the det CLI does."""
    path = tmp_path / "unet" / "single_gpu.yaml"
    path.parent.mkdir()
    text = config_path("unet", "single_gpu").read_text()
    path.write_text(re.sub(r"\n  lr: [^ \n]+", "\n  lr: 2e-3", text, count=1))
    assert expconf.check_config(path) == []
    assert expconf.load_yaml(path)["hyperparameters"]["lr"] == 2e-3


@pytest.mark.parametrize("text, pattern", [
    ("- a\n- b\n", r"must be a YAML mapping, got list"),
    ("name: [unclosed\n", r"not valid YAML"),
    ("name: x\n", r"entrypoint: required"),
])
def test_unreadable_configs(tmp_path, text, pattern):
    path = tmp_path / "unet" / "single_gpu.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + pattern):
        expconf.validate_config(path)


def test_missing_file_and_missing_trial(tmp_path):
    assert expconf.check_config(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]
    path = broken(tmp_path, "unet", "asha", lambda c: None).parent.with_name("nosuchmodel") / "asha.yaml"
    path.parent.mkdir()
    path.write_text(config_path("unet", "asha").read_text())
    (problem,) = expconf.check_config(path)
    assert re.search(r"nosuchmodel/asha\.yaml: no trial directory .*trials/nosuchmodel: ", problem)


@pytest.mark.parametrize("name, source, pattern", [
    ("noimport", "from model import build_model\n",
     r"train\.py: cannot be imported: ModuleNotFoundError: No module named 'model'"),
    ("noclass", "X = 1\n", r"train\.py: expected one trial class \(a PyTorchTrial subclass with MODEL_PARAMS\), found 0"),
])
def test_trials_that_cannot_be_checked(tmp_path, name, source, pattern):
    (tmp_path / "trials" / name).mkdir(parents=True)
    (tmp_path / "trials" / name / "train.py").write_text(source)
    path = tmp_path / "experiment_configs" / name / "single_gpu.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(config_path("unet", "single_gpu").read_text())
    problems = expconf.check_config(path)
    assert any(p.startswith(f"{path}: entrypoint: ") and re.search(pattern, p) for p in problems), problems


def test_cli_prints_problems_and_exits_1(tmp_path, capsys):
    # main() in-process: a subprocess would pay torch's and determined's imports again
    bad = broken(tmp_path, "unet", "asha", rename("searcher", "max_time", "max_tme"))
    good = config_path("unet", "asha")
    assert expconf.main([str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert f"{bad}: searcher.max_tme: unknown key (did you mean 'max_time'?)" in out
    assert str(good) not in out and "1 of 2 configs ok" in err
    assert expconf.main([str(good)]) == 0
    assert "all 1 config ok" in capsys.readouterr().out


# ----------------------------------------------------------------------------- sampling
def test_sample_point_draws_like_the_master():
    space = {"i": {"type": "int", "minval": 1, "maxval": 3},
             "d": {"type": "double", "minval": -1.0, "maxval": 1.0},
             "l": {"type": "log", "base": 2, "minval": -3, "maxval": 1},
             "c": {"type": "categorical", "vals": ["a", "b"]},
             "k": {"type": "const", "val": [1, 2]}, "plain": 5,
             "nested": {"x": {"type": "int", "minval": 0, "maxval": 1}, "y": "z"}}
    rng = random.Random(7)
    draws = [expconf.sample_point(space, rng) for _ in range(400)]
    assert {d["i"] for d in draws} == {1, 2, 3}                   # both bounds included
    assert all(-1.0 <= d["d"] <= 1.0 for d in draws)
    exponents = sorted(math.log2(d["l"]) for d in draws)           # uniform in the exponent
    assert -3 <= exponents[0] and exponents[-1] <= 1 and abs(exponents[200] + 1) < 0.3
    assert {d["c"] for d in draws} == {"a", "b"} and {d["nested"]["x"] for d in draws} == {0, 1}
    assert all(d["k"] == [1, 2] and d["plain"] == 5 and d["nested"]["y"] == "z" for d in draws)
    assert expconf.sample_point(space, random.Random(3)) == expconf.sample_point(space, random.Random(3))


def test_points_to_check_cover_bounds_and_categories():
    conf = load("segformer", "asha")
    labels = [label for label, _ in expconf.points_to_check(conf["hyperparameters"], seed=0)]
    assert labels[:2] == ["the middle point", "the random point of seed 0"]
    for v in ("b0", "b1", "b2"):
        assert f"segformer_variant = '{v}'" in labels
    assert "warmup_batches = 200 (minval)" in labels and "warmup_batches = 2000 (maxval)" in labels
    assert "lr = 0.0001 (minval)" in labels


# ----------------------------------------------------------------------------- one training step


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_config_point_builds_and_trains_one_step(model, kind):
    need_trial(model)
    path = config_path(model, kind)
    _, trial_cls = expconf.load_trial(ROOT / "trials" / model)
    conf = load(model, kind)
    hp = hpmod.resolve(point(conf), trial_cls.MODEL_PARAMS, where=str(path))
    torch.manual_seed(0)
    net = trial_cls.model_from_hparams(hp)
    net.train()
    lr = scaled_lr(hp["lr"], hp["base_batch_size"], hp["global_batch_size"],
                   lr_scaling_rule(hp["lr_scaling"], hp["optimizer"]))
    optimizer = build_optimizer(net, hp, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupPoly(hp["warmup_batches"], hp["max_batches"], hp["poly_power"], hp["warmup_ratio"]))
    images = torch.randn(2, 3, 32, 32)
    masks = torch.randint(0, hp["num_classes"], (2, 32, 32))
    masks[0, :4] = 255  # ignored pixels, as ADE20K's "other"
    before = [p.detach().clone() for p in net.parameters()]
    logits = net(images)
    assert logits.shape[:2] == (2, hp["num_classes"])
    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks, ignore_index=255)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert math.isfinite(loss.item()) and grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    schedule.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters())), "no parameter moved"


# ----------------------------------------------------------------------------- lr rules
def _effective(path: pathlib.Path):
    """(optimiser, global, base, lr_scaling, rule, factor) of a shipped config's point."""
    from shared import recipes
    trial_cls = recipes.get(path.parent.name).trial_class()
    conf = configfile.load_experiment_config(path)
    hp = hpmod.resolve(configfile.point_from_space(conf["hyperparameters"], str(path)),
                       trial_cls.MODEL_PARAMS, where=str(path), common=trial_cls.COMMON_PARAMS)
    rule = lr_scaling_rule(hp["lr_scaling"], hp["optimizer"])
    factor = scaled_lr(1.0, hp["base_batch_size"], hp["global_batch_size"], rule)
    return hp["optimizer"], hp["global_batch_size"], hp["base_batch_size"], hp["lr_scaling"], rule, factor


def test_the_lr_scaling_table_of_docs_configs_is_computed_from_the_configs():
    """docs/configs.md's table says, for every shipped config, its optimiser, batches, rule
    and lr factor: each row is checked against what the trial computes, and every config is
    in exactly one row."""
    text = (ROOT / "docs" / "configs.md").read_text()
    table = text[text.index("| configs | optimiser |"):]
    lines = table.splitlines()[2:]
    rows = lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    seen = []
    for line in rows:
        configs, optimiser, batches, rule_cell, factor_cell = [c.strip() for c in line.strip("|").split("|")]
        models, kinds = configs.split(":")
        for model in re.findall(r"`([^`]+)`", models):
            for kind in re.findall(r"`([^`]+)`", kinds):
                path = config_path(model, kind)
                opt, gbs, base, scaling, rule, factor = _effective(path)
                assert optimiser.lower() == opt and batches == f"{gbs} / {base}", (path, line)
                assert rule_cell == f"{scaling} = {rule}", (path, line)
                shown = float(factor_cell.split("=")[-1])
                assert shown == pytest.approx(factor, abs=0.005), (path, line)
                seen.append(path)
    assert sorted(seen) == SHIPPED, "every shipped config in exactly one row"


def test_config_comments_state_the_rule_the_trial_applies():
    """A comment that promises linear scaling (or its x8 / x32 figures) in a config whose
    optimiser the trial scales by the square root misleads whoever reads the config."""
    for path in SHIPPED:
        opt, gbs, base, scaling, rule, factor = _effective(path)
        comments = "\n".join(line for line in path.read_text().splitlines() if "#" in line)
        if rule == "sqrt":
            assert not re.search(r"scaled linearly|linear(ly)? scal|lr x (8|32)\b|x (128|512)/16",
                                 comments), path
            if factor != 1.0:
                assert "sqrt" in comments or "square root" in comments, path
        if rule == "linear" and factor != 1.0:
            assert re.search(r"linear", comments), path


def test_validation_inference_is_the_reference_configs_in_every_config():
    """docs/configs.md: every Segmenter config slides 512 px windows at stride 512, the other
    segmentation models validate whole images (the ablation configs included)."""
    from shared import recipes
    for model in MODELS:
        trial_cls = recipes.get(model).trial_class()
        for path in sorted((ROOT / "experiment_configs" / model).glob("*.yaml")):
            conf = configfile.load_experiment_config(path)
            hp = hpmod.resolve(configfile.point_from_space(conf["hyperparameters"], str(path)),
                               trial_cls.MODEL_PARAMS, where=str(path), common=trial_cls.COMMON_PARAMS)
            got = (hp["val_mode"], hp["val_crop_size"], hp["val_stride"])
            assert got == (("slide", 512, 512) if model == "segmenter" else ("whole", None, None)), path
