"""Image maps: squeeze (a permutation), per-channel affine maps (ActNorm, batch norm) and
Glow's LU-factored invertible 1x1 convolution."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfp_nice._math.shapes import leading_shape, reshape_to

__all__ = [
    "batch_norm_shift_and_log_scale",
    "channel_affine_forward",
    "channel_affine_inverse",
    "channel_affine_log_det",
    "channel_matmul",
    "lu_inverse_weight",
    "lu_weight",
    "moments",
    "squeeze",
    "squeeze_channel_permutation",
    "unsqueeze",
]


# --------------------------------------------------------------------------------------------
# Squeeze: space -> channels (RealNVP [2] §3.6, Fig. 3), a pure permutation of the units.
# --------------------------------------------------------------------------------------------
#: ``(dh, dw)`` order of the 2x2 block positions in RealNVP's ``squeeze_2x2_ordered``: the two
#: positions of one checkerboard colour ((0, 0), (1, 1)) first, then the other ((0, 1), (1, 0)).
_CHECKERBOARD_POSITIONS = ((0, 0), (1, 1), (0, 1), (1, 0))


def squeeze_channel_permutation(channels: int, factor: int, channel_order: str):
    """Gather indices from the ``"channel_major"`` squeeze order to ``channel_order``.

    ``"channel_major"``: output channel ``c * f * f + dh * f + dw`` holds input channel ``c`` at
    block offset ``(dh, dw)`` (RealNVP's ``squeeze_2x2``, Glow's ``squeeze2d``); returns ``None``.
    ``"checkerboard"`` (``factor=2``): RealNVP's ``squeeze_2x2_ordered``: the ``C`` channels of
    offset ``(0, 0)``, then ``(1, 1)``, ``(0, 1)``, ``(1, 0)``, so the first ``2C`` output
    channels are one colour of the input's checkerboard and the last ``2C`` the other.
    """
    if channel_order == "channel_major":
        return None
    f = factor
    return np.array(
        [c * f * f + dh * f + dw for dh, dw in _CHECKERBOARD_POSITIONS for c in range(channels)],
        dtype=np.int32,
    )


def squeeze(x: tf.Tensor, factor: int, permutation=None) -> tf.Tensor:
    """``batch + [H, W, C] -> batch + [H/f, W/f, f*f*C]`` (reshape, transpose, optional gather)."""
    h, w, c = (int(d) for d in x.shape[-3:])
    f = int(factor)
    lead = leading_shape(x, 3)
    y = tf.reshape(x, [-1, h // f, f, w // f, f, c])
    y = tf.transpose(y, [0, 1, 3, 5, 2, 4])
    y = tf.reshape(y, [-1, h // f, w // f, c * f * f])
    if permutation is not None:
        y = tf.gather(y, permutation, axis=-1)
    return reshape_to(y, lead, [h // f, w // f, c * f * f])


def unsqueeze(y: tf.Tensor, factor: int, inverse_permutation=None) -> tf.Tensor:
    """Inverse of :func:`squeeze`: ``batch + [H, W, f*f*C] -> batch + [H*f, W*f, C]``."""
    h, w, cf = (int(d) for d in y.shape[-3:])
    f = int(factor)
    c = cf // (f * f)
    lead = leading_shape(y, 3)
    x = tf.reshape(y, [-1, h, w, cf])
    if inverse_permutation is not None:
        x = tf.gather(x, inverse_permutation, axis=-1)
    x = tf.reshape(x, [-1, h, w, c, f, f])
    x = tf.transpose(x, [0, 1, 4, 2, 5, 3])
    return reshape_to(x, lead, [h * f, w * f, c])


# --------------------------------------------------------------------------------------------
# Per-channel affine maps: ActNorm (Glow [4]) and batch normalisation (RealNVP [2] §3.7).
# --------------------------------------------------------------------------------------------
def channel_affine_log_det(log_scale: tf.Tensor, event_shape: Sequence[int]) -> tf.Tensor:
    """``log|det|`` of ``y = x * exp(s_c) + t_c`` over an event ``[..., C]``: ``prod * sum(s)``.

    For an image event ``[H, W, C]`` this is ``H * W * sum_c s_c``; a scalar, or a batch of
    scalars if ``log_scale`` has batch dimensions (``[..., C]``).
    """
    positions = 1
    for d in list(event_shape)[:-1]:
        positions *= int(d)
    return positions * tf.reduce_sum(log_scale, axis=-1)


def channel_affine_forward(
    x: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tf.Tensor:
    """``y = x * exp(s_c) + t_c``, broadcasting ``[C]`` parameters over the last axis."""
    return x * tf.exp(log_scale) + shift


def channel_affine_inverse(
    y: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tf.Tensor:
    """Inverse of :func:`channel_affine_forward`: ``x = (y - t_c) * exp(-s_c)``."""
    return (y - shift) * tf.exp(-log_scale)


def batch_norm_shift_and_log_scale(
    mean: tf.Tensor,
    variance: tf.Tensor,
    epsilon: float,
    log_gamma: tf.Tensor | None = None,
    beta: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch norm as a per-channel affine map in TFP's direction (latent -> data).

    Normalising (data ``x`` -> latent ``z``) is ``z = (x - mu) / sqrt(var + eps) * gamma + beta``;
    so ``x = z * exp(s) + t`` with ``s = log(var + eps) / 2 - log(gamma)`` and
    ``t = mu - beta * exp(s)``. Returns ``(t, s)`` for :func:`channel_affine_forward`.
    """
    log_scale = 0.5 * tf.math.log(variance + tf.cast(epsilon, variance.dtype))
    if log_gamma is not None:
        log_scale = log_scale - log_gamma
    shift = mean if beta is None else mean - beta * tf.exp(log_scale)
    return shift, log_scale


