"""Batch normalisation as a ``tfp.bijectors.Bijector`` whose statistics are Keras 3 weights."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice._internal import compat
from tfp_nice._internal.checks import (
    check_channels_event,
    check_finite,
    check_floating,
    check_int,
)
from tfp_nice.bijectors._base import LayerBijector
from tfp_nice.layers import BatchNormLayer

tfb = tfp.bijectors

__all__ = ["BatchNorm"]


@serialization.register
class BatchNorm(LayerBijector):
    """Batch normalisation with its log-det (RealNVP [2] §3.7), trainable by Keras 3 ``fit``.

    Per channel ``c`` of an event ``[H, W, C]``, with statistics ``(mu_c, var_c)`` and learned
    ``gamma_c = exp(log_gamma_c)``, ``beta_c``::

      inverse:  z = (x - mu) / sqrt(var + eps) * gamma + beta      (data -> latent, log_prob)
      forward:  x = (z - beta) / gamma * sqrt(var + eps) + mu      (latent -> data, sample)
      log|det dx/dz| = H * W * sum_c [log(var_c + eps) / 2 - log_gamma_c]

    Which statistics (the mode is Keras' ``training`` flag, which Keras passes down from
    ``model.fit`` / ``model.evaluate`` / ``model(x, training=...)`` to the
    :class:`tfp_nice.layers.BatchNormLayer` this bijector calls; ``training`` fixes it instead):

    * training: the inverse uses the statistics of the batch being normalised (all-reduced over
      replicas under ``tf.distribute``, so every replica normalises with the global batch's
      statistics), and updates the moving averages; the log-det uses the same batch variance,
      treating the statistics as constants (as RealNVP does), so ``log_prob`` in training mode is
      the likelihood of the batch-normalised flow (float32 batches run in TF's fused
      batch-norm kernel, the gradient through the variance included; see
      :class:`~tfp_nice.layers.BatchNormLayer`);
    * inference (``model(x)``, ``model.evaluate``, ``model.log_prob``, sampling): the moving
      averages, making this an ordinary per-channel affine bijection (``fldj = -ildj``).

    The forward direction (sampling) always uses the moving averages: a latent batch has no data
    statistics.

    Args:
      channels: ``C``; creates a :class:`~tfp_nice.layers.BatchNormLayer`. Give this or
        ``layer``.
      layer: an existing :class:`~tfp_nice.layers.BatchNormLayer`.
      event_ndims: the event rank (3 for images, 1 for vectors).
      momentum, epsilon, center, scale: for a new layer (see
        :class:`~tfp_nice.layers.BatchNormLayer`).
      training: ``None`` (follow Keras' flag), ``True`` or ``False`` (fixed mode).
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.

    Example:
      >>> import numpy as np
      >>> b = BatchNorm(channels=2, training=True)
      >>> x = np.random.default_rng(0).normal(3.0, 2.0, [64, 4, 4, 2]).astype("float32")
      >>> z = b.inverse(x).numpy()       # batch statistics: normalised
      >>> bool(abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3)
      True

    References:
      [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803,
          §3.7 and Appendix E.
    """

    _layer_args = ("layer",)

    def __init__(
        self,
        channels: int | None = None,
        layer: BatchNormLayer | None = None,
        event_ndims: int = 3,
        momentum: float = 0.9,
        epsilon: float = 1e-4,
        center: bool = True,
        scale: bool = True,
        training: bool | None = None,
        validate_args: bool = False,
        name: str = "batch_norm",
    ):
        parameters = dict(locals())
        if (channels is None) == (layer is None):
            raise ValueError(
                "BatchNorm: exactly one of `channels` and `layer` must be given. "
                f"Received: channels={channels!r}, layer={layer!r}"
            )
        if layer is None:
            layer = BatchNormLayer(channels, momentum=momentum, epsilon=epsilon, center=center,
                                   scale=scale, name=f"{name}_layer")
        elif not isinstance(layer, BatchNormLayer):
            raise TypeError(
                f"BatchNorm: `layer` must be a tfp_nice.layers.BatchNormLayer. Received: {layer!r}"
            )
        if training not in (None, True, False):
            raise ValueError(
                f"`training` must be None, True or False. Received: training={training!r}"
            )
        self._layer = layer
        self._training = training
        self._event_ndims = check_int(event_ndims, "event_ndims", 1, 4)
        super().__init__(
            forward_min_event_ndims=self._event_ndims,
            is_constant_jacobian=False,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def layer(self) -> BatchNormLayer:
        """The layer holding the moving statistics, ``log_gamma`` and ``beta``."""
        return self._layer

    def _event(self, x: tf.Tensor, arg: str):
        """The event shape of ``x`` (checked: floating, ending in the layer's channels)."""
        check_floating(x, "BatchNorm", arg)
        return check_channels_event(x, self._event_ndims, self._layer.channels, "BatchNorm", arg)

    def _call_layer(self, x: tf.Tensor, **kwargs):
        """Calls the layer, in Keras' training mode unless ``training`` was fixed."""
        if self._training is not None:
            kwargs["training"] = self._training
        return self._layer(x, **kwargs)

    def _shift_and_log_scale(self, x: tf.Tensor, arg: str, statistics: str):
        """``(t, s, event)`` of ``x = z * exp(s) + t``; ``statistics``: "call" or "moving".

        "call": the layer's (batch statistics in training, without updating the moving
        averages: the inverse, which updates them, normalises through the layer itself).
        """
        event = self._event(x, arg)
        if statistics == "moving":
            mean, variance = self._layer.moving_statistics(x.dtype)
        else:
            mean, variance = self._call_layer(x, update=False)
        mean, variance = tf.cast(mean, x.dtype), tf.cast(variance, x.dtype)
        log_gamma, beta = self._layer.affine(x.dtype)
        shift, log_scale = _math.batch_norm_shift_and_log_scale(
            mean, variance, self._layer.epsilon, log_gamma, beta
        )
        return shift, log_scale, event

    def _forward(self, x):
        shift, log_scale, _ = self._shift_and_log_scale(x, "x", "moving")
        x = check_finite(x, "BatchNorm", "x") if self.validate_args else x
        return _math.channel_affine_forward(x, shift, log_scale)

    def _inverse(self, y):
        y = check_finite(y, "BatchNorm", "y") if self.validate_args else y
        event = self._event(y, "y")
        z, log_scale = self._call_layer(y, normalize=True)
        compat.store_inverse_log_det(self, y, -_math.channel_affine_log_det(log_scale, event))
        return z

    def _forward_log_det_jacobian(self, x):
        _, log_scale, event = self._shift_and_log_scale(x, "x", "moving")
        return _math.channel_affine_log_det(log_scale, event)

    def _inverse_log_det_jacobian(self, y):
        _, log_scale, event = self._shift_and_log_scale(y, "y", "call")
        return -_math.channel_affine_log_det(log_scale, event)

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._config(layer=self._layer, event_ndims=self._event_ndims,
                            training=self._training)
