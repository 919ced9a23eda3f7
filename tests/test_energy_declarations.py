"""Energy sources describe themselves: selection, option checks and docs derive from the
declarations, and a new source is picked up everywhere by registering one class."""
from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Dict

import pytest

from mdtables import squeeze
from shared import hparams
from shared import energy_docs as docs
from shared.energy import select
from shared.energy.options import validate_options
from shared.energy.options import all_env_vars, all_options, default_options
from shared.energy.schema import EnvVar, Param, Positive
from shared.energy.sources import (register_source, registered_sources, source_class,
                                   unregister_source)
from shared.energy.sources.base import EnergySource

ROOT = Path(__file__).resolve().parents[1]
_ENV_RE = re.compile(r"\bENERGY_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


# --------------------------------------------------------------------------- derived tables
def test_derived_tables_keep_their_public_values():
    # These names and values are read by the packager and by users' configs: pinned here. A
    # source added later adds its own entries (tests/test_every_source.py tests it), so the
    # pinned ones must be kept, in their order, not be the only ones.
    pinned = ("nvml", "rapl", "redfish", "ipmi", "prometheus")
    assert tuple(s for s in select.SOURCE_ORDER if s in pinned) == pinned
    assert select.DEVICE_SOURCES >= frozenset({"nvml"})
    assert select.AUTO_ONLY_WITH_ENV.items() >= {"redfish": "ENERGY_REDFISH_URL",
                                                 "ipmi": "ENERGY_IPMI_CMD",
                                                 "prometheus": "ENERGY_PROMETHEUS_URL"}.items()
    from shared.energy.options import default_options
    assert default_options().items() >= {
        "enabled": True, "sources": "auto", "apportion": "gpu_share", "pue": None,
        "carbon_intensity_g_per_kwh": None, "sample_period_s": None, "node_max_power_w": 20000.0,
        "gpus_on_node": None, "projection": "linear",
        "nvml_power_period_s": None, "rapl_max_power_w": None, "rapl_poll_below_s": None,
        "redfish_sample_period_s": None, "redfish_timeout_s": None,
        "ipmi_sample_period_s": None, "ipmi_timeout_s": None, "prometheus_timeout_s": None}.items()
    with pytest.raises(AttributeError, match="has no attribute 'SOURCE_ORDR'"):
        select.SOURCE_ORDR  # noqa: B018


def test_every_source_option_is_checked():
    # The options a source reads as positive numbers are refused at start when they are not.
    for owner, option in all_options():
        if owner == "general":
            continue
        with pytest.raises(ValueError, match=rf"energy\.{option.name} must be > 0, got -1"):
            validate_options({option.name: -1}, env={})
        with pytest.raises(ValueError, match=rf"energy\.{option.name} must be a number, "
                                             r"got 'x'"):
            validate_options({option.name: "x"}, env={})


def test_every_variable_the_code_names_is_declared():
    # Independent of the declarations: every ENERGY_* name in a string literal (code and
    # docstrings) of the library must have a declaration, hence a row in the docs.
    named = set()
    for path in (ROOT / "shared" / "energy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named |= set(_ENV_RE.findall(node.value))
    assert named, "the scan found no variable: its pattern is stale"
    assert named - {var.name for _, var in all_env_vars()} == set()


# --------------------------------------------------------------------------- docs
def test_readme_energy_tables_are_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    current = docs.update_markdown(readme, required=list(docs.TABLES))
    assert current == readme, ("README.md's energy tables are stale: run "
                               "`python -m shared.energy_docs README.md`")
    readme = squeeze(readme)
    for _, option in all_options():
        assert f"| `energy.{option.name}` |" in readme
    for _, var in all_env_vars():
        assert f"| `{var.name}` |" in readme


def test_docs_cli_check_and_rewrite(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- BEGIN energy-options (generated) -->\nold\n"
                    "<!-- END energy-options -->\nafter\n", encoding="utf-8")
    assert docs.main(["--check", str(page)]) == 1
    assert "not current" in capsys.readouterr().err and "old" in page.read_text()
    assert docs.main([str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert docs.options_table_markdown() in text
    assert docs.main(["--check", str(page)]) == 0


def test_update_markdown_errors_name_the_block():
    with pytest.raises(ValueError, match=r"generated block 'energy-colours': no such table"):
        docs.update_markdown("<!-- BEGIN energy-colours -->\n<!-- END energy-colours -->")
    with pytest.raises(ValueError, match=r"no generated block for energy-sources"):
        docs.update_markdown("nothing here", required=["energy-sources"])


def test_tables_show_declared_facts():
    sources = squeeze(docs.sources_table_markdown())
    assert ("| `redfish` | node (`node_wh`) | one process per node (local rank 0) | "
            "when `ENERGY_REDFISH_URL` is set |") in sources
    assert "| `nvml` | gpu (`gpu_wh`) | each training process, for its own GPUs | always |" \
        in sources
    options = squeeze(docs.options_table_markdown())
    assert "| `energy.pue` | `null` | number >= 1 or null | facility PUE" in options
    assert "| `energy.ipmi_timeout_s` | `null` | number > 0 or null | ipmi: timeout of one " \
           "ipmitool call, seconds (default 20) |" in options
    env = squeeze(docs.environment_table_markdown())
    assert "| `ENERGY_IPMI_CMD` | `ipmi` | the ipmitool command" in env
    assert "| `ENERGY_SOURCES` | core |" in env


# --------------------------------------------------------------------------- a new source
class ThrowAwaySource(EnergySource):
    """A pretend meter on the node's power strip: 100 J more at each read."""

    name = "powerstrip"
    covers = ("node",)
    scope = "node"
    priority = 45  # after IPMI, before Prometheus
    auto_env = "ENERGY_POWERSTRIP_HOST"
    summary = "a pretend power strip, for the test of the registry"
    env_vars = (EnvVar("ENERGY_POWERSTRIP_HOST", "host name of the power strip"),)
    options = (Param(None, name="powerstrip_period_s",
                     help="how often the strip is read, seconds", check=Positive()),)

    def __init__(self, host: str, period_s: float) -> None:
        super().__init__()
        self.host, self.period_s, self._joules = host, period_s, 0.0

    @classmethod
    def from_env(cls, env, options):
        return cls(env.get("ENERGY_POWERSTRIP_HOST", "strip"),
                   options.get("powerstrip_period_s", 1.0))

    def open(self) -> None:
        pass

    def read(self) -> Dict[str, float]:
        self._joules += 100.0
        return {"node": self._joules}


@pytest.fixture
def throw_away_source():
    register_source(ThrowAwaySource)
    try:
        yield ThrowAwaySource
    finally:
        unregister_source(ThrowAwaySource.name)
    assert "powerstrip" not in select.SOURCE_ORDER


def test_a_registered_source_is_picked_up_everywhere(throw_away_source, tmp_path):
    # selection, in priority order (45: after IPMI's 40, before Prometheus' 50)
    order = select.SOURCE_ORDER
    assert order.index("ipmi") < order.index("powerstrip") < order.index("prometheus")
    assert [source_class(s).priority for s in order] == sorted(source_class(s).priority
                                                               for s in order)
    assert select.parse_spec("prometheus,powerstrip", {}) == (["powerstrip", "prometheus"], True)
    assert select.AUTO_ONLY_WITH_ENV["powerstrip"] == "ENERGY_POWERSTRIP_HOST"
    # auto tries it only when its variable is set; a node source only in the node's reader
    env = {"ENERGY_RAPL_ROOT": str(tmp_path / "none")}
    assert "powerstrip" not in [s.name for s in select.build_sources("auto", env=env,
                                                                    node_reader=True)]
    env["ENERGY_POWERSTRIP_HOST"] = "pdu-7"
    assert select.build_sources("auto", env=env, node_reader=False) == []
    [built] = [s for s in select.build_sources("auto", env=env, node_reader=True,
                                               options={"powerstrip_period_s": 2.5})
               if s.name == "powerstrip"]
    assert isinstance(built, ThrowAwaySource) and (built.host, built.period_s) == ("pdu-7", 2.5)
    # its option: a known key with its default, checked by its declaration
    opts = validate_options({"powerstrip_period_s": 2.5}, env={})
    assert opts["powerstrip_period_s"] == 2.5
    assert default_options()["powerstrip_period_s"] is None
    with pytest.raises(ValueError, match=r"energy\.powerstrip_period_s must be > 0, got 0"):
        validate_options({"powerstrip_period_s": 0}, env={})
    # the hyperparameter schema of the trials accepts it too (no other file touched)
    resolved = hparams.resolve({"data_dir": "/data", "energy": {"powerstrip_period_s": 3}},
                               {}, where="c.yaml")
    assert resolved["energy"]["powerstrip_period_s"] == 3
    # and the docs show it
    assert "| `powerstrip` | node (`node_wh`) |" in squeeze(docs.sources_table_markdown())
    assert "| `energy.powerstrip_period_s` | `null` | number > 0 or null | powerstrip: " \
        in squeeze(docs.options_table_markdown())
    assert "| `ENERGY_POWERSTRIP_HOST` | `powerstrip` | host name of the power strip |" \
        in squeeze(docs.environment_table_markdown())
    assert "powerstrip" in docs.options_table_markdown().split("`energy.sources`")[1] \
        .split("\n")[0]  # the allowed names of energy.sources
    # the config checker accepts the option in an experiment config, and the customer
    # package's README documents the source, its option and its variable
    from shared import expconf
    from shared.package.readme import energy_section
    conf = expconf.load_yaml(ROOT / "experiment_configs" / "unet" / "single_gpu.yaml")
    conf["hyperparameters"]["energy"] = {"powerstrip_period_s": 2}
    assert expconf.check_experiment(conf, "c.yaml", trial_dir=ROOT / "trials" / "unet") == []
    conf["hyperparameters"]["energy"] = {"powerstrip_period_s": -1}
    assert any("powerstrip_period_s must be > 0" in p
               for p in expconf.check_experiment(conf, "c.yaml", trial_dir=ROOT / "trials" / "unet"))
    rows, section = energy_section({"powerstrip_period_s": 2})
    assert any(r[:2] == ["`energy.powerstrip_period_s`", "`2`"] for r in rows)
    assert "| `powerstrip` |" in squeeze(section) and "`ENERGY_POWERSTRIP_HOST`" in section


def test_unknown_option_still_only_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.energy"):
        validate_options({"powerstrip_period_s": 1}, env={})
    assert any("options ['powerstrip_period_s'] are not used" in r.getMessage()
               for r in caplog.records)


# --------------------------------------------------------------------------- bad declarations
def _source(**attrs):
    base = dict(ThrowAwaySource.__dict__)
    base.pop("__dict__", None)
    base.pop("__weakref__", None)
    base.pop("__qualname__", None)
    base.update(attrs)
    return type("BadSource", (EnergySource,), base)


@pytest.mark.parametrize("attrs, message", [
    ({"name": "Power Strip"}, r"name 'Power Strip' must be a lower-case identifier"),
    ({"name": "auto"}, r"name 'auto' must be a lower-case identifier other than auto and none"),
    ({"covers": ("watts",)}, r"covers \('watts',\) must be a non-empty tuple of components "
                             r"among gpu, cpu, dram, node"),
    ({"covers": ()}, r"covers \(\) must be a non-empty tuple"),
    ({"scope": "rack"}, r"scope 'rack' must be 'device' or 'node'"),
    ({"priority": "high"}, r"priority 'high' must be an integer"),
    ({"summary": " "}, r"summary \(how it measures, for the docs\) is empty"),
    ({"auto_env": "ENERGY_PDU"}, r"auto_env 'ENERGY_PDU' is not one of its env_vars"),
    ({"env_vars": (EnvVar("PDU_HOST", "x"),), "auto_env": None},
     r"variable 'PDU_HOST' must start with ENERGY_"),
    ({"options": ({"name": "x"},)}, r"options entry \{'name': 'x'\} is not a Param with a name"),
    ({"options": (Param(None, help="no name"),)}, r"options entry Param\(.*\) is not a Param with a name"),
    ({"options": (Param(None, name="sample_period_s",
                        help="again"),)},
     r"'sample_period_s' is already declared by the general options"),
    ({"options": (Param(None, name="ipmi_timeout_s",
                        help="again"),)},
     r"'ipmi_timeout_s' is already declared by source ipmi"),
    ({"env_vars": (EnvVar("ENERGY_IPMI_CMD", "again"),), "auto_env": None},
     r"'ENERGY_IPMI_CMD' is already declared by source ipmi"),
    ({"name": "rapl"}, r"name 'rapl' is already taken by shared\.energy\.sources\.rapl\.RaplSource"),
])
def test_bad_declarations_are_refused_with_the_reason(attrs, message):
    before = registered_sources()
    with pytest.raises(ValueError, match=r"energy source BadSource: .*" + message):
        register_source(_source(**attrs))
    assert "badsource" not in select.SOURCE_ORDER and registered_sources() == before


def test_from_env_must_be_implemented():
    cls = _source()
    del cls.from_env  # falls back to EnergySource.from_env
    with pytest.raises(ValueError, match=r"BadSource: from_env is not implemented"):
        register_source(cls)
    with pytest.raises(ValueError, match=r"is not an EnergySource subclass"):
        register_source(dict)  # type: ignore[arg-type]


def test_unregister_and_lookup_name_what_is_registered():
    with pytest.raises(KeyError, match=r"no energy source named 'pdu' is registered "
                                       r"\(registered: .*ipmi.*\)"):
        unregister_source("pdu")
    with pytest.raises(KeyError, match=r"no energy source named 'pdu'"):
        source_class("pdu")
    assert source_class("rapl").covers == ("cpu", "dram")
