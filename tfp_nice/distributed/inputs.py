"""Global batches split across replicas deterministically, so every worker agrees on the data.

Every worker builds the same pipeline of *global* batches (same arrays, same seed) and keeps
only its replicas' share: with ``R`` replicas in sync and a global batch of ``n`` examples,
replica ``r`` gets rows ``[r·n // R, (r+1)·n // R)``. Each share travels with ``n``, so a
replica's loss ``Σ_{i ∈ share} nll_i / n`` summed over replicas is exactly the mean NLL of
the global batch (also for a smaller last batch), as in single-device training with the
same global batch.

Arrays are shuffled per epoch by a permutation drawn from ``(seed, epoch)``: the order of an
epoch does not depend on how many epochs this process ran before, so a resumed run sees the
batches an uninterrupted run would have seen.

Example:
  >>> import numpy as np
  >>> ds = epoch_dataset(np.arange(10.0)[:, None], batch_size=4, shuffle=False, seed=0, epoch=0)
  >>> [int(b.shape[0]) for b in ds]
  [4, 4, 2]
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfp_nice._internal.checks import check_int

__all__ = ["distribute_global_batches", "epoch_dataset", "num_batches", "replica_shares"]


def _is_dataset(x) -> bool:
    return isinstance(x, tf.data.Dataset)


def epoch_dataset(x, batch_size: int | None, shuffle: bool, seed: int, epoch: int,
                  arg: str = "x") -> tf.data.Dataset:
    """The global batches of one epoch: ``x`` itself if it is a ``tf.data.Dataset``, else
    ``x`` (optionally permuted by ``(seed, epoch)``) in batches of ``batch_size``.

    A dataset must yield global batches (``[batch, *event]`` tensors, or tuples whose first
    item is one); its own shuffling must be seeded identically on every worker.

    Raises:
      TypeError: if ``x`` is neither an array nor a dataset.
    """
    if _is_dataset(x):
        if isinstance(x.element_spec, (tuple, list)):
            x = x.map(lambda *items: items[0])
        return x
    if not isinstance(x, (np.ndarray, tf.Tensor)):
        raise TypeError(
            f"`{arg}` must be a NumPy array, a tensor or a tf.data.Dataset of batches. "
            f"Received: {arg} of type {type(x).__name__}"
        )
    batch_size = check_int(32 if batch_size is None else batch_size, "batch_size")
    x = np.asarray(x)
    if shuffle:
        x = x[np.random.default_rng([seed, epoch]).permutation(len(x))]
    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size)


def num_batches(x, batch_size: int | None) -> int | None:
    """Batches per epoch, or ``None`` if unknown (a dataset of unknown cardinality)."""
    if _is_dataset(x):
        n = int(x.cardinality())
        return n if n >= 0 else None
    return math.ceil(len(x) / (32 if batch_size is None else batch_size))


def replica_shares(dataset: tf.data.Dataset, num_replicas: int, first_replica: int,
                   local_replicas: int) -> tf.data.Dataset:
    """``(share, n)`` for replicas ``first_replica ..`` ``+ local_replicas - 1`` of each batch.

    Replica ``r`` of ``num_replicas`` gets rows ``[r·n // R, (r+1)·n // R)`` of a batch of
    ``n``: shares differ by at most one row, and a batch smaller than ``R`` leaves some
    shares empty (they add nothing to the loss).

    Example:
      >>> ds = tf.data.Dataset.from_tensor_slices(tf.range(5.0)).batch(5)
      >>> [(s.numpy().tolist(), int(n)) for s, n in replica_shares(ds, 2, 0, 2)]
      [([0.0, 1.0], 5), ([2.0, 3.0, 4.0], 5)]
    """

    def shares(batch):
        n = tf.shape(batch, out_type=tf.int64)[0]

        def share(j):
            r = first_replica + j
            return batch[r * n // num_replicas : (r + 1) * n // num_replicas], n

        return tf.data.Dataset.range(local_replicas).map(share)

    return dataset.flat_map(shares)


def distribute_global_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """``dataset`` of global batches as a distributed dataset of ``(share, n)`` per replica.

    Uses ``strategy.distribute_datasets_from_function``: worker ``w`` (input pipeline ``w``)
    with ``L`` local replicas yields, for each global batch, the shares of replicas
    ``w·L .. w·L + L - 1`` (:func:`replica_shares`); the strategy hands them to its local
    replicas in turn.
    """

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        shares = replica_shares(dataset, ctx.num_replicas_in_sync,
                                ctx.input_pipeline_id * local, local)
        return shares.prefetch(tf.data.AUTOTUNE)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
