"""Batch normalisation over batch statistics in TF's fused kernel, with its log-det's gradient.

The composed form (:func:`~tfp_nice._math.images.moments`, then
:func:`~tfp_nice._math.images.batch_norm_shift_and_log_scale` and a per-channel affine map) is
~15 small ops forward and ~30 backward per layer; on small images their launch cost, not their
arithmetic, is the time. ``FusedBatchNormV3`` / ``FusedBatchNormGradV3`` do the statistics, the
normalisation and its gradient in one kernel each, but the kernel's gradient ignores the batch
variance as an output, and the flow's log-det depends on it; the custom gradient below adds that
term.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["fused_batch_norm", "fused_batch_norm_applies"]


def fused_batch_norm_applies(x: tf.Tensor, synchronized: bool = False) -> bool:
    """Whether :func:`fused_batch_norm` can normalise ``x``.

    The kernel takes float32 (half precision wants float32 statistics, and float64 has no
    kernel), and computes local statistics: under ``tf.distribute`` with more than one replica,
    ``synchronized`` batch norm needs the all-reduced moments, so the composed form is used.
    """
    if x.dtype != tf.float32 or x.shape.rank is None or x.shape.rank < 2:
        return False
    ctx = tf.distribute.get_replica_context() if synchronized else None
    return ctx is None or ctx.num_replicas_in_sync == 1


def fused_batch_norm(
    x: tf.Tensor,
    log_gamma: tf.Tensor | None,
    beta: tf.Tensor | None,
    epsilon: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``z = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta`` over the batch's statistics.

    ``mu``, ``var``: the mean and biased variance of ``x`` over every axis but the last (channels
    ``C``). Returns ``(z, log_scale, mean, variance)`` with ``log_scale = log(var + eps) / 2 -
    log_gamma`` (``[C]``), the same as the composed form's
    :func:`~tfp_nice._math.images.batch_norm_shift_and_log_scale`, so the log-det is
    ``prod(event[:-1]) * sum(log_scale)``. Gradients flow from ``z`` and from ``log_scale`` (for
    ``x`` through ``var``: ``d s_c / d x_i = (x_i - mu_c) / (M (var_c + eps))`` over ``M``
    values per channel) to ``x``, ``log_gamma`` and ``beta``; ``mean``/``variance`` are returned
    without gradient (for moving averages). Only where :func:`fused_batch_norm_applies`.
    """
    channels = int(x.shape[-1])
    zeros = tf.zeros([channels], x.dtype)
    log_gamma = zeros if log_gamma is None else log_gamma
    beta = zeros if beta is None else beta
    x4 = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, channels])
    eps = float(epsilon)

    @tf.custom_gradient
    def normalise(x4, log_gamma, beta):
        gamma = tf.exp(log_gamma)
        empty = tf.zeros([0], x4.dtype)
        z, mean, unbiased, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
            x=x4, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=eps,
            is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(x4)[:-1]), x4.dtype)
        variance = unbiased * (count - 1.0) / tf.maximum(count, 1.0)  # the kernel's is unbiased
        log_scale = 0.5 * tf.math.log(variance + eps) - log_gamma

        def grad(dz, dlog_scale, _dmean, _dvariance):
            dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dz, x=x4, scale=gamma, reserve_space_1=r1, reserve_space_2=r2,
                reserve_space_3=r3, epsilon=eps, is_training=True)
            dx += (dlog_scale / (count * (variance + eps))) * (x4 - mean)
            return dx, dgamma * gamma - dlog_scale, dbeta

        return (z, log_scale, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    z, log_scale, mean, variance = normalise(x4, log_gamma, beta)
    return tf.reshape(z, tf.shape(x)), log_scale, mean, variance
