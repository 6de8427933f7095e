"""Fault injection for the crash-safety tests: die, fail or diverge at a named point on request.

The test suite sets ``TFP_NICE_FAULT`` in a subprocess to one of:

* ``kill:NAME`` — the process ``SIGKILL``s itself when it reaches :func:`point` ``NAME``
  (``kill:NAME@K``: only when the point's ``epoch`` is ``K``);
* ``enospc:NAME`` / ``eacces:NAME`` — ``OSError(ENOSPC)`` / ``OSError(EACCES)`` is raised
  there (for the ``write`` point, ``enospc:write:TEXT`` fails only writes whose path contains
  ``TEXT``);
* ``nan:NAME@K`` — :func:`point` returns ``True`` (at epoch ``K``), and the caller behaves
  as if its value were NaN.

Unset (always, outside the tests), :func:`point` does nothing and returns ``False``.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["point"]

_ENV = "TFP_NICE_FAULT"
_ERRORS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES}


def point(name: str, epoch: int | None = None, path: str | None = None) -> bool:
    """A named place where a test may kill the process, fail a write or fake a NaN."""
    spec = os.environ.get(_ENV)
    if not spec:
        return False
    action, _, target = spec.partition(":")
    where, _, arg = target.partition("@") if action in ("kill", "nan") else target.partition(":")
    if where != name:
        return False
    matches = not arg or (epoch is not None and arg == str(epoch)) or (
        path is not None and action in _ERRORS and arg in path)
    if not matches:
        return False
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action in _ERRORS:
        raise OSError(_ERRORS[action], os.strerror(_ERRORS[action]), path or name)
    return action == "nan"
