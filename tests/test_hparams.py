"""Experiment configs and hyperparameters: every bad input names the file and the key."""
import pathlib

import pytest

from shared import configfile
from shared import hparams as hp
from shared import recipes
from shared.hparams import ConfigError, Param

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = {"unet_depth": Param(None, (int,), nullable=True)}


def test_defaults_and_types():
    out = hp.resolve({"lr": 1, "energy": {"sources": "rapl"}}, MODEL, where="x.yaml")
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)     # int accepted for a float
    assert out["num_classes"] == 150 and out["unet_depth"] is None
    assert out["energy"]["sources"] == "rapl" and out["energy"]["enabled"] is True


@pytest.mark.parametrize("hps, message", [
    ({"lrr": 0.1}, r"x\.yaml: unknown hyperparameter 'lrr' \(did you mean 'lr'\?\)"),
    ({"lr": -1.0}, r"x\.yaml: hyperparameter 'lr' = -1\.0 must be in \(0, 10\]"),
    ({"lr": "fast"}, r"x\.yaml: hyperparameter 'lr' = 'fast' has type str"),
    ({"optimizer": "adam"}, r"hyperparameter 'optimizer' = 'adam' is not one of 'adamw', 'sgd'"),
    ({"lr_scaling": "cubic"}, r"hyperparameter 'lr_scaling' = 'cubic' is not one of 'auto', 'linear', 'sqrt', 'none'"),
    ({"num_classes": True}, r"'num_classes' = True must be int, not a boolean"),
    ({"num_classes": 300}, r"'num_classes' = 300 must be in 1\.\.254"),
    ({"crop_size": [64]}, r"'crop_size' = \[64\] must be an int or a list"),
    ({"scale": [2048]}, r"'scale' = \[2048\] must be a list of two numbers"),
    ({"stop_at_target": "yes"}, r"'stop_at_target' = 'yes' has type str; expected bool"),
    ({"max_batches": None}, r"'max_batches' must not be null"),
    ({"energy": {"sorces": "nvml"}}, r"unknown hyperparameter 'energy\.sorces' \(did you mean 'sources'\?\)"),
    ({"energy": {"pue": 0.5}}, r"x\.yaml: hyperparameter energy\.pue .*cannot be below 1\.0"),
    ({"energy": {"sources": "nvml,bogus"}}, r"bogus"),
])
def test_bad_values_are_named(hps, message):
    with pytest.raises(ConfigError, match=message):
        hp.resolve(hps, MODEL, where="x.yaml")


# ------------------------------------------------------------------ bounds (issue 22)
@pytest.mark.parametrize("hps, message", [
    ({"seed": -1}, r"x\.yaml: hyperparameter 'seed' = -1 must be in 0\.\.4294967295"),
    ({"seed": 2 ** 32}, r"'seed' = 4294967296 must be in 0\.\.4294967295"),
    ({"crop_size": 10 ** 9}, r"'crop_size' = 1000000000 must be in 8\.\.16384 pixels"),
    ({"crop_size": 1e9}, r"'crop_size' = 1000000000\.0 must be in 8\.\.16384 pixels"),
    ({"scale": [1e9, 512]}, r"'scale' = \[1000000000\.0, 512\] values out of range: each must be in 8\.\.65536"),
    ({"workers_per_slot": 1e30}, r"'workers_per_slot' = 1e\+30 must be in 0\.\.256"),
    ({"workers_per_slot": 2.5}, r"'workers_per_slot' = 2\.5 has type float; expected int"),
    ({"global_batch_size": 2 ** 30}, r"'global_batch_size' = 1073741824 must be in 1\.\.1048576"),
    ({"max_batches": 1e10}, r"'max_batches' = 10000000000\.0 must be in 1\.\.1000000000"),
    ({"lr": 1e308}, r"'lr' = 1e\+308 must be in \(0, 10\]"),
    ({"lr": float("inf")}, r"'lr' = inf is not finite"),
    ({"energy": {"ipmi_timeout_s": 1e308}}, r"x\.yaml: hyperparameter energy\.ipmi_timeout_s must be at most 1e\+06, got 1e\+308"),
    ({"energy": {"redfish_timeout_s": 1e7}}, r"energy\.redfish_timeout_s must be at most 1e\+06"),
    ({"energy": {"gpus_on_node": 10 ** 9}}, r"energy\.gpus_on_node must be at most 1e\+06, got 1000000000"),
    ({"num_classes": 8, "class_names": ["a"]}, r"x\.yaml: hyperparameter 'class_names' has 1 names but num_classes is 8: give one name per class"),
    ({"num_classes": 3, "class_names": ["a", "b", "a"]}, r"'class_names' names 'a' twice \(classes 0 and 2\)"),
    ({"num_classes": 2, "class_names": ["a", None]}, r"'class_names' holds None; names are strings"),
])
def test_bounds_are_named(hps, message):
    with pytest.raises(ConfigError, match=message):
        hp.resolve(hps, MODEL, where="x.yaml")


