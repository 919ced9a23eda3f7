"""Model constructor arguments: their checks, and the mapping from hyperparameters to them.

The models in ``trials/<model>/model.py`` take plain keyword arguments, as timm's and
segmentation_models_pytorch's do, and check them themselves: a bad value raises
``ArgumentError``, a ValueError that names the argument. They know nothing of
hyperparameters. Each trial's ``model_from_hparams`` (in its ``train.py``) is the one place
that maps hyperparameters to arguments; it does so with ``construct``, which turns an
``ArgumentError`` back into a ``ConfigError`` naming the hyperparameter the user wrote.

Where a model argument is described (the rule for every recipe): in its constructor, once.
The signature holds its default and its type, the annotation its allowed values
(``depth: Annotated[int, integer(1, MAX_DEPTH)] = 4``: the constructor runs that check through
``@checked``), the docstring's "Args:" section its meaning. The hyperparameter that sets it is
``model_param(Model, "depth")``, which reads all of these, so the default, the check, its
message and the help text have one home; ``construct`` passes only the hyperparameters that
are set (not null), so a null hyperparameter, where its schema allows one, means the
constructor's own default as well.

A check is a function from a value to an error text, or None when the value is fine: the
project's one check protocol (``shared.energy.schema.CheckFn``: ``Param.check`` and the energy
options use it too); its ``allowed`` attribute is what the docs show.
"""
from __future__ import annotations

import functools
import inspect
import re
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from shared.energy.schema import CheckFn, Param
from shared.errors import ConfigError

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
    check.allowed = f"integer {span}"  # type: ignore[attr-defined]  # the docs' "allowed"
    return check


def one_of(choices: Iterable[Any], key: Optional[Callable[[Any], Any]] = None) -> Check:
    """One of ``choices``; a bool never equals 1 or 0 here (True is not output stride 1).
    ``key`` maps a value to the form compared (SegFormer's variant " B1" is "b1")."""
    allowed = tuple(choices)
    text = ", ".join(map(str, allowed))

    def check(v: Any) -> Optional[str]:
        if isinstance(v, bool) and not any(isinstance(c, bool) for c in allowed):
            return f"is not one of {text}"
        try:
            ok = (key(v) if key is not None else v) in allowed
        except TypeError:  # an unhashable or uncomparable value (a list) is simply not a choice
            ok = False
        return None if ok else f"is not one of {text}"
    check.allowed = text  # type: ignore[attr-defined]
    return check


def boolean(v: Any) -> Optional[str]:
    """True or False, not 1 or "yes"."""
    return None if isinstance(v, bool) else "must be true or false"


def fraction(v: Any) -> Optional[str]:
    """A number in [0, 1): a drop or dropout rate."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        return "must be a number in [0, 1)"
    return None


boolean.allowed = "true, false"  # type: ignore[attr-defined]
fraction.allowed = "number in [0, 1)"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the signature
def _function(constructor: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose signature and annotations describe ``constructor``'s arguments: a
    class's ``__init__``, else the function itself."""
    return constructor.__init__ if isinstance(constructor, type) else constructor


def _hints(constructor: Callable[..., Any]) -> Dict[str, Any]:
    """The resolved annotations of ``constructor``'s arguments, ``Annotated`` kept."""
    return typing.get_type_hints(_function(constructor), include_extras=True)


def argument_checks(constructor: Callable[..., Any]) -> Dict[str, Check]:
    """argument -> its check, for each argument annotated ``Annotated[type, check]``: the one
    home of a model argument's allowed values, run by the constructor (``checked``) and by
    the hyperparameter that sets it (``model_param``)."""
    out: Dict[str, Check] = {}
    for name, hint in _hints(constructor).items():
        if typing.get_origin(hint) is typing.Annotated:
            checks = [m for m in hint.__metadata__ if callable(m)]
            if checks:
                out[name] = checks[0]
    return out


