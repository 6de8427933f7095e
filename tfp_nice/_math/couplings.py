"""Couplings (additive, affine, diagonal scale) and the scale stabilisers (raw ``h`` -> ``s``)."""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = [
    "STABILISERS",
    "additive_forward",
    "additive_inverse",
    "affine_forward",
    "affine_inverse",
    "broadcast_like",
    "check_stabiliser",
    "diagonal_scale_forward",
    "diagonal_scale_inverse",
    "diagonal_scale_log_det",
    "stabilise_log_scale",
]


#: Names accepted by :func:`stabilise_log_scale`.
STABILISERS = ("exp", "tanh", "sigmoid", "soft_clamp")


def additive_forward(x2: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """NICE / RevNet additive coupling, transformed half: ``y2 = x2 + m(x1)``."""
    return x2 + shift


def additive_inverse(y2: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`additive_forward`: ``x2 = y2 - m(y1)``."""
    return y2 - shift


def broadcast_like(t: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """``t`` broadcast against ``x`` (``t`` itself when the static shapes already agree)."""
    if t.shape.rank is not None and t.shape.as_list() == x.shape.as_list():
        return t
    return tf.broadcast_to(t, tf.broadcast_dynamic_shape(tf.shape(t), tf.shape(x)))


def affine_forward(
    x2: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """RealNVP affine coupling, transformed half.

    ``y2 = x2 * exp(s) + t``; returns ``(y2, fldj)`` with ``fldj = sum(s)`` over
    the last axis (the flattened transformed units). ``t`` and ``s`` broadcast against
    ``x2`` (a ``[1]``-shaped ``s`` counts once per unit in the log-det).
    """
    log_scale = broadcast_like(log_scale, x2)
    y2 = x2 * tf.exp(log_scale) + shift
    return y2, tf.reduce_sum(log_scale, axis=-1)


def affine_inverse(
    y2: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inverse of :func:`affine_forward`: ``x2 = (y2 - t) * exp(-s)``; returns ``(x2, ildj)``."""
    log_scale = broadcast_like(log_scale, y2)
    x2 = (y2 - shift) * tf.exp(-log_scale)
    return x2, -tf.reduce_sum(log_scale, axis=-1)


def diagonal_scale_forward(
    x: tf.Tensor, log_scale: tf.Tensor, event_ndims: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """NICE's final scaling ``y = x * exp(s)``; returns ``(y, fldj)``, ``fldj = sum(s)``.

    ``log_scale`` has the event shape; the log-det is a scalar (it does not
    depend on ``x``) and broadcasts against any batch shape.
    """
    return x * tf.exp(log_scale), diagonal_scale_log_det(log_scale, event_ndims)


def diagonal_scale_log_det(log_scale: tf.Tensor, event_ndims: int) -> tf.Tensor:
    """``log|det d(x * exp(s))/dx| = sum(s)`` over the event axes (a scalar)."""
    return tf.reduce_sum(log_scale, axis=list(range(-event_ndims, 0)))


def diagonal_scale_inverse(
    y: tf.Tensor, log_scale: tf.Tensor, event_ndims: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inverse of :func:`diagonal_scale_forward`: ``x = y * exp(-s)``; returns ``(x, ildj)``."""
    return y * tf.exp(-log_scale), -diagonal_scale_log_det(log_scale, event_ndims)


# --------------------------------------------------------------------------------------------
# Scale stabilisers: raw network output h -> log-scale s.
# --------------------------------------------------------------------------------------------
def check_stabiliser(name: str) -> str:
    """Returns ``name`` if it is a known stabiliser, else raises a ``ValueError``."""
    if name not in STABILISERS:
        raise ValueError(
            f"`scale` must be one of {list(STABILISERS)}. Received: scale={name!r}"
        )
    return name


def stabilise_log_scale(
    h: tf.Tensor,
    name: str,
    tanh_scale: tf.Tensor | None = None,
    clamp: float = 2.0,
) -> tf.Tensor:
    """Maps a conditioner's raw output ``h`` to a log-scale ``s``.

    * ``"exp"``: ``s = h`` (the plain RealNVP equation; can explode).
    * ``"tanh"``: ``s = c * tanh(h)`` with a learned per-unit ``c`` (RealNVP's code).
    * ``"sigmoid"``: ``s = log(sigmoid(h + 2))`` (Glow): scale in ``(0, 1)``,
      ``0.88`` at ``h = 0``, so a zero-initialised coupling starts as a mild contraction.
    * ``"soft_clamp"``: ``s = (2c/pi) * atan(pi h / (2c))`` with ``c = clamp``: ``|s| < c``,
      slope 1 at 0 (like FrEIA's atan clamp, rescaled so small ``h`` pass unchanged).

    Args:
      h: raw conditioner output.
      name: one of :data:`STABILISERS`.
      tanh_scale: the learned ``c`` for ``"tanh"``; broadcast against ``h``.
      clamp: the bound ``c`` for ``"soft_clamp"``.

    Returns:
      The log-scale ``s`` with the shape and dtype of ``h``.
    """
    check_stabiliser(name)
    if name == "exp":
        return h
    if name == "tanh":
        if tanh_scale is None:
            raise ValueError("`tanh_scale` is required for scale='tanh'. Received: None")
        return tf.cast(tanh_scale, h.dtype) * tf.tanh(h)
    if name == "sigmoid":
        return tf.math.log_sigmoid(h + tf.constant(2.0, h.dtype))
    c = tf.constant(clamp, h.dtype)
    return (2.0 / math.pi) * c * tf.atan((math.pi / 2.0) * h / c)
