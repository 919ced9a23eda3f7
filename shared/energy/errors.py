"""The energy library's exceptions, at its bottom: every module of the library (declarations,
sources, the meter, the settings) may raise them without importing another."""
from __future__ import annotations

__all__ = ["SiteSettingError", "SourceUnavailable"]


class SourceUnavailable(RuntimeError):
    """Raised by ``open()`` when a source cannot work here (no device, no permission, no URL).

    The message says why, in words a user can act on; it never contains credentials.
    """


class SiteSettingError(ValueError):
    """A site's ``ENERGY_*`` variable holds a value that cannot be right (the message names the
    variable and the value): the trial stops before it starts, rather than run unmeasured."""