def moments(x: tf.Tensor, synchronized: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and (biased) variance of ``x`` over every axis but the last.

    With ``synchronized=True`` inside a ``tf.distribute`` replica context with more than one
    replica, the sums are all-reduced first, so every replica gets the statistics of the
    global batch (synchronised batch norm); elsewhere it is the local computation.
    """
    axes = list(range(x.shape.rank - 1))
    ctx = tf.distribute.get_replica_context() if synchronized else None
    if ctx is None or ctx.num_replicas_in_sync == 1:
        mean = tf.reduce_mean(x, axis=axes)
        variance = tf.reduce_mean(tf.square(x - mean), axis=axes)
        return mean, variance
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
    total, total_sq, count = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.reduce_sum(x, axis=axes), tf.reduce_sum(tf.square(x), axis=axes), count],
    )
    mean = total / count
    variance = tf.maximum(total_sq / count - tf.square(mean), tf.zeros([], x.dtype))
    return mean, variance


# --------------------------------------------------------------------------------------------
# Invertible 1x1 convolution (Glow [4] §3.2): an LU-factored linear map over the channels.
# --------------------------------------------------------------------------------------------
def _lu_factors(lower: tf.Tensor, upper: tf.Tensor, sign_s: tf.Tensor, log_s: tf.Tensor):
    """``L = tril(lower, -1) + I`` and ``U' = triu(upper, 1) + diag(sign_s * exp(log_s))``.

    ``lower``/``upper`` may be ``None`` (one channel: ``L = I``, ``U' = s``).
    """
    c = int(log_s.shape[-1])
    diag = tf.linalg.diag(sign_s * tf.exp(log_s))
    if lower is None:
        return tf.eye(c, dtype=log_s.dtype), diag
    eye = tf.eye(c, dtype=lower.dtype)
    tril = tf.linalg.band_part(lower, -1, 0) - tf.linalg.band_part(lower, 0, 0)
    triu = tf.linalg.band_part(upper, 0, -1) - tf.linalg.band_part(upper, 0, 0)
    return tril + eye, triu + diag


def lu_weight(permutation: tf.Tensor, lower, upper, sign_s: tf.Tensor,
              log_s: tf.Tensor) -> tf.Tensor:
    """Glow's LU-decomposed weight ``W = P L (U + diag(sign_s * exp(log_s)))``, ``[C, C]``.

    ``P`` is a permutation matrix, ``L`` unit lower triangular (the strictly lower part of
    ``lower``), ``U`` strictly upper triangular (of ``upper``), so
    ``log|det W| = sum(log_s)``.
    """
    lo, up = _lu_factors(lower, upper, sign_s, log_s)
    return tf.matmul(permutation, tf.matmul(lo, up))


def lu_inverse_weight(permutation: tf.Tensor, lower, upper, sign_s: tf.Tensor,
                      log_s: tf.Tensor) -> tf.Tensor:
    """``W^-1 = U'^-1 L^-1 P^T`` from two triangular solves (no general matrix inverse)."""
    lo, up = _lu_factors(lower, upper, sign_s, log_s)
    eye = tf.eye(int(log_s.shape[-1]), dtype=log_s.dtype)
    lo_inv = tf.linalg.triangular_solve(lo, eye, lower=True)
    up_inv = tf.linalg.triangular_solve(up, eye, lower=False)
    return tf.matmul(up_inv, tf.matmul(lo_inv, permutation, transpose_b=True))


def channel_matmul(x: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """``y[..., j] = sum_i x[..., i] W[i, j]``: a 1x1 convolution over the last axis."""
    c = int(weight.shape[0])
    y = tf.matmul(tf.reshape(x, [-1, c]), weight)
    return reshape_to(y, leading_shape(x, 1), [int(weight.shape[1])])
