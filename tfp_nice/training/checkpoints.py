"""A run's checkpoints: the state a killed run resumes from, and its best weights.

``checkpoints/epoch-NNNNNN.npz`` (a :class:`tfp_nice.checkpoints.NpzCheckpoint`) holds
``model.variables + optimizer.variables`` after ``NNNNNN`` epochs, with the training time and
best epoch in its meta; the two newest are kept, so when the latest is unreadable the run falls
back to the previous one. ``checkpoints/state.json`` records that training is done and only
the outputs remain. ``best.weights.npz`` holds the model's variables with the lowest
validation loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tfp_nice._internal import files
from tfp_nice.checkpoints import CheckpointError, NpzCheckpoint, read_arrays, write_arrays
from tfp_nice.distributed.state import read_state, training_variables, write_state
from tfp_nice.training.run_dir import RunError

__all__ = ["load_weights", "read_state_file", "restore", "run_checkpoint", "save",
           "save_weights", "write_state_file"]


def run_checkpoint(directory: str, model, warn: Callable[[str], None] | None = None
                   ) -> NpzCheckpoint:
    """The run's checkpoint store, expecting ``model``'s training variables."""
    shapes = [tuple(v.shape) for v in training_variables(model)]
    return NpzCheckpoint(directory, keep=2, shapes=shapes, warn=warn)


def save(directory: str, epoch: int, model, meta: dict[str, Any]) -> None:
    """Writes the state of ``model`` (and its optimizer) after ``epoch`` epochs."""
    run_checkpoint(directory, model).save(epoch, read_state(model), meta)


def restore(directory: str, model, warn: Callable[[str], None]) -> dict | None:
    """Restores the newest usable checkpoint into ``model``; returns its meta (``None``: there
    is no checkpoint). An unusable newer file is skipped with one ``warn`` line.

    Raises:
      RunError: ``no_checkpoint`` (naming the newest file) when none is usable.
    """
    store = run_checkpoint(directory, model, warn)
    try:
        found = store.restore()
    except CheckpointError as e:
        raise RunError("no_checkpoint", directory, str(e)) from None
    if found is None:
        return None
    write_state(model, found[1])
    return store.last_meta


def save_weights(path: str, model, meta: dict[str, Any] | None = None) -> None:
    """Writes the model's variables (no optimizer) to ``path`` (``.npz``) atomically."""
    write_arrays(path, [v.numpy() for v in model.variables], meta)


def load_weights(path: str, model) -> dict:
    """Loads :func:`save_weights`' file into ``model``; ``RunError("corrupt")`` if unusable."""
    try:
        values, meta = read_arrays(path, [tuple(v.shape) for v in model.variables])
    except CheckpointError as e:
        raise RunError("corrupt", path, e.reason) from None
    for v, value in zip(model.variables, values):
        v.assign(value)
    return meta


def write_state_file(directory: str, **state: Any) -> None:
    """Records the run's phase (``state.json`` in the checkpoint directory) atomically."""
    os.makedirs(directory, exist_ok=True)
    files.atomic_write_json(os.path.join(directory, "state.json"), state)


def read_state_file(directory: str) -> dict:
    """The recorded phase, ``{}`` when there is none; ``RunError("corrupt")`` if unreadable."""
    path = os.path.join(directory, "state.json")
    if not os.path.exists(path):
        return {}
    state = files.read_json(path, lambda why: RunError("corrupt", path, why))
    if not isinstance(state, dict) or not isinstance(state.get("epochs"), int):
        raise RunError("corrupt", path, f"expected an object with an int 'epochs', found {state!r}")
    return state
