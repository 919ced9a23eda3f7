"""``python -m shared.package MODEL [MODEL ...] [--out DIR]``."""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

from shared import recipes
from shared.package.build import build_package
from shared.package.closure import LIBRARY
from shared.package.errors import PackageError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m shared.package MODEL [MODEL ...] [--out DIR]``; returns the exit status."""
    from shared.errors import ConfigError

    models = list(recipes.discover())
    ap = argparse.ArgumentParser(
        prog="python -m shared.package",
        description="Build self-contained customer packages (directory + .tar.gz) of the "
                    "recipes: trial, the library modules it imports, configs, README, "
                    "requirements.txt, .detignore.")
    ap.add_argument("models", nargs="+", metavar="MODEL",
                    help=f"one or more of: {', '.join(models) or '(none found)'}, or 'all'")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("dist"),
                    help="output directory (default: dist)")
    ap.add_argument("--root", type=pathlib.Path, default=recipes.REPO_ROOT,
                    help="the repository holding trials/, experiment_configs/, shared/ and "
                         "pyproject.toml (default: this one)")
    args = ap.parse_args(argv)
    if args.models == ["all"]:
        wanted = list(recipes.discover(args.root))
    else:
        wanted = args.models
    try:
        for model in wanted:
            result = build_package(model, args.out, root=args.root)
            print(f"{result.directory}  ({len(result.context_files)} files, "
                  f"{result.context_bytes / 1024:.0f} KiB uploaded by det experiment create)")
            print(f"{result.archive}  ({result.archive.stat().st_size / 1024:.0f} KiB)")
            print(f"  version {result.stamp}")
            print(f"  {LIBRARY}/: {len(result.closure.modules)} modules; left out: "
                  f"{', '.join(result.closure.dropped) or 'nothing'}")
            print(f"  requirements: {', '.join(result.requirements)}")
    except (PackageError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
