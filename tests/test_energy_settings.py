"""Misconfiguration is loud: a source configured for the node (by name, or by its variable)
that cannot be used is a WARNING with the reason; a site variable whose value cannot be right
stops the trial before it starts, naming the variable."""
from __future__ import annotations

import logging

import pytest

from shared import hparams as hpmod
from shared.energy.options import validate_options
from shared.energy.schema import SiteSettingError
from shared.energy.select import build_sources


@pytest.mark.parametrize("env,message", [
    ({"ENERGY_REDFISH_INSECURE": "maybe"},
     "the environment's ENERGY_REDFISH_INSECURE='maybe' is not a switch; use 1 or 0 (read by the "
     "energy source redfish)"),
    ({"ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS": "sure"}, "ENERGY_REDFISH_ALLOW_HTTP_CREDENTIALS='sure'"),
    ({"ENERGY_PROMETHEUS_KIND": "watts"},
     "ENERGY_PROMETHEUS_KIND='watts' must be one of power, energy"),
    ({"ENERGY_PROMETHEUS_STEP_S": "-1"},
     "ENERGY_PROMETHEUS_STEP_S='-1' must be a positive number of seconds"),
    ({"ENERGY_PROMETHEUS_STEP_S": "fast"}, "ENERGY_PROMETHEUS_STEP_S='fast'"),
    ({"ENERGY_GPUS_ON_NODE": "eight"}, "ENERGY_GPUS_ON_NODE='eight' must be a positive integer"),
])
def test_a_site_variable_that_cannot_be_right_stops_the_trial(env, message, monkeypatch):
    with pytest.raises(SiteSettingError) as err:
        validate_options({}, env=env)
    assert message in str(err.value)
    for k, v in env.items():  # the config checker and the local run say it, naming the file
        monkeypatch.setenv(k, v)
    with pytest.raises(hpmod.ConfigError, match=r"^c\.yaml: the environment's "):
        hpmod.resolve({}, {}, "c.yaml")


def test_good_site_values_pass():
    validate_options({}, env={"ENERGY_REDFISH_INSECURE": "1", "ENERGY_PROMETHEUS_KIND": "Energy",
                              "ENERGY_PROMETHEUS_STEP_S": "15", "ENERGY_PROMETHEUS_INSECURE": ""})


def test_a_source_configured_by_its_variable_that_cannot_be_used_is_a_warning(tmp_path, caplog):
    env = {"ENERGY_REDFISH_URL": "https://bmc.example/redfish/v1",
           "ENERGY_REDFISH_CREDENTIALS_FILE": str(tmp_path / "absent")}
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        sources = build_sources("auto", env=env, node_reader=True)
    assert not [s for s in sources if s.name == "redfish"]
    [warning] = [r for r in caplog.records if "redfish" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "it is configured for this node: ENERGY_REDFISH_URL is set" in warning.getMessage()
    assert "absent" in warning.getMessage()  # the reason: the file named


def test_a_source_auto_does_not_find_stays_quiet(caplog):
    with caplog.at_level(logging.INFO, logger="shared.energy"):
        build_sources("auto", env={}, node_reader=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