def checked(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a model's ``__init__``: each argument annotated ``Annotated[type, check]`` is
    checked before the body runs, and a bad value raises ``ArgumentError`` naming the class
    (``UNet: argument 'depth' = 0 must be an integer in 1..8``)."""
    signature = inspect.signature(init)
    owner = init.__qualname__.rsplit(".", 1)[0]
    resolved: list = []  # [argument -> check], at the first call, once the module is whole

    @functools.wraps(init)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        if not resolved:
            resolved.append(argument_checks(init))
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        for name, check in resolved[0].items():
            require(owner, name, bound.arguments[name], check)
        init(*args, **kwargs)
    return wrapper


# Google style ("Args:", one "name: text" entry per argument, continuation lines indented
# deeper), as the models' docstrings are written. Parsed here in a few lines: no package that
# Determined or torch installs parses docstrings, and the form is fixed by our own models.
_ARGS_HEADING = re.compile(r"^(\s*)Args:\s*$")
_ENTRY = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def _args_section(doc: Optional[str]) -> Dict[str, str]:
    """name -> text of the entries of ``doc``'s "Args:" section (continuations joined)."""
    out: Dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    for i, line in enumerate(lines):
        heading = _ARGS_HEADING.match(line)
        if not heading:
            continue
        outer, entry_indent, name = len(heading.group(1)), None, None
        for body in lines[i + 1:]:
            if not body.strip():
                continue
            indent = len(body) - len(body.lstrip())
            if indent <= outer:
                break
            entry = _ENTRY.match(body.strip())
            if entry_indent is None:
                entry_indent = indent
            if indent == entry_indent and entry:
                name = entry.group(1)
                out[name] = entry.group(2)
            elif name is not None:
                out[name] = f"{out[name]} {body.strip()}".strip()
    # a table cell, not a sentence: no final full stop
    return {name: text.removesuffix(".") for name, text in out.items()}


def argument_docs(constructor: Callable[..., Any]) -> Dict[str, str]:
    """argument -> its description in the "Args:" section of ``constructor``'s docstring: a
    class's own or its ``__init__``'s, then its bases' (a subclass documents only what it
    changes), or a function's."""
    docs: Dict[str, str] = {}
    owners = constructor.__mro__ if isinstance(constructor, type) else (constructor,)
    for owner in reversed(owners):
        docs.update(_args_section(owner.__dict__.get("__doc__") if isinstance(owner, type)
                                  else owner.__doc__))
        init = owner.__dict__.get("__init__") if isinstance(owner, type) else None
        if init is not None:
            docs.update(_args_section(init.__doc__))
    return docs


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


#: an argument's type -> the hyperparameter types that fill it
_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def model_param(constructor: Callable[..., Any], argument: str, *, help: Optional[str] = None,
                nullable: bool = False) -> Param:
    """The hyperparameter that sets ``constructor``'s ``argument``, declared once: the
    constructor says its default (the signature), its type and allowed values (the annotation,
    ``Annotated[int, integer(1, 8)]``: the same check the constructor runs, so the message is
    the same either way) and its meaning (the "Args:" section of its docstring); the argument
    it sets is recorded (``model_args``). The declaration adds only what the constructor
    cannot say: whether null (the constructor's default) is allowed, and ``help`` where the
    docstring does not document the argument (one of the two, never both)."""
    name = constructor.__qualname__
    param = inspect.signature(constructor).parameters.get(argument)
    if param is None:
        raise TypeError(f"{name} has no argument '{argument}'")
    hint = _hints(constructor).get(argument)
    if hint is None:
        raise TypeError(f"{name}'s argument '{argument}' has no annotation "
                        f"(model_param reads the hyperparameter's type from it)")
    kind = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    if typing.get_origin(kind) is typing.Union:  # Optional[int]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    types = _TYPES.get(kind)
    if types is None:
        raise TypeError(f"{name}'s argument '{argument}' is annotated "
                        f"{getattr(kind, '__name__', repr(kind))!r}: model_param knows "
                        f"{', '.join(t.__name__ for t in _TYPES)}")
    documented = argument_docs(constructor).get(argument)
    if documented and help:
        raise TypeError(f"{name} documents '{argument}' in its docstring: drop help= (the "
                        f"docstring is its one home)")
    if not documented and not help:
        raise TypeError(f"{name}'s argument '{argument}' is not documented: add it to the "
                        f"\"Args:\" section of {name}'s docstring (or give help=)")
    text = documented or help
    if nullable:
        text += "; null: the model's default"
    return Param(default_of(constructor, argument), types,
                 check=argument_checks(constructor).get(argument), nullable=nullable, help=text,
                 argument=argument)


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
