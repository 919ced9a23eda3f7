"""The ``energy`` hyperparameter as a whole: every declared option and variable, the
defaults, and the check of a whole ``energy`` section (``validate_options``).

The general options and variables are declared in ``shared.energy.general``, each source's
own on its class (``EnergySource.options``, ``.env_vars``); ``all_options()`` and
``all_env_vars()`` put the general ones and those of every registered source together, and
everything else is derived from them: the defaults (``default_options()``), the checks, the
refusal of unknown keys in ``shared.hparams`` and the docs tables (``shared.energy_docs``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import SiteSettingError
from .general import GENERAL_ENV, GENERAL_OPTIONS
from .redact import energy_logger
from .schema import EnvVar, Param, Refused
from .select import parse_spec
from .sources import registered_sources

log = energy_logger()

#: checked before anything else: a section that is off is not looked at further
_ENABLED = next(o for o in GENERAL_OPTIONS if o.name == "enabled")


def all_options() -> Tuple[Tuple[str, Param], ...]:
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


def _accept(option: Param, value: Any) -> Any:
    """``option.accept(value)``, its refusal as a ValueError naming ``energy.<name>``."""
    try:
        return option.accept(value)
    except Refused as refused:
        raise ValueError(f"energy.{option.name} {refused.problem}, got {refused.value!r}") from None


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
    _accept(_ENABLED, opts["enabled"])
    if not opts["enabled"]:
        return opts
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        # Not an error: a source may read options of its own (passed through to it).
        log.warning("energy: options %s are not used by the energy core (known: %s)",
                    unknown, ", ".join(defaults))
    for _, option in declared:
        opts[option.name] = _accept(option, opts[option.name])
    parse_spec(opts["sources"], env)  # the names, against the registry; ValueError names the bad one
    for owner, var in all_env_vars():
        raw = env.get(var.name)
        if raw is not None:
            try:
                var.validate(raw)
            except ValueError as err:
                raise SiteSettingError(f"the environment's {err} (read by the energy "
                                       f"{'hook' if owner == 'general' else 'source ' + owner})") from None
    return opts
