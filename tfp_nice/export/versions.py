"""Versioned directories in TF Serving's layout ``export_dir/VERSION/``, written atomically.

A version is written under a hidden temporary name beside the versions (TF Serving watches
only numeric names, so it never sees it) and renamed into place in one step; on any error
the temporary directory is removed (and a base directory this call created). Leftovers of
a killed export are removed by the next one (:func:`tfp_nice._internal.files.remove_stale_temps`).
Versions are never overwritten. TF Serving reads versions as int64 but its REST and
``model_version_policy`` paths are int32-safe only below ``2**31``: :data:`MAX_VERSION`.

Example:
  >>> import tempfile
  >>> next_version(tempfile.mkdtemp())
  1
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable

from tfp_nice._internal import checks, files
from tfp_nice.export.errors import ExportError

__all__ = ["MAX_VERSION", "check_version", "next_version", "versions", "write_version"]

MAX_VERSION = 2**31 - 1
_VERSION_RE = re.compile(r"^[0-9]+$")


def versions(export_dir: str | os.PathLike) -> list[int]:
    """The version numbers present in ``export_dir``, sorted (none if it does not exist)."""
    try:
        names = os.listdir(export_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if _VERSION_RE.match(n))


def next_version(export_dir: str | os.PathLike) -> int:
    """The version :func:`~tfp_nice.export.save_for_serving` would write next: 1 + the
    largest, or 1."""
    present = versions(export_dir)
    return present[-1] + 1 if present else 1


def _exists_error(version: int, export_dir: str) -> ExportError:
    return ExportError(
        f"Version {version} already exists in {export_dir!r}; versions are never "
        f"overwritten. Choose another version (next free: {next_version(export_dir)})",
        argument="version")


def check_version(version, export_dir: str) -> int | None:
    """``version`` as an int in ``[1, MAX_VERSION]`` that ``export_dir`` does not hold yet."""
    if version is None:
        return None
    version = checks.check_int(version, "version", 1, MAX_VERSION,
                               error=lambda message: ExportError(message, argument="version"))
    if os.path.exists(os.path.join(export_dir, str(version))):
        raise _exists_error(version, export_dir)
    return version


def write_version(export_dir: str, version: int | None, write: Callable[[str], None]) -> str:
    """Calls ``write(tmp_dir)``, then renames ``tmp_dir`` to ``export_dir/VERSION``.

    ``version=None`` takes :func:`next_version` at the time of the rename. Returns the final
    path.
    """
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ExportError(f"Export path {export_dir!r} exists and is not a directory",
                          argument="export_dir")
    created_base = not os.path.isdir(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    files.remove_stale_temps(export_dir)
    tmp = os.path.join(export_dir, f".export{files.TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(tmp)
        write(tmp)
        version = next_version(export_dir) if version is None else version
        if version > MAX_VERSION:
            raise ExportError(f"`version` must be <= {MAX_VERSION}. Received: version={version}",
                              argument="version")
        final = os.path.join(export_dir, str(int(version)))
        if os.path.exists(final):
            raise _exists_error(version, export_dir)
        os.rename(tmp, final)  # atomic: TF Serving never sees a half-written version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_base:
            try:
                os.rmdir(export_dir)  # only if still empty
            except OSError:
                pass
        raise
    return final
