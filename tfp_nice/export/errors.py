"""The error an export raises when it cannot be written as asked."""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(ValueError):
    """An export cannot be written as asked (bad destination, existing version, bad args).

    Attributes:
      argument: the name of the offending argument of
        :func:`~tfp_nice.export.save_for_serving` (``"version"``, ``"data"``, ...), or
        ``None``; a command-line front end maps it to its flag.
    """

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument
