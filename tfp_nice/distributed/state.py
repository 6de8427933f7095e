"""Training state (model + optimizer variables, epoch): what to save; restoring it everywhere.

The state of a run is ``model.variables + model.optimizer.variables`` (weights, optimizer
slots, its iteration counter and learning rate) plus the number of finished epochs. Under
``MultiWorkerMirroredStrategy`` only the chief reads and writes checkpoints; after a restart
:func:`restore_from_chief` sends the chief's values to every worker with one all-reduce in
which only the chief's replica 0 contributes (``sum = chief's values``), so workers need no
shared file system and all continue from the same state; :func:`chief_json` sends the
chief's settings (what the run started with) the same way.

The default store is :class:`tfp_nice.checkpoints.NpzCheckpoint` (``epoch-NNNNNN.npz`` files
written atomically, checked on read, the newest ``keep`` kept). Any object with the same
``save(epoch, values)`` / ``restore() -> (epoch, values) | None`` methods can replace it.

Example:
  >>> import keras, numpy as np, tempfile, tfp_nice as tn
  >>> model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
  >>> model.compile(optimizer="adam")
  >>> ckpt = NpzCheckpoint(tempfile.mkdtemp())
  >>> ckpt.save(3, read_state(model))
  >>> restore_from_chief(model, ckpt)
  3
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from tfp_nice.checkpoints import NpzCheckpoint
from tfp_nice.distributed.cluster import is_chief

__all__ = [
    "Checkpointer",
    "NpzCheckpoint",
    "chief_json",
    "read_state",
    "restore_from_chief",
    "training_variables",
    "write_state",
]

class Checkpointer(Protocol):
    """Where :func:`tfp_nice.distributed.fit` keeps the training state (chief only)."""

    def save(self, epoch: int, values: Sequence[np.ndarray]) -> None:
        """Stores ``values`` (in :func:`training_variables` order) after ``epoch`` epochs."""

    def restore(self) -> tuple[int, list[np.ndarray]] | None:
        """The newest ``(epoch, values)``, or ``None`` if there is none."""


def training_variables(model) -> list:
    """``model.variables + model.optimizer.variables``, building the optimizer if needed.

    The order is fixed by the model's structure, so a list of values saved from one process
    restores into the same model built in another.

    Raises:
      ValueError: if the model has not been compiled with an optimizer.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            "`model` must be compiled with an optimizer (model.compile(optimizer=...)) "
            "before its training state exists. Received: model.optimizer=None"
        )
    if not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)
    return list(model.variables) + list(optimizer.variables)


def read_state(model) -> list[np.ndarray]:
    """The values of :func:`training_variables` as NumPy arrays (this process's copy)."""
    return [np.asarray(v.numpy()) for v in training_variables(model)]


def write_state(model, values: Sequence[Any]) -> None:
    """Assigns ``values`` (in :func:`training_variables` order) on this process only.

    Raises:
      ValueError: naming the first mismatch, if the count or a shape differs.
    """
    variables = training_variables(model)
    _check_values(variables, values)
    for v, value in zip(variables, values):
        v.assign(np.asarray(value).astype(v.dtype))


def restore_from_chief(model, checkpoint: Checkpointer, strategy=None) -> int | None:
    """Restores the chief's newest checkpoint on every worker; returns its epoch or ``None``.

    The chief calls ``checkpoint.restore()``; the values and epoch reach the other workers by
    one all-reduce, so every worker must call this at the same point (it is a collective
    operation under ``MultiWorkerMirroredStrategy``). Without a checkpoint nothing changes
    and every worker gets ``None``.
    """
    strategy = strategy if strategy is not None else model.distribute_strategy
    variables = training_variables(model)
    found = checkpoint.restore() if is_chief(strategy) else None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        found = _broadcast(strategy, variables, found)
    if found is None:
        return None
    epoch, values = found
    write_state(model, values)
    return int(epoch)


def chief_json(value: Any, strategy: tf.distribute.Strategy | None = None) -> Any:
    """The chief's ``value`` (anything :func:`json.dumps` writes) on every worker.

    Under ``MultiWorkerMirroredStrategy`` this is a collective: every worker calls it at the
    same point and gets the chief's ``value`` back (each worker's own is ignored), as JSON
    (tuples come back as lists). Any other strategy returns ``value`` itself. A run resumed
    by a later version uses it so that every worker builds the model the chief restores.

    Example:
      >>> chief_json({"filters": 16, "hidden_units": [8]})
      {'filters': 16, 'hidden_units': [8]}
    """
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return value
    data = (np.frombuffer(json.dumps(value).encode(), np.uint8) if is_chief(strategy)
            else np.zeros(0, np.uint8))
    (size,) = _from_replica_0(strategy, [np.array([data.size], np.float64)])
    padded = np.zeros(int(size[0]), np.float64)
    padded[:data.size] = data
    (chief,) = _from_replica_0(strategy, [padded])
    return json.loads(chief.astype(np.uint8).tobytes().decode())


def _broadcast(strategy, variables: list, found) -> tuple[int, list[np.ndarray]] | None:
    """``found`` of the chief on every worker."""
    if found is not None:
        _check_values(variables, found[1])
        epoch = float(found[0])
        values = [np.asarray(x, np.float64) for x in found[1]]
    else:
        epoch, values = -1.0, [np.zeros(v.shape, np.float64) for v in variables]
    out = _from_replica_0(strategy, [np.array([epoch], np.float64), *values])
    if out[0][0] < 0:
        return None
    # float64 holds every float32 / int32 value and step counts below 2**53 exactly.
    return int(out[0][0]), [x.astype(v.dtype) for x, v in zip(out[1:], variables)]


def _from_replica_0(strategy, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Replica 0's (the chief's) float64 ``arrays`` on every worker: a sum over the replicas
    in which only replica 0 adds. Every worker passes arrays of the same shapes."""

    @tf.function
    def reduce(ts):
        def replica_fn(ts):
            ctx = tf.distribute.get_replica_context()
            keep = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float64)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [t * keep for t in ts])

        return strategy.run(replica_fn, args=(ts,))

    tensors = [tf.constant(x, tf.float64) for x in arrays]
    return [strategy.experimental_local_results(t)[0].numpy() for t in reduce(tensors)]


def _check_values(variables: list, values: Sequence[Any]) -> None:
    if len(values) != len(variables):
        raise ValueError(
            f"`values` must hold one array per training variable ({len(variables)}: model + "
            f"optimizer). Received: {len(values)} arrays"
        )
    for i, (v, x) in enumerate(zip(variables, values)):
        if tuple(np.shape(x)) != tuple(v.shape):
            raise ValueError(
                f"`values[{i}]` must have the shape of {v.path} {tuple(v.shape)}. "
                f"Received: values[{i}].shape={tuple(np.shape(x))}"
            )