def test_integral_floats_are_integers():
    out = hp.resolve({"seed": 4294967295.0, "max_batches": 2e8, "crop_size": [64.0, 32.0],
                      "num_classes": 2, "class_names": ["a", "b"]}, MODEL)
    assert out["seed"] == 4294967295 and type(out["seed"]) is int
    assert out["max_batches"] == 200_000_000 and type(out["max_batches"]) is int
    assert out["crop_size"] == [64, 32] and all(type(x) is int for x in out["crop_size"])
    from shared.objects.trial import OBJECT_PARAMS
    assert hp.resolve({"max_image_pixels": 2e8}, {}, common=OBJECT_PARAMS)["max_image_pixels"] == 200_000_000


def _numeric_params():
    for name in recipes.discover():
        cls = recipes.get(name).trial_class()
        for key, p in {**cls.COMMON_PARAMS, **cls.MODEL_PARAMS}.items():
            if bool not in p.types and (int in p.types or float in p.types):
                yield pytest.param(cls, key, p, id=f"{name}.{key}")


@pytest.mark.parametrize("cls, key, p", list(_numeric_params()))
def test_every_numeric_hyperparameter_is_bounded(cls, key, p):
    """Both ways: no numeric key of any family accepts an absurd value (a bound, not a crash
    later), and each one's default resolves."""
    schema = (cls.MODEL_PARAMS, cls.COMMON_PARAMS)
    hp.resolve({}, *schema[:1], common=schema[1])
    for absurd in (10 ** 30, -10 ** 30, 1e30, -1e30):
        with pytest.raises(ConfigError, match=rf"hyperparameter '{key}' = "):
            hp.resolve({key: absurd}, *schema[:1], common=schema[1])


def test_point_from_search_space():
    space = {"lr": {"type": "log", "minval": -4, "maxval": -2, "base": 10},
             "warmup_batches": {"type": "int", "minval": 100, "maxval": 300},
             "weight_decay": {"type": "double", "minval": 0.0, "maxval": 0.1},
             "optimizer": {"type": "categorical", "vals": ["sgd", "adamw"]},
             "scale": {"type": "const", "val": [2048, 512]},
             "energy": {"sources": "auto"}, "seed": 3}
    got = configfile.point_from_space(space, "c.yaml")
    assert got == {"lr": pytest.approx(1e-3), "warmup_batches": 200, "weight_decay": 0.05,
                   "optimizer": "sgd", "scale": [2048, 512], "energy": {"sources": "auto"}, "seed": 3}
    with pytest.raises(ConfigError, match="c.yaml: hyperparameter 'energy.x' has unknown type 'float'"):
        configfile.point_from_space({"energy": {"x": {"type": "float"}}}, "c.yaml")
    with pytest.raises(ConfigError, match="'lr' of type 'int' lacks 'maxval'"):
        configfile.point_from_space({"lr": {"type": "int", "minval": 1}}, "c.yaml")


def test_overrides():
    base = {"lr": 0.1, "energy": {"sources": "auto"}}
    got = configfile.apply_overrides(base, ["lr=2e-3", "crop_size=[64, 48]", "stop_at_target=true",
                                    "energy.sources=nvml,rapl", "pretrained_path=", "optimizer=sgd"])
    assert got["lr"] == 2e-3 and got["crop_size"] == [64, 48] and got["stop_at_target"] is True
    assert got["energy"] == {"sources": "nvml,rapl"} and got["pretrained_path"] is None
    assert base["energy"] == {"sources": "auto"}               # the input is not modified
    with pytest.raises(ConfigError, match=r"--set 'lr': expected key=value"):
        configfile.apply_overrides(base, ["lr"])


