"""The project's shared exceptions, at the bottom of ``shared/``: any module may raise or catch
them without importing the module that reads configs (``shared.hparams``) or writes runs."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad experiment config, hyperparameter or command-line override; also the base of the
    errors a user fixes by changing what they typed (an output directory that cannot be
    written, ``shared.outdir.OutputError``). The launcher prints the message as one line and
    exits with status 2."""
