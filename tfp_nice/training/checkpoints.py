"""Checkpoints a killed run resumes from: model and optimizer state, written atomically.

Each checkpoint is one ``.npz`` built in memory and written under a temporary name, then
renamed (so a full disk or a kill never leaves a half-written checkpoint, and writing needs
no HDF5 library that could crash on ``ENOSPC``). ``checkpoints/epoch-NNNNNN.npz`` holds the
state after ``NNNNNN`` epochs; the two newest are kept, so when the latest is unreadable the
run falls back to the previous one. ``checkpoints/state.json`` records that training is done
and only the outputs remain.

The arrays are the model's variables (``model/0``, ...) and the optimizer's
(``optimizer/0``, ...); ``meta`` is a JSON string with the variables' paths and shapes and
what the training loop needs to go on (epoch, training time, best validation loss).
"""

from __future__ import annotations

import glob
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfp_nice._internal import files
from tfp_nice.training.run_dir import RunError

__all__ = [
    "CheckpointError",
    "latest_checkpoints",
    "load_weights",
    "read_state",
    "restore",
    "save",
    "save_weights",
    "write_state",
]

_KEEP = 2


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (unreadable, or not this model's)."""


def _pack(groups: dict[str, Sequence], meta: dict) -> bytes:
    arrays, manifest = {}, {}
    for group, variables in groups.items():
        manifest[group] = [[getattr(v, "path", getattr(v, "name", str(i))), list(v.shape)]
                           for i, v in enumerate(variables)]
        for i, v in enumerate(variables):
            arrays[f"{group}/{i}"] = np.asarray(v.numpy())
    meta = dict(meta, manifest=manifest)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack(path: str, groups: dict[str, Sequence]) -> dict:
    """Checks ``path`` against ``groups`` and assigns its arrays; returns its meta."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        manifest = meta["manifest"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"not a readable checkpoint ({type(e).__name__}: {e})") from None
    for group, variables in groups.items():
        _check_group(group, variables, manifest, arrays)
    for group, variables in groups.items():
        for i, v in enumerate(variables):
            v.assign(arrays[f"{group}/{i}"])
    return meta


def _check_group(group: str, variables: Sequence, manifest: dict, arrays: dict) -> None:
    shapes = [tuple(s) for _, s in manifest.get(group, [])]
    want = [tuple(v.shape) for v in variables]
    if shapes != want:
        raise CheckpointError(
            f"its {group} has {len(shapes)} variables of other shapes than this model's "
            f"{len(want)} (a checkpoint of another model?)")
    for i in range(len(variables)):
        a = arrays.get(f"{group}/{i}")
        if a is None or tuple(a.shape) != want[i]:
            raise CheckpointError(f"array {group}/{i} is missing or has the wrong shape")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise CheckpointError(f"variable {manifest[group][i][0]!r} holds NaN or Inf")


def _groups(model, with_optimizer: bool) -> dict:
    groups = {"model": list(model.variables)}
    if with_optimizer and getattr(model, "optimizer", None) is not None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        groups["optimizer"] = list(model.optimizer.variables)
    return groups


def save(directory: str, epoch: int, model, meta: dict[str, Any]) -> str:
    """Writes ``directory/epoch-<epoch>.npz`` (model + optimizer) and keeps the newest two."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"epoch-{epoch:06d}.npz")
    files.atomic_write_bytes(path, _pack(_groups(model, True), dict(meta, epoch=epoch)))
    for old in latest_checkpoints(directory)[_KEEP:]:
        os.remove(old)
    return path


def latest_checkpoints(directory: str) -> list[str]:
    """Checkpoint files of ``directory``, newest first."""
    return sorted(glob.glob(os.path.join(directory, "epoch-[0-9]*.npz")), reverse=True)


def restore(directory: str, model, warn: Callable[[str], None]) -> dict | None:
    """Restores the newest usable checkpoint into ``model`` (and its optimizer).

    When the newest is unusable and an older one is, one ``warn`` line names the file that
    was skipped. Returns the checkpoint's meta, or ``None`` when there is no checkpoint.

    Raises:
      RunError: ``no_checkpoint`` (naming the newest file and what is wrong with it) when
        checkpoints exist but none is usable.
    """
    problems = []
    for path in latest_checkpoints(directory):
        try:
            meta = _unpack(path, _groups(model, True))
        except CheckpointError as e:
            problems.append((path, e))
            continue
        for bad, e in problems:
            warn(f"checkpoint {bad} is unusable ({e}); resuming from {os.path.basename(path)}")
        return meta
    if problems:
        raise RunError("no_checkpoint", directory, f"{problems[0][0]}: {problems[0][1]}")
    return None


def save_weights(path: str, model, meta: dict[str, Any] | None = None) -> None:
    """Writes the model's variables (no optimizer) to ``path`` (``.npz``) atomically."""
    files.atomic_write_bytes(path, _pack(_groups(model, False), meta or {}))


def load_weights(path: str, model) -> dict:
    """Loads :func:`save_weights`' file into ``model``; ``RunError("corrupt")`` if unusable."""
    try:
        return _unpack(path, _groups(model, False))
    except CheckpointError as e:
        raise RunError("corrupt", path, str(e)) from None


def write_state(directory: str, **state: Any) -> None:
    """Records the run's phase (``state.json`` in the checkpoint directory) atomically."""
    os.makedirs(directory, exist_ok=True)
    files.atomic_write_json(os.path.join(directory, "state.json"), state)


def read_state(directory: str) -> dict:
    """The recorded phase, ``{}`` when there is none; ``RunError("corrupt")`` if unreadable."""
    path = os.path.join(directory, "state.json")
    if not os.path.exists(path):
        return {}
    state = files.read_json(path, lambda why: RunError("corrupt", path, why))
    if not isinstance(state, dict) or not isinstance(state.get("epochs"), int):
        raise RunError("corrupt", path, f"expected an object with an int 'epochs', found {state!r}")
    return state
