"""The error of the packager."""


class PackageError(Exception):
    """The package cannot be built as asked; the message names the file or value at fault."""

