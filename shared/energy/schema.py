"""How a setting is declared: a hyperparameter or an ``energy`` option (``Param``, the one
declaration class of the project, with the one value check) or an ``ENERGY_*`` environment
variable of the energy library (``EnvVar``), each with its check and a one-line doc, and the
helpers that read them.

Declarations live next to what uses them: the general energy options and variables in
``shared.energy.general``, each source's own on its class (``EnergySource.options`` and
``.env_vars``), the hyperparameters in ``shared.hparams`` (the common ones), the families'
trial modules and each recipe's ``MODEL_PARAMS`` (``shared.modelargs.model_param``, read from
the model constructor). Their checking (``shared.energy.options.validate_options``,
``shared.hparams.resolve``) and the documentation tables (``shared.energy_docs``, the
package README) are derived from them, so a setting is described in one place.

This module imports nothing of the library but its exceptions (``errors``): it is the bottom
that every other module (the sources included) may import, and the project's hyperparameters
build on it, the energy library importing nothing of the project.

Why hand-written and not pydantic: the checks are a handful of numbers and names, the messages
must keep their exact wording (tests and users rely on them), and a new dependency would ship
in every customer package.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from .errors import SiteSettingError, SourceUnavailable


# ------------------------------------------------------------------------------------------
# Checks. One protocol for every value check of the project: a callable ``check(value)``
# returning what is wrong with the value as a phrase ("must be > 0"), or None when it is fine;
# the caller names the key and the value. ``Param.check``, ``EnvVar.check`` and the model
# constructors' checks (``shared.modelargs``) are all of this kind. ``allowed``, where a check
# has it, is what the docs' "allowed" column shows.
# ------------------------------------------------------------------------------------------
#: the check protocol: the value -> what is wrong with it, or None
CheckFn = Callable[[Any], Optional[str]]

#: the largest value of any numeric energy option (periods and timeouts in seconds, powers
#: in watts, counts): a timeout of 1e308 s overflows the clock arithmetic of a deadline
MAXIMUM = 1e6


def number_problem(value: Any) -> Optional[str]:
    """What keeps ``value`` from being a finite real number of magnitude at most ``MAXIMUM``
    (booleans are refused: YAML's ``true`` is not a period), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a number"
    if abs(value) > MAXIMUM:
        return f"must be at most {MAXIMUM:g}"
    return None


class Check(abc.ABC):
    """Base of the value checks with a text for the docs (``allowed``: the values accepted,
    in words)."""

    allowed: str = "any"

    def allowed_for(self, sources: Sequence[str]) -> str:
        """``allowed`` where the registered sources' names are known (the docs tables)."""
        return self.allowed

    @abc.abstractmethod
    def __call__(self, value: Any) -> Optional[str]:
        """What is wrong with ``value``, as a phrase; None when it is accepted."""


class Boolean(Check):
    allowed = "true, false"

    def __call__(self, value: Any) -> Optional[str]:
        return None if isinstance(value, bool) else "must be true or false"


class Positive(Check):
    """A number > 0 (periods, timeouts, power ceilings)."""

    allowed = "number > 0"

    def __call__(self, value: Any) -> Optional[str]:
        return number_problem(value) or (None if value > 0 else "must be > 0")


class NonNegative(Check):
    allowed = "number >= 0"

    def __call__(self, value: Any) -> Optional[str]:
        return number_problem(value) or (None if value >= 0 else "must be >= 0")


class AtLeast(Check):
    """A number >= ``minimum``; ``why`` says what the number is, for the message."""

    def __init__(self, minimum: float, why: str) -> None:
        self.minimum = minimum
        self.why = why
        self.allowed = f"number >= {minimum:g}"

    def __call__(self, value: Any) -> Optional[str]:
        return number_problem(value) or (
            None if value >= self.minimum
            else f"is {self.why} and cannot be below {self.minimum!r}")


class PositiveInteger(Check):
    allowed = "integer >= 1"

    def __call__(self, value: Any) -> Optional[str]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return "must be a positive integer"
        return None if value <= MAXIMUM else f"must be at most {MAXIMUM:g}"


class OneOf(Check):
    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.allowed = ", ".join(self.choices)

    def __call__(self, value: Any) -> Optional[str]:
        try:
            ok = value in self.choices
        except TypeError:  # an unhashable value (a list) is simply not a choice
            ok = False
        return None if ok else f"must be one of {self.choices}"


# ------------------------------------------------------------------------------------------
# Declarations
# ------------------------------------------------------------------------------------------
def value_text(value: Any) -> str:
    """A scalar as YAML shows it (null, true/false, 1e-06 for floats); other values as str():
    how the docs tables show defaults and allowed values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _integral(value: Any) -> Any:
    """A float with an integral value (``2e8``, ``64.0``; YAML reads scientific notation as a
    float) as the int it equals, also inside a list ([64.0, 64.0]); anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [int(x) if isinstance(x, float) and x.is_integer() else x for x in value]
    return value


class Refused(ValueError):
    """A value a ``Param`` refuses: ``value`` as the message shows it (None: the value was
    null) and ``problem``, the phrase of what is wrong ("must be > 0"). Whoever knows the
    key's name (``shared.hparams``, ``shared.energy.options``) writes the message."""

    def __init__(self, value: Any, problem: str) -> None:
        super().__init__(problem)
        self.value = value
        self.problem = problem


@dataclass(frozen=True)
class Param:
    """One declared setting: a hyperparameter (``shared.hparams.COMMON``, a family's schema, a
    recipe's ``MODEL_PARAMS``) or a key of the ``energy`` hyperparameter (the general options
    in ``shared.energy.general``, each source's ``options``). The one declaration class of the
    project, with the one value check (``accept``) and the one "allowed" text of the docs.

    Attributes:
        default: the value when the key is not given. None means "not set" (and allows null):
            the reader then uses its own default, which ``help`` states.
        types: the types a value may have; () accepts any (the check says). Where float is
            allowed an int is taken as the float it equals; where int is and float is not, an
            integral float (YAML's ``2e8``) as the int.
        choices: the allowed values, when they are a list.
        check: the project's one check protocol (``CheckFn``), run after types and choices;
            its ``allowed`` (when it has one) is what the docs show as the allowed values.
        nullable: null is allowed (always so when ``default`` is None).
        help: one line for the docs tables: what it does.
        argument: the model constructor's argument this hyperparameter sets
            (``shared.modelargs.model_param``).
        name: the key, for declarations kept in a sequence (an energy option,
            ``energy.<name>``); a schema's hyperparameters are named by its keys.
    """

    default: Any
    types: Tuple[type, ...] = ()
    choices: Optional[Sequence[Any]] = None
    check: Optional[CheckFn] = None
    nullable: bool = False
    help: str = ""
    argument: Optional[str] = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.default is None and not self.nullable:
            object.__setattr__(self, "nullable", True)  # "not set" is a value of its own

    def accept(self, value: Any) -> Any:
        """``value`` as its reader takes it (see ``types``).

        Raises:
            Refused: what is wrong, and the value as the message shows it.
        """
        if value is None:
            if self.nullable:
                return None
            raise Refused(None, "must not be null")
        given = value
        if self.types:
            names = "/".join(t.__name__ for t in self.types)
            # bool is an int in Python: refuse True for an int field and 1 for a bool field.
            if isinstance(value, bool) and bool not in self.types:
                raise Refused(value, f"must be {names}, not a boolean")
            if int in self.types and float not in self.types:
                value = _integral(value)  # "max_image_pixels: 2e8" is the integer 200000000
            if not isinstance(value, self.types) and not (float in self.types
                                                          and isinstance(value, int)):
                raise Refused(value, f"has type {type(value).__name__}; expected {names}")
            if float in self.types and isinstance(value, int):
                value = float(value)  # "lr: 1" in YAML is an int; numeric fields are floats
            if isinstance(value, float) and not math.isfinite(value):
                raise Refused(value, "is not finite")
        if self.choices is not None and value not in self.choices:
            raise Refused(value, f"is not one of {', '.join(repr(c) for c in self.choices)}")
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise Refused(given, problem)
        return value

    def allowed_text(self, sources: Sequence[str] = ()) -> str:
        """What the docs' "allowed" column shows: the choices; else the check's ``allowed``
        (``sources``: the registered sources' names, for a check whose values are among them)
        or the types, with "or null" when null is allowed."""
        if self.choices is not None:
            return ", ".join(value_text(c) for c in self.choices)
        text = (self.check.allowed_for(sources) if isinstance(self.check, Check)
                else getattr(self.check, "allowed", None))
        text = text or "/".join(t.__name__ for t in self.types) or "any"
        return f"{text} or null" if self.nullable else text


@dataclass(frozen=True)
class EnvVar:
    """One environment variable the library reads.

    Environment rather than hyperparameters for site details (addresses, commands, paths,
    credentials files): set once per cluster or node, and out of the experiment config, which
    the WebUI shows.

    Attributes:
        name: ``ENERGY_*``.
        doc: one line for the docs tables.
        check: ``check(raw)``, the phrase of what is wrong with the variable's text or None
            (the project's one check protocol), run by ``validate_options`` when the variable
            is set, for variables whose bad value must stop a trial before it starts (most
            are checked by their source instead, which then reports itself unavailable).
    """

    name: str
    doc: str
    check: Optional[Callable[[str], Optional[str]]] = None

    def validate(self, raw: str) -> None:
        """Raise ValueError naming the variable and its text if the check refuses it."""
        problem = self.check(raw) if self.check is not None else None
        if problem:
            raise ValueError(f"{self.name}={raw!r} {problem}")


def boolean_text(raw: str) -> Optional[str]:
    """Check for a switch variable (``ENERGY_REDFISH_INSECURE=1``): what ``env_flag`` reads."""
    if raw.strip().lower() not in ("", "0", "false", "no", "off", "1", "true", "yes", "on"):
        return "is not a switch; use 1 or 0"
    return None


def choice_text(*choices: str) -> Callable[[str], Optional[str]]:
    """Check for a variable holding one of ``choices`` (case-insensitive; empty: the default)."""
    def check(raw: str) -> Optional[str]:
        if raw.strip() and raw.strip().lower() not in choices:
            return f"must be one of {', '.join(choices)}"
        return None
    return check


def positive_number_text(raw: str) -> Optional[str]:
    """Check for a variable holding a positive number of seconds (empty: the default)."""
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        return "must be a positive number of seconds"
    return None


def positive_integer_text(raw: str) -> Optional[str]:
    """Check for a variable holding a count (``ENERGY_GPUS_ON_NODE=8``)."""
    if not raw.strip().isdigit() or int(raw) < 1:
        return "must be a positive integer"
    return None


# ------------------------------------------------------------------------------------------
# Reading settings (used by the sources' ``from_env``)
# ------------------------------------------------------------------------------------------
# Substrings of option names that can only be a secret: such a hyperparameter would be shown in
# the WebUI and stored with the experiment, so it is refused, whatever source reads it.
_SECRET_OPTION_WORDS = ("password", "passwd", "secret", "token", "credential", "apikey",
                        "api_key")


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A boolean environment switch: 1/true/yes/on or 0/false/no/off/empty."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SourceUnavailable(f"{name}={env.get(name)!r} is not a boolean; use 1 or 0")


def refuse_secret_options(options: Mapping[str, Any], source: str, env_hint: str) -> None:
    """Raise ValueError if a hyperparameter looks like a credential (without echoing it)."""
    for key in options:
        lowered = str(key).lower()
        if any(word in lowered for word in _SECRET_OPTION_WORDS):
            raise ValueError(
                f"energy option {key!r} looks like a credential for {source}: hyperparameters "
                "are stored with the experiment and shown in the WebUI. Remove it (and change "
                f"that secret, it has been exposed); use {env_hint} instead")


def positive_option(options: Mapping[str, Any], names: Sequence[str], default: float) -> float:
    """The first of ``names`` present in ``options`` as a positive finite number, else default."""
    for name in names:
        if name in options and options[name] is not None:
            value = options[name]
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"energy option {name}={value!r} must be a positive number "
                                 "of seconds")
            return float(value)
    return default

