"""``tf.data`` pipelines: batches of (dequantized) examples for training and evaluation."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_nice import preprocessing
from tfp_nice._internal.checks import check_int
from tfp_nice.data.spec import DataError, DataSpec

__all__ = ["as_dataset"]


def as_dataset(
    x: np.ndarray,
    spec: DataSpec,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of float32 batches of ``x``, dequantized if discrete.

    Training pipelines shuffle (seeded, reshuffled every epoch); all pipelines batch (the last
    batch may be smaller) and prefetch. If ``spec.num_levels`` is not None each value becomes
    ``x + u`` with ``u ~ U[0, 1)`` (uniform dequantization), so batches lie in
    ``[0, num_levels)``: with ``training=True`` the noise is fresh every epoch; with
    ``training=False`` it is one fixed draw per example, a function of the example's values and
    ``seed`` (:func:`tfp_nice.preprocessing.dequantize`, the estimator the serving export uses;
    the same on every iteration, for any ``batch_size`` and order), so evaluation is
    deterministic. In this space
    bits/dim = ``NLL / (spec.num_dims * ln 2)``. Continuous data passes unchanged.

    Args:
      x: ``[N, *spec.event_shape]`` raw values (a split of :func:`load`).
      spec: the dataset's :class:`DataSpec`.
      batch_size: examples per batch.
      training: shuffle and draw fresh noise each epoch (True) or keep order and noise fixed.
      seed: seeds the shuffle and the noise.
      labels: optional int class labels ``[N]``; batches are then ``(x, labels)`` pairs.

    Returns:
      A ``tf.data.Dataset`` of float32 tensors ``[batch, *event_shape]`` (or of
      ``(x, labels)`` pairs, labels int32 ``[batch]``).

    Example:
      >>> from tfp_nice.data import load
      >>> s = load("digits")
      >>> ds = as_dataset(s.test, s.spec, batch_size=100, training=False)
      >>> b = next(iter(ds)).numpy()
      >>> bool((b >= s.test[:100]).all() and (b < s.test[:100] + 1).all())
      True
    """
    if not isinstance(spec, DataSpec):
        raise DataError(f"`spec` must be a DataSpec. Received: spec={spec!r}")
    check_int(batch_size, "batch_size", minimum=1, error=DataError)
    check_int(seed, "seed", minimum=0, error=DataError)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != spec.event_shape or len(x) == 0:
        raise DataError(
            f"`x` must have shape [N >= 1, *{list(spec.event_shape)}] to match `spec`. "
            f"Received: x.shape={list(x.shape)}"
        )
    ds = _examples(x, labels)
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    if spec.num_levels is not None:
        ds = _dequantized(ds, training, seed, len(spec.event_shape))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _dequantized(ds: tf.data.Dataset, training: bool, seed: int,
                 event_ndims: int) -> tf.data.Dataset:
    """Batches of discrete values made continuous: fresh uniform noise per epoch for training,
    the deterministic held-out estimator (the one the serving export uses) otherwise."""
    if training:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        return tf.data.Dataset.zip((ds, seeds.batch(2))).map(
            lambda b, s: _on_x(b, lambda xb: _add_uniform_noise(xb, s)),
            num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda *b: _on_x(b, lambda xb: preprocessing.dequantize(
        xb, seed, event_ndims)), num_parallel_calls=tf.data.AUTOTUNE)


def _examples(x: np.ndarray, labels: np.ndarray | None) -> tf.data.Dataset:
    """The examples (or ``(example, label)`` pairs) one by one."""
    if labels is None:
        return tf.data.Dataset.from_tensor_slices(x)
    labels = np.asarray(labels)
    if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"`labels` must be {len(x)} integers, one per example. "
            f"Received: labels.shape={list(labels.shape)}, dtype {labels.dtype}"
        )
    return tf.data.Dataset.from_tensor_slices((x, labels.astype(np.int32)))


def _on_x(element, fn):
    """Applies ``fn`` to the examples of an element (``x``, ``(x,)`` or an ``(x, labels)`` pair)."""
    if isinstance(element, tuple) and len(element) == 1:
        return fn(element[0])
    if isinstance(element, tuple):
        return (fn(element[0]),) + tuple(element[1:])
    return fn(element)


def _add_uniform_noise(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``x + u``, ``u ~ U[0, 1)`` from a stateless seed, kept strictly below ``x + 1``."""
    u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=tf.float32)
    # float32 rounding can turn x + u into x + 1 for u close to 1; clamp to the float below.
    return tf.minimum(x + u, tf.math.nextafter(x + 1.0, x))
