"""Loading weights into a model from a local file, and nothing else.

The study trains from scratch by default; when a run does start from weights, they must come
from a file the user put on the shared file system. Nothing here downloads: a cluster task that
reaches for the internet either hangs on an air-gapped node or silently trains something other
than what the config says.

The loader is forgiving about *layout* (a raw ``state_dict``, a training checkpoint, a
Determined checkpoint, ``module.``/``model.`` prefixes from wrappers) and about a classifier
sized for another class count, but strict about *content*: a file in which nothing matches
the model is a user error and raises.
"""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

__all__ = ["load_local_weights"]

log = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the model's state_dict. Determined's
# PyTorchTrial checkpoints hold a list, one entry per wrapped model; the first is the model.
_NESTED_KEYS = ("state_dict", "model", "models_state_dict")


def _check_local(path: str | os.PathLike) -> pathlib.Path:
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(f"weights load only from a local path; {text!r} looks like a URL "
                         f"(download the file yourself and pass its path)")
    p = pathlib.Path(text).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights load only from a local path; no file at {text!r} "
                                f"(hub ids such as 'org/model' are not downloaded)")
    return p


def _read(p: pathlib.Path) -> Any:
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{p} is a .safetensors file but the 'safetensors' package is not "
                              f"installed; install it or convert the file with torch.save"
                              ) from None
        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # the library raises its own error types for corrupt files
            raise ValueError(f"could not read safetensors weights from {p}: {e}") from e
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects would run code.
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a weights file"
        raise ValueError(f"could not read weights from {p} with torch.load(weights_only=True): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """The state dict in the local weights file ``path`` (a checkpoint's nested one included),
    on the CPU; the errors of ``load_local_weights``."""
    p = _check_local(path)
    return _extract_state_dict(_read(p), p)


def _extract_state_dict(obj: Any, p: pathlib.Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if key == "models_state_dict" and isinstance(inner, (list, tuple)) and inner:
                inner = inner[0]
            if isinstance(inner, Mapping):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(map(str, list(obj)[:8]))
        raise ValueError(f"{p} holds no tensors where a state_dict was expected "
                         f"(top-level keys: {keys or 'none'})")
    raise ValueError(f"{p} holds a {type(obj).__name__}, not a state_dict or a checkpoint dict")


def _match_key(key: str, target: Mapping[str, Any], prefixes: Sequence[str]) -> str:
    """The model's name for a file key.

    Prefixes are stripped only until the key matches the model, so a model that itself has a
    submodule called ``model`` is not broken by stripping ``model.``. A key that never matches
    is reported fully stripped, which is the most readable form.
    """
    while True:
        if key in target:
            return key
        for prefix in prefixes:
            if prefix and key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            return key


def load_local_weights(module: nn.Module, path: str | os.PathLike, *,
                       prefix_strip: Sequence[str] = ("module.", "model."),
                       strict: bool = False) -> Dict[str, Any]:
    """Load weights from a local file into ``module`` and say what was loaded.

    Accepts a raw state_dict, or a dict holding one under ``state_dict``, ``model`` or
    ``models_state_dict[0]`` (Determined checkpoints), from ``torch.load`` (weights_only) or a
    ``.safetensors`` file. Key prefixes in ``prefix_strip`` are removed where that makes a key
    match. Tensors whose shape differs from the model's (e.g. a classifier for another class
    count) are skipped.

    Args:
        module: the model to load into, in place.
        path: a local file; URLs and hub ids are refused.
        prefix_strip: wrapper prefixes to remove from the file's keys.
        strict: raise if anything is missing, unexpected or mis-shaped, instead of skipping.

    Returns:
        ``{"loaded": n, "missing": [...], "unexpected": [...], "shape_mismatch": [...]}``
        with the model's key names; the summary is also logged.

    Raises:
        ValueError: URL-like path, unreadable file, no state_dict in it, nothing matching the
            model, or (``strict``) any difference.
        FileNotFoundError: no file at ``path``.
        ImportError: a ``.safetensors`` file without the safetensors package.
    """
    p = _check_local(path)
    state = read_state_dict(p)
    target = module.state_dict()

    matched: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = []
    for raw_key, tensor in state.items():
        key = _match_key(raw_key, target, tuple(prefix_strip))
        if key not in target:
            unexpected.append(key)
        elif tuple(tensor.shape) != tuple(target[key].shape):
            mismatched.append((key, tuple(tensor.shape), tuple(target[key].shape)))
        else:
            matched[key] = tensor
    shape_keys = {k for k, _, _ in mismatched}
    missing = [k for k in target if k not in matched and k not in shape_keys]

    if not matched:
        sample = ", ".join(list(state)[:5])
        raise ValueError(f"no tensor in {p} matches {type(module).__name__} (file keys start "
                         f"with: {sample}; model keys start with: {', '.join(list(target)[:5])}); "
                         f"is it the right file?")
    if strict and (missing or unexpected or mismatched):
        raise ValueError(f"strict loading of {p} into {type(module).__name__} failed: "
                         f"missing {missing[:10]}, unexpected {unexpected[:10]}, shape mismatch "
                         f"{[f'{k} {a} vs {b}' for k, a, b in mismatched[:10]]}")

    module.load_state_dict(matched, strict=False)
    summary = {"loaded": len(matched), "missing": missing, "unexpected": unexpected,
               "shape_mismatch": [k for k, _, _ in mismatched]}
    log.info("loaded %d tensors from %s into %s; missing %d, unexpected %d, shape mismatch %d%s",
             len(matched), p, type(module).__name__, len(missing), len(unexpected), len(mismatched),
             "".join(f"\n  skipped {k}: file {a} vs model {b}" for k, a, b in mismatched))
    if missing:
        log.info("missing from %s (left as initialised): %s", p, ", ".join(missing))
    if unexpected:
        log.info("in %s but not in the model (ignored): %s", p, ", ".join(unexpected))
    return summary


def load_model_or_backbone(model: nn.Module, backbone: nn.Module, path: str | os.PathLike) -> dict:
    """Load a local file into ``model``, or into ``backbone`` when none of the file's keys
    matches the whole model (an ImageNet checkpoint of the backbone alone, in timm's names).

    When the file matches neither, the error about the whole model is raised: it lists the
    file's and the model's keys, which is what a user needs to see.
    """
    try:
        return load_local_weights(model, path)
    except ValueError as whole:
        try:
            return load_local_weights(backbone, path)
        except ValueError:
            raise whole from None