def test_training_length_prefers_the_searcher():
    assert hp.training_length({"max_batches": 10}, {}) == 10
    assert hp.training_length({"max_batches": 10}, {"searcher": {"time_metric": "batches", "max_time": 7}}) == 7


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"experiment config .*nope\.yaml does not exist"):
        configfile.load_experiment_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("hyperparameters: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        configfile.load_experiment_config(bad)
    bad.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: no 'hyperparameters' mapping"):
        configfile.load_experiment_config(bad)


@pytest.mark.parametrize("model", ["unet", "segformer"])
def test_shipped_configs_resolve(model):
    path = ROOT / "experiment_configs" / model / "single_gpu.yaml"
    conf = configfile.load_experiment_config(path)
    assert conf["entrypoint"] == "python3 train.py" and conf["resources"]["slots_per_trial"] == 1
    assert conf["searcher"]["metric"] == "miou" and conf["searcher"]["smaller_is_better"] is False
    assert (ROOT / "trials" / model / "train.py").is_file()
    point = configfile.point_from_space(conf["hyperparameters"], str(path))
    trial_cls = recipes.get(model).trial_class()
    assert trial_cls.MODEL_NAME == model
    out = hp.resolve(point, trial_cls.MODEL_PARAMS, where=str(path))
    assert out["target_miou"] == 16 and out["crop_size"] == 512 and out["num_classes"] == 150


# ------------------------------------------------------------------ the one YAML reader (issue 13)
@pytest.mark.parametrize("text, value", [
    ("2e-3", 2e-3), ("1E5", 1e5), ("-3e+2", -300.0), ("1.0e-3", 1e-3), ("1.0e3", 1000.0),
    ("+2.5E-1", 0.25), ("1.5", 1.5), ("7", 7), ("1_000", 1000), ("1_0e2", 1000.0),
    (".5e1", ".5e1"),  # YAML 1.2 as ruamel.yaml (Determined's CLI) reads it: no digit before the dot
    # look like numbers, are not: a class name, paths, versions, unfinished exponents, quoted
    ("e5", "e5"), ("E5", "E5"), ("1e", "1e"), ("1e-", "1e-"), ("2e-3x", "2e-3x"),
    ("data/2e-3", "data/2e-3"), ("/data/1e5", "/data/1e5"), ("1e5.5", "1e5.5"), ("1.2.3", "1.2.3"),
    ("v1e5", "v1e5"), ("'2e-3'", "2e-3"), ('"1E5"', "1E5"), ("nan", "nan"),
])
def test_scientific_notation_is_a_float_and_look_alikes_stay_strings(text, value):
    got = configfile.parse_yaml(f"x: {text}\n", "c.yaml")["x"]
    assert got == value and type(got) is type(value)
    assert configfile.parse_yaml(text, "--set") == value                  # the same reader for --set
    assert configfile.apply_overrides({}, [f"x={text}"])["x"] == value


# Determined's CLI reads a config with determined.common.util.safe_load_yaml_with_exceptions
# (ruamel.yaml, YAML 1.2); the trial and the checker must read every value as it does (issue 22).
DETERMINED_CASES = ["yes", "no", "on", "off", "y", "Yes", "010", "0o10", "0x1F", "0b101", "1:30",
                    "1:30:00", "-0", "2e-3", "1E5", ".5e1", "1_000", "nan", ".nan", ".inf", "-.inf",
                    "null", "~", "Null", "true", "True", "FALSE", "1e400", "[1, 2]", "{a: 1}",
                    "'010'", "0.1", "+1", "2018-01-01"]


@pytest.mark.parametrize("text", DETERMINED_CASES)
def test_values_read_as_determined_reads_them(text):
    from determined.common import util
    import math
    want = util.safe_load_yaml_with_exceptions(f"x: {text}\n")["x"]
    got = configfile.parse_yaml(f"x: {text}\n", "c.yaml")["x"]
    assert type(got) is type(want)
    assert got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got))
    assert configfile.apply_overrides({}, [f"x={text}"])["x"] == got or (
        isinstance(got, float) and math.isnan(got))


