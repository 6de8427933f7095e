"""Atomic writes: a file is written under a temporary name, then renamed into place.

A reader never sees a half-written file: the old content stays until ``os.replace`` swaps
in the new one in one step. Temporary names carry ``.tmp-<pid>`` so leftovers of a killed
process are recognisable (:func:`remove_stale_temps`). On any error (a full disk, no
permission) the temporary file is removed and the error is raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from tfp_nice._internal import faults

__all__ = [
    "TMP_MARK",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "remove_stale_temps",
    "replace_directory",
]

#: Every temporary name contains this marker.
TMP_MARK = ".tmp-"


def _tmp_name(path: str, suffix: str = "") -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_MARK}{os.getpid()}{suffix}")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path to write; on success it is renamed to ``path``.

    ``suffix`` keeps a file extension some writers insist on (``".keras"``, ``".png"``).
    The temporary file (or directory) is removed if the block raises.
    """
    path = os.fspath(path)
    tmp = _tmp_name(path, suffix)
    try:
        faults.point("write", path=path)
        yield tmp
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary directory path to fill; on success it replaces ``path`` whole
    (see :func:`replace_directory`); on error it is removed and ``path`` is untouched."""
    path = os.fspath(path)
    tmp = _tmp_name(path)
    try:
        faults.point("write", path=path)
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, on_error: Callable[[str], Exception]) -> Any:
    """The JSON content of ``path``; ``on_error(reason)`` is raised if it is unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise on_error("the file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise on_error(f"it cannot be read ({e.__class__.__name__}: {e})") from None
    except ValueError as e:
        raise on_error(f"it is not valid JSON ({e})") from None


def replace_directory(new: str, final: str) -> None:
    """Moves the directory ``new`` to ``final``, replacing ``final`` if it exists.

    The old directory is renamed aside first and removed only after the new one is in place.
    """
    old = _tmp_name(final, ".old")
    if os.path.lexists(final):
        os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(final):
            os.replace(old, final)
        raise
    _remove(old)
    _fsync_dir(os.path.dirname(final))


def remove_stale_temps(directory: str, recursive: bool = False) -> list[str]:
    """Removes temporary files of processes that no longer run; returns their paths."""
    removed = []
    walker = os.walk(directory) if recursive else [(directory, [], _listdir(directory))]
    for root, dirs, files in walker:
        for name in list(files) + list(dirs):
            pid = _tmp_pid(name)
            if pid is not None and not _alive(pid):
                _remove(os.path.join(root, name))
                removed.append(os.path.join(root, name))
    return removed


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _tmp_pid(name: str) -> int | None:
    if TMP_MARK not in name:
        return None
    digits = ""
    for c in name.split(TMP_MARK, 1)[1]:
        if not c.isdigit():
            break
        digits += c
    return int(digits) if digits else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass
