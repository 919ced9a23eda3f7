"""The ``energy`` hyperparameter: the general options and variables, declared here once, and
the check of a whole ``energy`` section (``validate_options``).

Each source declares its own options and variables on its class (``EnergySource.options``,
``.env_vars``); ``all_options()`` and ``all_env_vars()`` put the general ones and those of
every registered source together, and everything else is derived from them: the defaults
(``default_options()``, exported as ``callback.DEFAULT_OPTIONS``), the checks, the refusal of
unknown keys in ``shared.hparams`` and the docs tables (``shared.energy.docs``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from .redact import energy_logger
from .aggregate import APPORTION_RULES
from .projection import PROJECTIONS
from .schema import (AtLeast, Boolean, Check, EnvVar, NonNegative, OneOf, Option, Positive,
                     PositiveInteger, SiteSettingError, positive_integer_text)
from .select import parse_spec
from .sources import registered_sources

log = energy_logger()


class SourceNames(Check):
    """``energy.sources``: "auto", "none" or names of registered sources. ``ENERGY_SOURCES``
    replaces the value when set, so the check reads ``env`` too (``select.parse_spec``)."""

    @property
    def allowed(self) -> str:  # type: ignore[override]  # computed: sources can be added
        names = ", ".join(c.name for c in registered_sources())
        return f"auto, none, or a list (or comma-separated string) of {names}"

    def __call__(self, key: str, value: Any, env: Mapping[str, str]) -> None:
        parse_spec(value, env)  # raises ValueError naming the bad source and its origin


#: The options of the energy core, in the order the docs list them. Each source's own
#: options follow them (``all_options``).
GENERAL_OPTIONS: Tuple[Option, ...] = (
    Option("enabled", True, "false turns the energy hook off", Boolean()),
    Option("sources", "auto",
           "which sources to read: `auto` tries each one (some only when their variable is "
           "set, see the sources table) and keeps those that work; `none` reads nothing; "
           "`ENERGY_SOURCES` wins", SourceNames()),
    Option("apportion", "gpu_share",
           "share of node-level energy charged to the trial: gpu_share (its GPUs / the "
           "node's) or none (the whole node)", OneOf(APPORTION_RULES)),
    Option("pue", None, "facility PUE: adds facility_wh = energy x PUE",
           AtLeast(1.0, "facility energy / IT energy")),
    Option("carbon_intensity_g_per_kwh", None,
           "grid intensity, gCO2e/kWh: adds co2e_g = facility (or IT) energy x intensity",
           NonNegative()),
    Option("sample_period_s", None,
           "sampling period of the BMC sources (IPMI, Redfish), seconds, unless their own "
           "option is set; their default 5 (about the BMC's own refresh)", Positive()),
    Option("node_max_power_w", 20000.0,
           "the most one node can draw, watts: a node reading above it (a BMC's power, a node "
           "energy counter's rate) is not believed, and counted as missing", Positive()),
    Option("gpus_on_node", None,
           "GPUs of the node, for gpu_share (`ENERGY_GPUS_ON_NODE` wins; else detected)",
           PositiveInteger()),
    Option("projection", "linear",
           "how `projected_energy_to_target_wh` projects a trial that has not reached its "
           "target: linear (the energy so far scaled by the distance to the target) or curve "
           "(a saturating learning curve fitted to the trial's validations, docs/configs.md)",
           OneOf(PROJECTIONS)),
)

#: The variables of the energy core (each source declares its own).
GENERAL_ENV: Tuple[EnvVar, ...] = (
    EnvVar("ENERGY_SOURCES",
           "replaces the `energy.sources` hyperparameter: a site sets it once for its nodes"),
    EnvVar("ENERGY_GPUS_ON_NODE",
           "GPUs of the node, for gpu_share when a container sees only its own GPUs (shared "
           "nodes); wins over `energy.gpus_on_node`", positive_integer_text),
    EnvVar("ENERGY_NODE_NAME",
           "this node's name in reports and in the Prometheus query's `{node}` (default: the "
           "host name; in a bridge-networked container that is the container id)"),
)


def all_options() -> Tuple[Tuple[str, Option], ...]:
    """(owner, option) for every declared option: owner "general" or a source's name."""
    out = [("general", o) for o in GENERAL_OPTIONS]
    for cls in registered_sources():
        out += [(cls.name, o) for o in cls.options]
    return tuple(out)


def all_env_vars() -> Tuple[Tuple[str, EnvVar], ...]:
    """(owner, variable) for every declared ``ENERGY_*`` variable."""
    out = [("general", v) for v in GENERAL_ENV]
    for cls in registered_sources():
        out += [(cls.name, v) for v in cls.env_vars]
    return tuple(out)


def default_options() -> Dict[str, Any]:
    """Every known key of the ``energy`` hyperparameter with its default (a new dict)."""
    return {option.name: option.default for _, option in all_options()}


def validate_options(options: Optional[Mapping[str, Any]],
                     env: Mapping[str, str] = os.environ) -> Dict[str, Any]:
    """The ``energy`` hyperparameter with defaults filled in, checked.

    ``enabled: false`` turns the hook off before anything else is looked at, so that a
    config may keep settings for a site it does not run on.

    Raises:
        ValueError: a bad value; the message names the key and the value.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError(f"the energy hyperparameter must be a mapping, got {options!r}")
    declared = all_options()
    defaults = {option.name: option.default for _, option in declared}
    opts = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    Boolean()("enabled", opts["enabled"], env)
    if not opts["enabled"]:
        return opts
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        # Not an error: a source may read options of its own (passed through to it).
        log.warning("energy: options %s are not used by the energy core (known: %s)",
                    unknown, ", ".join(defaults))
    for _, option in declared:
        if option.check is not None and opts[option.name] is not None:
            option.check(option.name, opts[option.name], env)
    for owner, var in all_env_vars():
        raw = env.get(var.name)
        if var.check is not None and raw is not None:
            try:
                var.check(var.name, raw)
            except ValueError as err:
                raise SiteSettingError(f"the environment's {err} (read by the energy "
                                       f"{'hook' if owner == 'general' else 'source ' + owner})") from None
    return opts