def test_the_issue_cases_resolve_as_on_the_cluster(tmp_path):
    # stop_at_target: yes is the string 'yes' for Determined (refused here, named), seed: 010 is
    # 10 (not octal 8), --set lr=1:30 is the string '1:30' (not sexagesimal 90)
    path = tmp_path / "c.yaml"
    path.write_text("hyperparameters:\n  seed: 010\n  stop_at_target: yes\n")
    conf = configfile.load_experiment_config(path)
    assert conf["hyperparameters"] == {"seed": 10, "stop_at_target": "yes"}
    with pytest.raises(ConfigError, match=r"'stop_at_target' = 'yes' has type str; expected bool"):
        hp.resolve(conf["hyperparameters"], MODEL, where=str(path))
    assert hp.resolve({"seed": 10}, MODEL)["seed"] == 10
    with pytest.raises(ConfigError, match=r"'lr' = '1:30' has type str; expected int/float"):
        hp.resolve(configfile.apply_overrides({}, ["lr=1:30"]), MODEL)


def test_scientific_notation_in_a_config_file_resolves(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("hyperparameters:\n  lr: 2e-3\n  weight_decay: 1E-2\n  num_classes: 2\n  class_names: [e5, 1e]\n"
                    "  data_dir: /data/2e-3\n")
    conf = configfile.load_experiment_config(path)
    out = hp.resolve(conf["hyperparameters"], MODEL, where=str(path))
    assert out["lr"] == 2e-3 and out["weight_decay"] == 1e-2
    assert out["class_names"] == ["e5", "1e"] and out["data_dir"] == "/data/2e-3"


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nhyperparameters:\n  lr: 1.0e-3\n  seed: 1\n  lr: 2e-3\n")
    with pytest.raises(ConfigError) as e:
        configfile.load_experiment_config(path)                # what the launcher and benchmarks read
    assert str(e.value) == f"{path}: line 5: duplicate key 'lr' (first at line 3)"
    # nested, in a flow mapping
    path.write_text("hyperparameters:\n  energy: {sources: nvml,\n    sources: rapl}\n")
    with pytest.raises(ConfigError) as e:
        configfile.load_experiment_config(path)
    assert str(e.value) == f"{path}: line 3: duplicate key 'sources' (first at line 2)"
    # the same key in two different mappings, and a merge key overridden, are fine
    path.write_text("a: {lr: 1}\nb: &b {lr: 2}\nhyperparameters:\n  <<: *b\n  lr: 3\n")
    assert configfile.load_experiment_config(path)["hyperparameters"] == {"lr": 3}


def test_duplicate_keys_in_a_set_value_are_refused():
    with pytest.raises(ConfigError) as e:
        configfile.apply_overrides({}, ["energy={sources: nvml, sources: rapl}"])
    assert str(e.value) == "--set 'energy={sources: nvml, sources: rapl}': duplicate key 'sources'"
    # text that is not YAML at all is still taken as typed
    assert configfile.apply_overrides({}, ["class_names=[a, b"])["class_names"] == "[a, b"


def test_the_launcher_refuses_a_duplicated_key(tmp_path):
    from shared import launch
    path = tmp_path / "single_gpu.yaml"
    path.write_text("hyperparameters:\n  lr: 1.0e-3\n  lr: 2e-3\n")
    args = launch.parse_args(["--config", str(path), "--data-dir", str(tmp_path)], "unet")
    with pytest.raises(ConfigError) as e:
        launch._local_hparams(recipes.get("unet").trial_class(), args)
    assert str(e.value) == f"{path}: line 3: duplicate key 'lr' (first at line 2)"


# ------------------------------------------------------------------ the local stand-in for a searcher
def _local(config, *sets):
    from shared import launch
    args = launch.parse_args(["--config", str(ROOT / "experiment_configs" / "unet" / config),
                              "--data-dir", "/data", *(["--set", *sets] if sets else [])], "unet")
    hps, conf, space = launch._local_hparams(recipes.get("unet").trial_class(), args)
    point = launch._search_point(space, hps)
    return launch, conf, space, point, args


def test_the_search_point_of_a_local_run_is_stated():
    launch, conf, space, point, args = _local("asha.yaml", "warmup_batches=300")
    assert point == {"lr": pytest.approx(10 ** -3.25), "weight_decay": pytest.approx(0.01),
                     "warmup_batches": 300, "unet_base_channels": 16}
    text = launch._format_search_point("unet", "asha.yaml", conf["searcher"]["name"], space, point, args.set)
    assert text == (
        "[unet] search point: asha.yaml searches 4 hyperparameters (adaptive_asha); a local run has "
        "no searcher and trains this one fixed point in its place:\n"
        "  lr = 0.0005623  (log, base 10, exponents -4.0..-2.5: the geometric middle)\n"
        "  weight_decay = 0.01  (log, base 10, exponents -3.0..-1.0: the geometric middle)\n"
        "  warmup_batches = 300  (int 200..2000: set by --set)\n"
        "  unet_base_channels = 16  (categorical 16, 30, 48: the first)")
    # a config without a search space has no point to state
    assert _local("single_gpu.yaml")[3] == {}


def test_searched_specs_reach_nested_sections_and_skip_constants():
    space = {"lr": {"type": "double", "minval": 0.1, "maxval": 0.3}, "seed": 1,
             "scale": {"type": "const", "val": [64, 32]},
             "energy": {"pue": {"type": "categorical", "vals": [1.2, 1.5]}}}
    assert list(configfile.searched_specs(space)) == ["lr", "energy.pue"]
    assert configfile.describe_spec(space["lr"]) == ("double 0.1..0.3", "the middle")


def test_the_search_point_goes_into_the_run_record_only():
    from shared import launch
    seen = []
    tap = launch._with_search_point(lambda g, s, m: seen.append((g, s, m)), {"lr": 0.002})
    run = {"model": "unet"}
    tap("run", 0, run)
    tap("training", 2, {"loss": 1.0})
    assert seen == [("run", 0, {"model": "unet", "search_point": {"lr": 0.002}}),
                    ("training", 2, {"loss": 1.0})]
    assert run == {"model": "unet"}              # what Determined is sent is not changed


def test_hyperparameters_and_energy_options_are_one_declaration_class(monkeypatch):
    """One schema system: every hyperparameter of every recipe and every ``energy`` option is
    a ``shared.energy.schema.Param``, and both are checked by its one ``accept``."""
    from shared.energy import schema
    from shared.energy.options import all_options, validate_options

    assert Param is schema.Param
    for name in recipes.discover():
        cls = recipes.get(name).trial_class()
        for key, p in {**cls.COMMON_PARAMS, **cls.MODEL_PARAMS}.items():
            assert type(p) is schema.Param, f"{name}.{key}"
    assert all(type(o) is schema.Param and o.name for _, o in all_options())
    # the one check: replace it, and both the hyperparameters and the energy section see it
    real = schema.Param.accept

    def accept(self, value):
        if value == 12345:
            raise schema.Refused(value, "is the test's sentinel")
        return real(self, value)
    monkeypatch.setattr(schema.Param, "accept", accept)
    with pytest.raises(ConfigError, match=r"^x\.yaml: hyperparameter 'seed' = 12345 is the test's sentinel$"):
        hp.resolve({"seed": 12345}, MODEL, where="x.yaml")
    with pytest.raises(ValueError, match=r"^energy\.pue is the test's sentinel, got 12345$"):
        validate_options({"pue": 12345}, env={})


def test_one_check_both_ways():
    """The same declaration refuses the same values, as a hyperparameter and as an energy
    option; only the naming of the key differs (each where it is read)."""
    from shared.energy.general import GENERAL_OPTIONS
    from shared.energy.options import validate_options
    from shared.energy.schema import Refused

    pue = next(o for o in GENERAL_OPTIONS if o.name == "pue")
    with pytest.raises(Refused) as refused:
        pue.accept(0.5)
    with pytest.raises(ValueError) as as_option:
        validate_options({"pue": 0.5}, env={})
    with pytest.raises(ConfigError) as as_hyperparameter:
        hp.resolve({"pue": 0.5}, {"pue": pue}, where="x.yaml")
    assert str(as_option.value) == f"energy.pue {refused.value.problem}, got 0.5"
    assert str(as_hyperparameter.value) == f"x.yaml: hyperparameter 'pue' = 0.5 {refused.value.problem}"
    assert pue.allowed_text() == "number >= 1 or null"
    assert Param(None, (int,)).allowed_text() == "int or null"
    assert Param("a", (str,), choices=("a", "b")).allowed_text() == "a, b"
