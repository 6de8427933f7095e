"""``fit`` for flows under any ``tf.distribute`` strategy, ``MultiWorkerMirroredStrategy`` included.

Keras 3 ``Model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585:
``ValueError: Attempt to convert a value (PerReplica...)``). :func:`fit` is the same contract
on a custom step: ``strategy.run`` of a ``tf.function`` in which replica ``r`` computes

  loss_r = Σ_{i ∈ share_r} nll_i / n  +  Σ model.losses / R

for its share of a global batch of ``n`` examples (``R`` replicas), so ``Σ_r loss_r`` is the
batch's mean NLL exactly as Keras' ``compute_loss`` scales it; the model's own optimizer
all-reduces (sums) the gradients and applies them. Logged ``loss`` is the running mean over
the epoch weighted by batch size and ``val_loss`` the mean NLL over the validation set, as
``fit`` reports them; Keras callbacks get the same calls in the same order; the return value
is a ``keras.callbacks.History``.

Multi-worker rules: every worker runs the same program with the same data and seed; the
chief alone saves checkpoints (writers of other files should use
:func:`tfp_nice.distributed.output_dir`); ``model.stop_training`` set on any worker stops all
of them at the same step.

Example:
  >>> import numpy as np, tfp_nice as tn
  >>> model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
  >>> model.compile(optimizer="adam")
  >>> x = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
  >>> history = fit(model, x, batch_size=64, epochs=2, validation_data=x[:64], verbose=0)
  >>> sorted(history.history), history.epoch
  (['loss', 'val_loss'], [0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfp_nice._internal import compat
from tfp_nice._internal.checks import check_int
from tfp_nice.distributed import inputs
from tfp_nice.distributed.cluster import is_chief
from tfp_nice.distributed.state import Checkpointer, read_state, restore_from_chief

__all__ = ["fit"]

_SUM = tf.distribute.ReduceOp.SUM


def fit(model, x, *, batch_size: int | None = None, epochs: int = 1, initial_epoch: int = 0,
        validation_data=None, validation_batch_size: int | None = None,
        callbacks: Sequence[keras.callbacks.Callback] | None = None, shuffle: bool = True,
        seed: int = 0, verbose: int | str = "auto", checkpoint: Checkpointer | None = None,
        strategy: tf.distribute.Strategy | None = None, jit_compile: bool | None = None
        ) -> keras.callbacks.History:
    """Trains ``model`` by maximum likelihood like ``model.fit(x, ...)``, under any strategy.

    Args:
      model: a compiled :class:`tfp_nice.FlowModel` (or any Keras model whose ``call(x)`` is
        a per-example loss) created under ``strategy.scope()``.
      x: training data: an array (batched by ``batch_size``, shuffled per epoch by a
        permutation of ``(seed, epoch)`` if ``shuffle``) or a ``tf.data.Dataset`` of
        *global* batches (tuples: the first item), identical on every worker.
      batch_size: global batch size for arrays (default 32), split across all replicas.
      epochs: train until this epoch index (as in ``fit``).
      initial_epoch: epoch to start from; a restored checkpoint or a callback that moves
        Keras' initial epoch (``BackupAndRestore``) can move it later.
      validation_data: array or dataset evaluated after each epoch (``val_loss``).
      validation_batch_size: its global batch size (default ``batch_size``).
      callbacks: Keras callbacks; a ``History`` is added and returned.
      shuffle: shuffle array data each epoch.
      seed: the shuffling seed; the same on every worker.
      verbose: 0, 1, 2 or ``"auto"`` (1); progress is printed on the chief only.
      checkpoint: a :class:`~tfp_nice.distributed.state.Checkpointer` (e.g.
        :class:`~tfp_nice.distributed.NpzCheckpoint`): the chief's newest checkpoint is
        restored on every worker before training, and the chief saves one after each epoch.
      strategy: default ``model.distribute_strategy``.
      jit_compile: XLA-compile the step; default the model's ``jit_compile`` with one
        replica, else ``False`` (XLA cannot reach mirrored variables on other devices).

    Returns:
      The ``keras.callbacks.History`` of this call (also ``model.history``).

    Raises:
      ValueError: if the model is not compiled, was not built under ``strategy``, or an
        argument is out of range (named with the value received).
    """
    epochs = check_int(epochs, "epochs", minimum=0)
    initial_epoch = check_int(initial_epoch, "initial_epoch", minimum=0)
    seed = check_int(seed, "seed", minimum=0)
    strategy = strategy if strategy is not None else model.distribute_strategy
    _check_model(model, strategy)
    steps, restored = _prepare(model, x, strategy, batch_size, shuffle, seed, initial_epoch,
                               checkpoint, jit_compile)
    history = keras.callbacks.History()
    verbose = 1 if verbose == "auto" else verbose
    cbs = keras.callbacks.CallbackList(
        [*(callbacks or []), history], add_history=False,
        add_progbar=bool(verbose) and is_chief(strategy), verbose=verbose, epochs=epochs,
        steps=inputs.num_batches(x, batch_size), model=model)
    model.stop_training = False
    cbs.on_train_begin()
    logs = None
    for epoch in range(max(initial_epoch, restored or 0, compat.keras_initial_epoch(model) or 0),
                       epochs):
        logs = _epoch(steps, cbs, epoch, inputs.epoch_dataset(x, batch_size, shuffle, seed, epoch),
                      validation_data, validation_batch_size or batch_size, seed)
        if checkpoint is not None and is_chief(strategy):
            checkpoint.save(epoch + 1, read_state(model))
        if steps.should_stop():
            break
    if epochs > 0 and isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    cbs.on_train_end(logs)
    return history


def _prepare(model, x, strategy, batch_size, shuffle, seed, initial_epoch, checkpoint,
             jit_compile) -> tuple:
    """Builds the optimizer, restores the chief's checkpoint (or initialises data-dependent
    steps from the first batch); returns the step runner and the restored epoch (or None)."""
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if jit_compile is None:
        jit_compile = bool(model.jit_compile) and strategy.num_replicas_in_sync == 1 and (
            not multi_worker)
    if not model.optimizer.built:
        with strategy.scope():  # its slots must not be created inside the traced step
            model.optimizer.build(model.trainable_variables)
    restored = restore_from_chief(model, checkpoint, strategy) if checkpoint else None
    if restored is None and getattr(model, "_needs_data_init", lambda: False)():
        first = next(iter(inputs.epoch_dataset(x, batch_size, shuffle, seed, initial_epoch)))
        with strategy.scope():
            model.initialize_from_data(first)
    return _Steps(model, strategy, jit_compile, multi_worker), restored


def _epoch(steps, cbs, epoch: int, data, validation_data, validation_batch_size, seed) -> dict:
    """One training epoch and its validation pass, between the epoch callbacks; its logs."""
    cbs.on_epoch_begin(epoch)
    epoch_logs = _run_epoch(steps, cbs, data, train=True)
    if validation_data is not None:
        val = inputs.epoch_dataset(validation_data, validation_batch_size, False, seed, 0,
                                   arg="validation_data")
        cbs.on_test_begin()
        val_logs = _run_epoch(steps, cbs, val, train=False)
        cbs.on_test_end(val_logs)
        epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
    cbs.on_epoch_end(epoch, epoch_logs)
    return epoch_logs


def _check_model(model, strategy) -> None:
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "`model` must be compiled with an optimizer before training "
            "(model.compile(optimizer=...)). Received: model.optimizer=None"
        )
    foreign = [v.path for v in model.variables
               if not strategy.extended.variable_created_in_scope(compat.tf_variable(v))]
    if foreign:
        raise ValueError(
            "`model` must be created under `strategy.scope()` so its variables are "
            f"distributed by it. Received: variable {foreign[0]!r} created outside "
            f"{type(strategy).__name__}'s scope"
        )


def _run_epoch(steps: _Steps, cbs, data: tf.data.Dataset, train: bool) -> dict:
    """One pass over ``data``; returns ``{"loss": mean}`` (weighted by batch size)."""
    begin, end = ((cbs.on_train_batch_begin, cbs.on_train_batch_end) if train
                  else (cbs.on_test_batch_begin, cbs.on_test_batch_end))
    total, count, reg = 0.0, 0, 0.0
    for step, batch in enumerate(inputs.distribute_global_batches(steps.strategy, data)):
        begin(step)
        if train:
            loss, n = steps.train(batch)
            total, count = total + float(loss) * int(n), count + int(n)
            logs = {"loss": total / count}
        else:
            nll_sum, n, reg_t = steps.evaluate(batch)
            total, count, reg = total + float(nll_sum), count + int(n), float(reg_t)
            logs = {"loss": total / max(count, 1) + reg}
        end(step, logs)
        if train and steps.should_stop():
            break
    if not count:
        return {}
    return {"loss": total / count + (0.0 if train else reg)}


class _Steps:
    """The traced train / eval steps of one ``fit`` call and the stop-flag agreement."""

    def __init__(self, model, strategy, jit_compile: bool, multi_worker: bool):
        self.model, self.strategy, self.multi_worker = model, strategy, multi_worker
        self.train = tf.function(self._train, jit_compile=jit_compile)
        self.evaluate = tf.function(self._evaluate, jit_compile=jit_compile)
        self._any = tf.function(self._any_replica)

    def _regularization(self, dtype) -> tf.Tensor:
        losses = self.model.losses
        total = tf.add_n([tf.cast(v, dtype) for v in losses]) if losses else tf.zeros([], dtype)
        return total / tf.cast(self.strategy.num_replicas_in_sync, dtype)

    def _train(self, batch):
        model, optimizer = self.model, self.model.optimizer

        def replica_step(share, n):
            with tf.GradientTape() as tape:
                nll = model(share, training=True)
                loss = tf.reduce_sum(nll) / tf.cast(n, nll.dtype)
                loss = loss + self._regularization(nll.dtype)
                scaled = optimizer.scale_loss(loss)
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            return loss

        loss = self.strategy.reduce(_SUM, self.strategy.run(replica_step, args=batch), axis=None)
        return loss, self.strategy.experimental_local_results(batch[1])[0]

    def _evaluate(self, batch):
        def replica_step(share, n):
            nll = self.model(share, training=False)
            count = tf.cast(tf.shape(nll)[0], tf.int64)
            return tf.reduce_sum(nll), count, self._regularization(nll.dtype)

        out = self.strategy.run(replica_step, args=batch)
        return tuple(self.strategy.reduce(_SUM, t, axis=None) for t in out)

    def _any_replica(self, flag):
        def replica_step(f):
            # tf.identity places the value on the replica's device, which all_reduce needs.
            return tf.distribute.get_replica_context().all_reduce(_SUM, tf.identity(f))

        return self.strategy.run(replica_step, args=(flag,))

    def should_stop(self) -> bool:
        """``model.stop_training`` on any worker (a collective under multi-worker training)."""
        flag = bool(self.model.stop_training)
        if self.multi_worker:
            out = self._any(tf.constant(float(flag)))
            flag = bool(self.strategy.experimental_local_results(out)[0] > 0)
            self.model.stop_training = flag
        return flag
