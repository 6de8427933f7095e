"""The in-graph checks of serving requests: ``InvalidArgumentError`` naming the input.

The signatures declare unknown shapes, so every check runs inside the graph and reads the
same in every loader (TF2, the TF1 session of TF Serving, the C++ ``LoadSavedModel``, which
does not check fed shapes against a placeholder's). Each check returns its tensor behind a
control dependency; messages start with ``tfp_nice serving:`` and name the input.

Example:
  >>> import tensorflow as tf
  >>> rows(tf.zeros([3, 2]), "z", (2,)).shape.as_list()
  [3, 2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

__all__ = [
    "MAX_TEMPERATURE",
    "in_range",
    "integer_levels",
    "max_rows",
    "rows",
    "same_rows",
    "temperatures",
]

#: The largest ``temperature`` the ``sample`` signature accepts (larger values overflow the
#: flow and give NaN samples; 1e38 did).
MAX_TEMPERATURE = 10.0
_PREFIX = "tfp_nice serving: "


def _after(checks: Sequence[tf.Operation], x: tf.Tensor) -> tf.Tensor:
    with tf.control_dependencies(checks):
        return tf.identity(x)


def rows(x: tf.Tensor, arg: str, event_shape: Sequence[int]) -> tf.Tensor:
    """``x`` checked to be ``[batch, *event_shape]`` and, if floating, finite."""
    event_shape = tuple(int(d) for d in event_shape)
    want = len(event_shape) + 1
    shape = tf.shape(x, out_type=tf.int32)
    padded = tf.concat([shape, tf.zeros([want], tf.int32)], 0)[1:want]
    ok = tf.logical_and(tf.equal(tf.size(shape), want),
                        tf.reduce_all(tf.equal(padded, tf.constant(event_shape, tf.int32))))
    dims = "".join(f", {d}" for d in event_shape)
    check = tf.debugging.Assert(ok, [
        f"{_PREFIX}`{arg}` must have shape [batch{dims}] (one row per example). "
        "Received shape:", shape], summarize=16)
    x = tf.ensure_shape(_after([check], x), (None,) + event_shape)
    if not x.dtype.is_floating:
        return x
    finite = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(x)), [
        f"{_PREFIX}`{arg}` must be finite, but it holds NaN or Inf values"])
    return _after([finite], x)


def same_rows(inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``inputs`` checked to have the same number of rows (dimension 0)."""
    names = list(inputs)
    if len(names) < 2:
        return dict(inputs)
    counts = [tf.shape(inputs[n])[0] for n in names]
    ok = tf.reduce_all(tf.equal(tf.stack(counts), counts[0]))
    listed = ", ".join(f"`{n}`" for n in names)
    check = tf.debugging.Assert(ok, [
        f"{_PREFIX}{listed} must have the same number of rows. Received rows:",
        tf.stack(counts)])
    return {n: _after([check], inputs[n]) for n in names}


def max_rows(x: tf.Tensor, arg: str, limit: int, why: str) -> tf.Tensor:
    """``x`` checked to have at most ``limit`` rows."""
    n = tf.shape(x)[0]
    check = tf.debugging.Assert(n <= limit, [
        f"{_PREFIX}`{arg}` must have at most {limit} rows ({why}). Received rows:", n])
    return _after([check], x)


def temperatures(t: tf.Tensor) -> tf.Tensor:
    """``t`` (``[batch]``) checked to be in ``(0, MAX_TEMPERATURE]``."""
    t = rows(t, "temperature", ())
    ok = tf.reduce_all((t > 0.0) & (t <= MAX_TEMPERATURE))
    check = tf.debugging.Assert(ok, [
        f"{_PREFIX}`temperature` must be in (0, {MAX_TEMPERATURE:g}] in every row. "
        "Received min/max:", tf.reduce_min(t), tf.reduce_max(t)])
    return _after([check], t)


def in_range(x: tf.Tensor, arg: str, low: float, high: float, what: str) -> tf.Tensor:
    """``x`` checked to lie in ``[low, high]``."""
    ok = tf.reduce_all((x >= low) & (x <= high))
    check = tf.debugging.Assert(ok, [
        f"{_PREFIX}`{arg}` must hold {what} in [{low:g}, {high:g}] (the data range the model "
        "was trained on). Received min/max:", tf.reduce_min(x), tf.reduce_max(x)])
    return _after([check], x)


def integer_levels(x: tf.Tensor, arg: str, high: float) -> tf.Tensor:
    """``x`` checked to hold whole numbers (raw levels, not dequantized or rescaled)."""
    check = tf.debugging.Assert(tf.reduce_all(tf.equal(x, tf.round(x))), [
        f"{_PREFIX}`{arg}` must hold integer levels (raw pixel values such as 0, 1, ..., "
        f"{high:g}), not dequantized or rescaled values"])
    return _after([check], x)
