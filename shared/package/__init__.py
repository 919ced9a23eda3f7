"""Customer packages: one self-contained recipe directory and ``.tar.gz`` per model.

    python -m shared.package unet [segformer ...] [--out dist] [--root REPO]
    python -m shared.package all

Each package is a Determined context directory that needs nothing from this repository::

    <model>-recipe-<version>/
        train.py, model.py    the trial, byte for byte (every top-level .py of trials/<model>)
        shared/               the modules of this library the trial imports (import analysis)
        configs/*.yaml        experiment_configs/<model>/*.yaml; only comment lines are edited
                              (repository paths replaced by the package's own)
        docs/*.md             the project docs the config comments cite (and those they cite)
        README.md             for the customer: what it is, commands, hyperparameters,
                              metrics, energy sources and their environment variables
        requirements.txt      what a local run needs (pip install -r requirements.txt)
        .detignore            keeps configs/, docs/, tests, caches, runs and archives out of
                              the context that ``det experiment create`` uploads

so ``det experiment create configs/single_gpu.yaml .`` run inside it ships the trial and its
library together, with no ``--include``. ``python train.py`` imports the copied ``shared``:
the directory of the script is ``sys.path[0]``, searched before site-packages, an editable
install of this repository or the copy installed in the task image.

Which modules of ``shared`` go in is decided by reading the code (``ast``), not by a list:
the closure of the imports of the trial's files, counting imports inside functions (lazy
imports are still imports), ``importlib.import_module("...")`` calls with a literal name, and
string literals that name a module of ``shared`` (registries such as the energy source table
in ``shared.energy.select`` import by name). Imports under ``if TYPE_CHECKING:`` do not
count. What is left out is listed in the README and printed.

The recipes are those of the registry (``shared.recipes``), of either trial family
(segmentation, classification). One file per job:

    errors.py    PackageError
    closure.py   the import analysis (which modules of shared/ a trial needs) and the
                 requirement lines for its third-party imports (from pyproject.toml)
    readme.py    the customer README, rendered per trial family
    build.py     build_package: staging, config checks and rewriting, git version stamp,
                 Determined's context limit, the reproducible archive
    cli.py       the command line (__main__.py runs it)
"""
from shared.package.build import (DETIGNORE, PackageResult, build_package, check_config,
                                  context_contents, version_stamp)
from shared.package.cli import main
from shared.package.closure import (LIBRARY, Closure, ModuleImports, analyse, read_pyproject,
                                    requirements, scan_imports)
from shared.package.errors import PackageError
from shared.package.readme import MARKER, TASK_IMAGE, render_readme

__all__ = ["DETIGNORE", "LIBRARY", "MARKER", "TASK_IMAGE", "Closure", "ModuleImports", "PackageError",
           "PackageResult", "analyse", "build_package", "check_config", "context_contents",
           "main", "read_pyproject", "render_readme", "requirements",
           "scan_imports", "version_stamp"]
