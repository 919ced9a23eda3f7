"""The energy library's own settings, declared once: the general ``energy.*`` options and
``ENERGY_*`` variables (each source declares its own on its class), and the rules they name
(the apportion rules). Declarations only: this module sits at the bottom of the library,
below the sources' registry (which refuses a source declaring one of these keys) and the
settings' check (``shared.energy.options``), which import it.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from .projection import PROJECTIONS
from .schema import (AtLeast, Boolean, Check, EnvVar, NonNegative, OneOf, Param, Positive,
                     PositiveInteger, positive_integer_text)

#: How node-level energy is charged to a trial (``energy.apportion``, ``aggregate.combine``).
APPORTION_RULES = ("gpu_share", "none")


def split_spec(spec: Union[str, Sequence[str], None],
               env: Mapping[str, str]) -> Tuple[List[str], str]:
    """The words of an ``energy.sources`` value, lower-case, and where it came from:
    ``ENERGY_SOURCES`` when set and not empty (it replaces the hyperparameter), else the
    hyperparameter (None reads as "auto"). Only the form is checked here; which names exist
    is the registry's (``shared.energy.select.parse_spec``).

    Raises:
        ValueError: neither a string nor a list of strings; the message says where it came from.
    """
    origin = "energy.sources hyperparameter"
    override = env.get("ENERGY_SOURCES", "").strip()
    if override:
        spec, origin = override, "ENERGY_SOURCES"
    if spec is None:
        spec = "auto"
    if isinstance(spec, str):
        return [s.strip().lower() for s in spec.split(",") if s.strip()], origin
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(s, str) for s in spec):
            raise ValueError(f"{origin}: expected names of sources, got {spec!r}")
        return [s.strip().lower() for s in spec if s.strip()], origin
    raise ValueError(f"{origin}: expected 'auto', a comma-separated string or a list of "
                     f"names, got {type(spec).__name__} {spec!r}")


class SourceSpec(Check):
    """``energy.sources``: "auto", "none" or source names. The form of the hyperparameter is
    checked here; the value in effect (``ENERGY_SOURCES`` replaces it when set) and its names
    against the registry by ``shared.energy.options.validate_options``."""

    allowed = ("auto, none, or a list (or comma-separated string) of the sources' names "
               "(the sources table)")

    def allowed_for(self, sources: Sequence[str]) -> str:
        if not sources:
            return self.allowed
        return f"auto, none, or a list (or comma-separated string) of {', '.join(sources)}"

    def __call__(self, value: Any) -> Optional[str]:
        try:
            split_spec(value, {})  # the hyperparameter itself, whatever ENERGY_SOURCES says
        except ValueError:
            return "must be 'auto', 'none', a comma-separated string or a list of source names"
        return None


#: The options of the energy core, in the order the docs list them. Each source's own
#: options follow them (``all_options``).
GENERAL_OPTIONS: Tuple[Param, ...] = (
    Param(True, name="enabled",
          help="false turns the energy hook off", check=Boolean()),
    Param("auto", name="sources",
          help="which sources to read: `auto` tries each one (some only when their variable is "
               "set, see the sources table) and keeps those that work; `none` reads nothing; "
               "`ENERGY_SOURCES` wins", check=SourceSpec()),
    Param("gpu_share", name="apportion",
          help="share of node-level energy charged to the trial: gpu_share (its GPUs / the "
               "node's) or none (the whole node)", check=OneOf(APPORTION_RULES)),
    Param(None, name="pue",
          help="facility PUE: adds facility_wh = energy x PUE",
          check=AtLeast(1.0, "facility energy / IT energy")),
    Param(None, name="carbon_intensity_g_per_kwh",
          help="grid intensity, gCO2e/kWh: adds co2e_g = facility (or IT) energy x intensity",
          check=NonNegative()),
    Param(None, name="sample_period_s",
          help="sampling period of the BMC sources (IPMI, Redfish), seconds, unless their own "
               "option is set; their default 5 (about the BMC's own refresh)", check=Positive()),
    Param(20000.0, name="node_max_power_w",
          help="the most one node can draw, watts: a node reading above it (a BMC's power, a node "
               "energy counter's rate) is not believed, and counted as missing", check=Positive()),
    Param(None, name="gpus_on_node",
          help="GPUs of the node, for gpu_share (`ENERGY_GPUS_ON_NODE` wins; else detected)",
          check=PositiveInteger()),
    Param("linear", name="projection",
          help="how `projected_energy_to_target_wh` projects a trial that has not reached its "
               "target: linear (the energy so far scaled by the distance to the target) or curve "
               "(a saturating learning curve fitted to the trial's validations, docs/configs.md)",
          check=OneOf(PROJECTIONS)),
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
