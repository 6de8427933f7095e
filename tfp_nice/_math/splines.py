"""Rational-quadratic splines (Neural Spline Flows [5]) with identity tails."""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["rational_quadratic_spline", "spline_parameters"]


def spline_parameters(
    raw: tf.Tensor, num_bins: int, bound: float, min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3, min_slope: float = 1e-3,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Raw conditioner outputs ``[..., 3K - 1]`` -> the spline's bins and interior slopes.

    With ``K = num_bins`` and ``raw = [w (K), h (K), d (K - 1)]``::

      widths  = m_w + (2B - K m_w) * softmax(w)       (sum to 2B: the interval [-B, B])
      heights = m_h + (2B - K m_h) * softmax(h)
      slopes  = m_d + softplus(d + log(exp(1 - m_d) - 1))

    The shift inside ``softplus`` makes ``raw = 0`` give equal bins and unit slopes: the
    identity, so a zero-initialised conditioner starts a spline coupling as the identity
    (the boundary slopes are 1, matching the identity tails).

    Returns:
      ``(widths [..., K], heights [..., K], slopes [..., K - 1])``.
    """
    k = int(num_bins)
    w, h, d = raw[..., :k], raw[..., k : 2 * k], raw[..., 2 * k :]
    span = tf.constant(2.0 * bound, raw.dtype)

    def bins(u, minimum):
        m = tf.constant(minimum, raw.dtype)
        return m + (span - k * m) * tf.nn.softmax(u, axis=-1)

    m_d = tf.constant(min_slope, raw.dtype)
    offset = tf.constant(math.log(math.expm1(1.0 - min_slope)), raw.dtype)
    return bins(w, min_bin_width), bins(h, min_bin_height), m_d + tf.nn.softplus(d + offset)


def rational_quadratic_spline(
    x: tf.Tensor, widths: tf.Tensor, heights: tf.Tensor, slopes: tf.Tensor, bound: float,
    inverse: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``tfb.RationalQuadraticSpline`` on ``[-B, B]``, the identity outside; ``(y, log-det)``.

    Each unit of ``x [..., d]`` has its own spline (``widths``/``heights [..., d, K]``,
    ``slopes [..., d, K - 1]``). Inputs are clipped to ``[-B, B]`` *before* the spline math and
    the identity is selected outside, so out-of-bound values (however large) never produce
    NaN or Inf in the unused branch, in the values or in their gradients (the failure of
    nflows #62, flowjax #240, bayesflow #759). ``inverse=True`` applies the inverse spline.

    Returns:
      ``(y, ldj)``: the transformed ``x`` and ``sum(log|dy/dx|)`` over the last axis (for
      ``inverse=True``, of the inverse map).
    """
    b = tf.constant(bound, x.dtype)
    spline = tfp.bijectors.RationalQuadraticSpline(widths, heights, slopes, range_min=-b)
    inside = (x > -b) & (x < b)
    clipped = tf.clip_by_value(x, -b, b)
    if inverse:
        y, ldj = spline.inverse(clipped), spline.inverse_log_det_jacobian(clipped, event_ndims=0)
    else:
        y, ldj = spline.forward(clipped), spline.forward_log_det_jacobian(clipped, event_ndims=0)
    y = tf.where(inside, y, x)
    ldj = tf.where(inside, ldj, tf.zeros([], x.dtype))
    return y, tf.reduce_sum(ldj, axis=-1)
