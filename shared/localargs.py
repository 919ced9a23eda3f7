"""The local command line of every ``trials/<model>/train.py``, without torch.

Importing a trial means importing torch, timm and Determined (5-25 s on a small machine); a
user asking ``train.py --help`` or mistyping an option should not wait for that. So the
parser lives here, importing nothing heavy, and each ``train.py`` calls
:func:`parse_before_imports` before its own imports: the command line is parsed first (help
and usage errors answered at once), then the trial is imported and ``shared.launch.main``
parses it again with the same parser.

On a cluster the command line is ignored, as ``shared.launch`` does, and nothing is parsed
here (``determined.get_cluster_info()``, which reads a file and imports no torch, says where
we are).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

__all__ = ["DATA_LAYOUTS", "parse_args", "parse_before_imports", "parser", "shared_origin_note"]

#: what ``--data-dir`` holds, per trial family (``shared.recipes.FAMILIES``)
DATA_LAYOUTS = {
    "segmentation": "ADE20K's layout: images/{training,validation}/*.jpg and "
                    "annotations/{training,validation}/*.png",
    "classification": "an ImageFolder set: train/<class>/*.jpg, optionally val/<class>/*.jpg",
    "binary_segmentation": "large images in images/{training,validation}/ and their object "
                           "masks in masks/{training,validation}/<stem>.png",
}


def parser(model_name: str, family: str = "segmentation") -> argparse.ArgumentParser:
    """The local command line of ``trials/<model_name>/train.py``."""
    ap = argparse.ArgumentParser(
        prog=f"trials/{model_name}/train.py",
        description=f"Train {model_name} locally (Determined local mode) or on a cluster "
                    f"(where the command line is ignored).")
    ap.add_argument("--config", type=pathlib.Path,
                    help=f"experiment config YAML (e.g. experiment_configs/{model_name}/single_gpu.yaml)")
    ap.add_argument("--data-dir", help=f"dataset root ({DATA_LAYOUTS[family]}); sets "
                                       f"hyperparameter data_dir")
    ap.add_argument("--output-dir", type=pathlib.Path,
                    help="where metrics.jsonl, checkpoints, tensorboard/ and summary.json go "
                         f"(default runs/{model_name}-<date>-<time>)")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--batches", type=int, help="train this many batches (overrides max_batches)")
    length.add_argument("--epochs", type=int, help="train this many epochs of the training set")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                    help="override hyperparameters, e.g. --set crop_size=64 global_batch_size=8 energy.sources=nvml")
    ap.add_argument("--resume", help="checkpoint directory to continue from, or 'latest' (newest "
                                     "complete, undamaged checkpoint under --output-dir); a "
                                     "checkpoint is trusted input: resume only from checkpoints "
                                     "you or your cluster wrote")
    ap.add_argument("--verbose", action="store_true", help="show Determined's own INFO logs")
    return ap


def parse_args(argv: Optional[Sequence[str]], model_name: str,
               family: str = "segmentation") -> argparse.Namespace:
    return parser(model_name, family).parse_args(argv)


def parse_before_imports(model_name: str, family: str) -> None:
    """In ``train.py``, before it imports torch: parse the command line (``--help``, a
    misspelled option and a missing value are answered at once; the process exits as
    argparse does). ``model_name`` and ``family`` are the trial's ``MODEL_NAME`` and its
    family (``tests/test_trials.py`` checks that every train.py says its own)."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    note = shared_origin_note(script) if script else None
    if note:
        print(note, file=sys.stderr, flush=True)
    import determined  # ~0.3 s: no torch

    info = determined.get_cluster_info()
    if info is not None and info.task_type == "TRIAL":
        return
    parse_args(sys.argv[1:], model_name, family)


def shared_origin_note(script: str | pathlib.Path) -> Optional[str]:
    """None when the ``shared`` package imported is the script's own: ``<root>/shared`` for a
    checkout's ``<root>/trials/<name>/train.py`` (its stanza puts ``<root>`` first on
    ``sys.path``), or ``shared/`` beside the script (a package, a cluster's context directory).
    Otherwise the line to print at start: which ``shared`` was imported, from where, and the
    one the script would have used (a clone's train.py run by another checkout's virtualenv
    must not silently run that checkout's library)."""
    import shared

    here = pathlib.Path(script).resolve().parent
    used = pathlib.Path(shared.__file__).resolve().parent
    candidates = ([here.parent.parent / "shared"] if here.parent.name == "trials" else []) + \
        [here / "shared"]
    own = next((c for c in candidates if c.is_dir()), None)
    if own is not None and own.resolve() == used:
        return None
    where = (f"not its own {own}" if own is not None
             else "it has none of its own (no shared/ beside it or in a checkout above it)")
    return f"{script}: imported the shared package from {used}; {where}"
