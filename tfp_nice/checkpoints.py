"""Training state on disk: lists of arrays in ``.npz`` files, written atomically, checked on read.

A checkpoint is the values of a model's variables (and its optimizer's) in a fixed order
(:func:`tfp_nice.distributed.training_variables`), plus a small JSON ``meta`` dict. Files are
built in memory and written under a temporary name, then renamed, so a kill or a full disk
never leaves a half-written checkpoint (and no HDF5 writer runs, which can crash on
``ENOSPC``). Reading checks every array against the shapes expected and for NaN/Inf before
anything is assigned.

* :func:`write_arrays` / :func:`read_arrays` — one file;
* :class:`NpzCheckpoint` — a directory of ``epoch-NNNNNN.npz`` files (the newest ``keep``
  kept) that falls back to an older file when the newest is unusable; it is the
  ``checkpoint`` of :func:`tfp_nice.distributed.fit` and of ``tfp-nice train``.

Example:
  >>> import numpy as np, tempfile
  >>> ckpt = NpzCheckpoint(tempfile.mkdtemp())
  >>> ckpt.save(3, [np.zeros(2), np.ones([2, 2])], meta={"train_seconds": 1.5})
  >>> epoch, values = ckpt.restore()
  >>> epoch, values[1].shape, ckpt.last_meta["train_seconds"]
  (3, (2, 2), 1.5)
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfp_nice._internal import files
from tfp_nice._internal.checks import check_int

__all__ = ["CheckpointError", "NpzCheckpoint", "read_arrays", "write_arrays"]

_NAME = re.compile(r"^epoch-(\d+)\.npz$")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, or not the expected variables.

    Attributes:
      path: the file (or, when no file of a directory is usable, the newest one).
    """

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def write_arrays(path: str, values: Sequence[Any], meta: dict | None = None) -> None:
    """Writes ``values`` (arrays ``v0, v1, ...``) and ``meta`` (JSON) to ``path`` atomically."""
    arrays = {f"v{i}": np.asarray(v) for i, v in enumerate(values)}
    arrays["meta"] = np.frombuffer(json.dumps(meta or {}).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.atomic_write_bytes(path, buffer.getvalue())


def read_arrays(path: str, shapes: Sequence[Sequence[int]] | None = None
                ) -> tuple[list[np.ndarray], dict]:
    """``(values, meta)`` of :func:`write_arrays`' file, checked against ``shapes``.

    Raises:
      CheckpointError: unreadable file, a missing array, another count or shape than
        ``shapes``, or a NaN/Inf value.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(path, f"not a readable checkpoint ({type(e).__name__}: {e})"
                              ) from None
    values = [arrays.get(f"v{i}") for i in range(len(arrays))]
    if any(v is None for v in values) or not isinstance(meta, dict):
        raise CheckpointError(path, "its arrays are not numbered v0, v1, ... with a meta dict")
    if shapes is not None:
        got, want = [tuple(v.shape) for v in values], [tuple(s) for s in shapes]
        if got != want:
            raise CheckpointError(
                path, f"it holds {len(got)} arrays of other shapes than the {len(want)} "
                      "variables expected (a checkpoint of another model?)")
    for i, v in enumerate(values):
        if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
            raise CheckpointError(path, f"array v{i} holds NaN or Inf values")
    return values, meta


class NpzCheckpoint:
    """A directory of checkpoints ``epoch-NNNNNN.npz``; the newest ``keep`` are kept.

    Implements the ``save(epoch, values)`` / ``restore()`` protocol of
    :func:`tfp_nice.distributed.fit` (there, only the chief writes).

    Args:
      directory: where the files go (created on the first save).
      keep: how many of the newest checkpoints to keep (>= 1; 2 lets a run fall back).
      shapes: the expected shape of each value; :meth:`restore` skips files that differ.
      warn: called with one line when :meth:`restore` skips an unusable newer file.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2,
                 shapes: Sequence[Sequence[int]] | None = None,
                 warn: Callable[[str], None] | None = None):
        self.directory = os.fspath(directory)
        self.keep = check_int(keep, "keep")
        self.shapes = shapes
        self.warn = warn
        self.last_meta: dict = {}

    def epochs(self) -> list[int]:
        """The epochs of the checkpoints present, oldest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def path(self, epoch: int) -> str:
        """The file of the checkpoint after ``epoch`` epochs."""
        return os.path.join(self.directory, f"epoch-{int(epoch):06d}.npz")

    def save(self, epoch: int, values: Sequence[Any], meta: dict | None = None) -> None:
        """Writes the state after ``epoch`` epochs; removes checkpoints beyond ``keep``."""
        os.makedirs(self.directory, exist_ok=True)
        write_arrays(self.path(epoch), values, dict(meta or {}, epoch=int(epoch)))
        for old in self.epochs()[: -self.keep]:
            os.remove(self.path(old))

    def restore(self) -> tuple[int, list[np.ndarray]] | None:
        """The newest usable ``(epoch, values)``; ``None`` when there is no checkpoint.

        An unusable newer file is skipped with one ``warn`` line; its ``meta`` is in
        :attr:`last_meta`.

        Raises:
          CheckpointError: naming the newest file, when checkpoints exist but none is usable.
        """
        problems = []
        for epoch in reversed(self.epochs()):
            try:
                values, meta = read_arrays(self.path(epoch), self.shapes)
            except CheckpointError as e:
                problems.append(e)
                continue
            for e in problems:
                if self.warn is not None:
                    self.warn(f"checkpoint {e.path} is unusable ({e.reason}); resuming from "
                              f"{os.path.basename(self.path(epoch))}")
            self.last_meta = meta
            return epoch, values
        if problems:
            raise problems[0]
        return None
