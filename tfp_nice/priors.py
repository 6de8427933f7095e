"""Base distributions ("priors") for flows, as one-liners on ``tfd``.

* :func:`standard_normal` — ``N(0, I)`` (RealNVP, Glow);
* :func:`standard_logistic` — the factorised standard logistic NICE uses [1] §3.4,
  ``log p(h) = -sum(log(1 + exp(h)) + log(1 + exp(-h)))``.

Example:
  >>> standard_logistic([4]).event_shape
  TensorShape([4])
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = ["standard_normal", "standard_logistic", "get"]


def _shape(event_shape: int | Sequence[int]) -> list[int]:
    dims = [event_shape] if isinstance(event_shape, int) else event_shape
    try:
        shape = [int(d) for d in dims]
    except (TypeError, ValueError):
        shape = []
    if not shape or any(d < 1 for d in shape):
        raise ValueError(
            "`event_shape` must be a non-empty sequence of positive ints. "
            f"Received: event_shape={event_shape!r}"
        )
    return shape


def standard_normal(event_shape: int | Sequence[int], dtype=tf.float32) -> tfd.Distribution:
    """``N(0, I)`` over ``event_shape``."""
    return tfd.Sample(
        tfd.Normal(tf.constant(0.0, dtype), tf.constant(1.0, dtype)), _shape(event_shape),
        name="standard_normal",
    )


def standard_logistic(event_shape: int | Sequence[int], dtype=tf.float32) -> tfd.Distribution:
    """The factorised standard logistic over ``event_shape`` (NICE's prior)."""
    return tfd.Sample(
        tfd.Logistic(tf.constant(0.0, dtype), tf.constant(1.0, dtype)), _shape(event_shape),
        name="standard_logistic",
    )


def get(name: str, event_shape: int | Sequence[int], dtype=tf.float32) -> tfd.Distribution:
    """A prior by name: ``"normal"`` or ``"logistic"``."""
    table = {"normal": standard_normal, "logistic": standard_logistic}
    if name not in table:
        raise ValueError(f"`prior` must be one of {sorted(table)}. Received: prior={name!r}")
    return table[name](event_shape, dtype)
