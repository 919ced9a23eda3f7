"""Model constructor arguments: their checks, and the mapping from hyperparameters to them.

The models in ``trials/<model>/model.py`` take plain keyword arguments, as timm's and
segmentation_models_pytorch's do, and check them themselves: a bad value raises
``ArgumentError``, a ValueError that names the argument. They know nothing of
hyperparameters. Each trial's ``model_from_hparams`` (in its ``train.py``) is the one place
that maps hyperparameters to arguments; it does so with ``construct``, which turns an
``ArgumentError`` back into a ``ConfigError`` naming the hyperparameter the user wrote.

Where model defaults live (the rule for every recipe): in the constructor's signature. The
trial's schema reads them from there with ``default_of`` instead of repeating the literal,
and ``construct`` passes only the hyperparameters that are set (not null), so a null
hyperparameter, where its schema allows one, means the constructor's own default as well.

A check is a function from a value to an error text, or None when the value is fine: the
project's one check protocol (``shared.energy.schema.CheckFn``: ``shared.hparams.Param.check``
and the energy options use it too), so that a schema and a constructor can share one.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

from shared.energy.schema import CheckFn
from shared.errors import ConfigError
from shared.hparams import Param

Check = CheckFn


class ArgumentError(ValueError):
    """A model constructor's argument with a bad value.

    ``argument`` is the argument's name, ``value`` the value given and ``problem`` what is
    wrong with it ("must be an integer >= 1"); the message says all three and the owner.
    """

    def __init__(self, owner: str, argument: str, value: Any, problem: str) -> None:
        super().__init__(f"{owner}: argument '{argument}' = {value!r} {problem}")
        self.owner = owner
        self.argument = argument
        self.value = value
        self.problem = problem


def require(owner: str, argument: str, value: Any, check: Check) -> None:
    """Raise ``ArgumentError`` when ``check`` finds something wrong with ``value``."""
    problem = check(value)
    if problem:
        raise ArgumentError(owner, argument, value, problem)


def integer(lo: int, hi: Optional[int] = None) -> Check:
    """An int in ``lo..hi`` (no upper bound when ``hi`` is None); a bool is refused."""
    span = f">= {lo}" if hi is None else f"in {lo}..{hi}"

    def check(v: Any) -> Optional[str]:
        # bool is an int in Python; True as a channel count is a config mistake, not 1.
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            return f"must be an integer {span}"
        return None
    return check


def one_of(choices: Iterable[Any]) -> Check:
    """One of ``choices``; a bool never equals 1 or 0 here (True is not output stride 1)."""
    allowed = tuple(choices)

    def check(v: Any) -> Optional[str]:
        if isinstance(v, bool) and not any(isinstance(c, bool) for c in allowed):
            return f"is not one of {', '.join(map(str, allowed))}"
        try:
            ok = v in allowed
        except TypeError:  # an unhashable or uncomparable value (a list) is simply not a choice
            ok = False
        return None if ok else f"is not one of {', '.join(map(str, allowed))}"
    return check


def boolean(v: Any) -> Optional[str]:
    """True or False, not 1 or "yes"."""
    return None if isinstance(v, bool) else "must be true or false"


def fraction(v: Any) -> Optional[str]:
    """A number in [0, 1): a drop or dropout rate."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        return "must be a number in [0, 1)"
    return None


def default_of(constructor: Callable[..., Any], argument: str) -> Any:
    """The default of ``argument`` in ``constructor``'s signature: how a trial's schema shows
    a model default without holding a second copy of it."""
    try:
        param = inspect.signature(constructor).parameters[argument]
    except KeyError:
        raise TypeError(f"{constructor.__qualname__} has no argument '{argument}'") from None
    if param.default is inspect.Parameter.empty:
        raise TypeError(f"{constructor.__qualname__}'s argument '{argument}' has no default")
    return param.default


#: an argument's annotation -> the hyperparameter types that fill it
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def model_param(constructor: Callable[..., Any], argument: str, *, help: str,
                check: Optional[Check] = None, choices: Optional[Sequence[Any]] = None,
                nullable: bool = False) -> Param:
    """The hyperparameter that sets ``constructor``'s ``argument``, declared once: its default
    and type come from the constructor's signature (the default, the annotation: int, float,
    str or bool), the argument it sets is recorded (``model_args``); the declaration adds only
    what the signature cannot say: the help, the allowed values, whether null (the
    constructor's default) is allowed."""
    param = inspect.signature(constructor).parameters.get(argument)
    if param is None:
        raise TypeError(f"{constructor.__qualname__} has no argument '{argument}'")
    if param.annotation is inspect.Parameter.empty:
        raise TypeError(f"{constructor.__qualname__}'s argument '{argument}' has no annotation "
                        f"(model_param reads the hyperparameter's type from it)")
    annotation = param.annotation if isinstance(param.annotation, str) else \
        getattr(param.annotation, "__name__", repr(param.annotation))
    types = _TYPES.get(annotation.replace("Optional[", "").rstrip("]"))
    if types is None:
        raise TypeError(f"{constructor.__qualname__}'s argument '{argument}' is annotated "
                        f"{annotation!r}: model_param knows {', '.join(_TYPES)}")
    return Param(default_of(constructor, argument), types, choices=choices, check=check,
                 nullable=nullable, help=help, argument=argument)


def model_args(model_params: Mapping[str, Param], others: Mapping[str, str] = {}
               ) -> Dict[str, str]:
    """hyperparameter -> constructor argument, for ``construct``: every ``model_param`` of
    ``model_params``, and ``others``, the common hyperparameters the constructor also takes
    (``num_classes``, ``crop_size`` as ``img_size``, ...)."""
    return {**{name: p.argument for name, p in model_params.items() if p.argument}, **others}


def construct(constructor: Callable[..., Any], hp: Mapping[str, Any],
              arguments: Mapping[str, str]) -> Any:
    """Call ``constructor`` with the hyperparameters of ``hp`` named in ``arguments``
    (hyperparameter -> argument name).

    A hyperparameter that is absent or null is not passed: the constructor's default
    applies. An argument without a default whose hyperparameter is missing, and an
    ``ArgumentError`` about a mapped argument, raise ``ConfigError`` naming the
    hyperparameter, so that the user reads the name of the key in their config.
    """
    kwargs = {arg: hp[name] for name, arg in arguments.items() if hp.get(name) is not None}
    hp_name = {arg: name for name, arg in arguments.items()}
    for arg, param in inspect.signature(constructor).parameters.items():
        if param.default is inspect.Parameter.empty and arg in hp_name and arg not in kwargs:
            raise ConfigError(f"hyperparameter '{hp_name[arg]}' is required")
    try:
        return constructor(**kwargs)
    except ArgumentError as e:
        if e.argument not in hp_name:  # an argument no hyperparameter sets: a bug, not a config
            raise
        raise ConfigError(f"hyperparameter '{hp_name[e.argument]}' = {e.value!r} {e.problem}") from None


def load_weights(hp: Mapping[str, Any], load: Callable[[str], Any]) -> None:
    """Call ``load(path)`` when hyperparameter ``pretrained_path`` is set; a file that cannot
    be loaded (missing, a URL, unreadable, nothing matching) raises ``ConfigError`` naming
    the hyperparameter, with the loader's reason."""
    path = hp.get("pretrained_path")
    if not path:
        return
    try:
        load(path)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise ConfigError(f"hyperparameter 'pretrained_path' = {path!r} could not be loaded: {e}") from None
