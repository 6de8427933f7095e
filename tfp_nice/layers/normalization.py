"""The weights of the ActNorm and batch-norm bijectors, as Keras layers."""

from __future__ import annotations

import keras

from tfp_nice import _math
from tfp_nice._internal.checks import check_int, check_number
from tfp_nice.layers._config import ConfigFields
from tfp_nice.layers._self_built import SelfBuiltLayer, weight_property

__all__ = ["ActNormLayer", "BatchNormLayer"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class ActNormLayer(ConfigFields, SelfBuiltLayer):
    """The weights of :class:`tfp_nice.bijectors.ActNorm`: per-channel ``loc`` and ``log_scale``.

    Also holds ``initialized`` (a non-trainable 0/1 weight), so a saved and reloaded model
    knows its data-dependent initialisation is done. Calling the layer returns
    ``(loc, log_scale)``.

    Args:
      channels: the number of channels ``C`` (the last axis of the event).
      **kwargs: ``keras.layers.Layer`` arguments.
    """

    config_fields = ("channels",)

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_int(channels, "channels")

    def create_weights(self) -> dict:
        c = (self.channels,)
        return {
            "loc": self.add_weight(name="loc", shape=c, initializer="zeros"),
            "log_scale": self.add_weight(name="log_scale", shape=c, initializer="zeros"),
            "initialized": self.add_weight(name="initialized", shape=(), initializer="zeros",
                                           trainable=False),
        }

    loc = weight_property("loc", "The per-channel shift ``t``.")
    log_scale = weight_property("log_scale", "The per-channel log-scale ``s``.")
    initialized = weight_property(
        "initialized",
        "A non-trainable 0/1 weight: whether the data-dependent initialisation ran.")

    @property
    def is_initialized(self) -> bool:
        """Whether :meth:`initialize` has run (read eagerly)."""
        return bool(keras.ops.convert_to_numpy(self.initialized) > 0.5)

    def initialize(self, loc, log_scale) -> None:
        """Sets ``loc`` and ``log_scale`` and marks the layer initialised."""
        self.loc.assign(keras.ops.cast(loc, self.loc.dtype))
        self.log_scale.assign(keras.ops.cast(log_scale, self.log_scale.dtype))
        self.initialized.assign(keras.ops.ones((), self.initialized.dtype))

    def call(self, inputs=None):
        return self.loc.value, self.log_scale.value


@keras.saving.register_keras_serializable(package="tfp_nice")
class BatchNormLayer(ConfigFields, SelfBuiltLayer):
    """The weights of :class:`tfp_nice.bijectors.BatchNorm`: moving statistics and ``γ``, ``β``.

    ``moving_mean`` and ``moving_variance`` are non-trainable Keras weights (saved with the
    model; aggregation ``"mean"`` so ``tf.distribute`` replicas may update them); ``log_gamma``
    and ``beta`` are trainable (``center``/``scale``). Calling the layer on a batch returns the
    ``(mean, variance)`` to normalise with:

    * ``training=True`` (Keras passes it down from ``model.fit``/``model(x, training=True)``):
      the batch statistics over every axis but the last — all-reduced across replicas under a
      ``tf.distribute`` strategy (synchronised batch norm) — and, unless ``update=False``, the
      moving averages move towards them: ``m <- momentum * m + (1 - momentum) * batch``;
    * otherwise: the moving averages.

    With ``normalize=True`` the call returns ``(z, log_scale)`` instead: the batch normalised
    with those statistics, ``z = (x - mean) / sqrt(variance + eps) * gamma + beta``, and the
    per-channel ``log_scale = log(variance + eps) / 2 - log gamma`` of its log-det (what
    :class:`tfp_nice.bijectors.BatchNorm` needs). In training, float32 batches outside
    multi-replica strategies go through TF's fused batch-norm kernel (one op forward, one
    backward, the log-det's gradient through the variance added), elsewhere the composed ops.

    Args:
      channels: the number of channels ``C``.
      momentum: of the moving averages (RealNVP's code: 0.9, i.e. its ``decay=0.1``).
      epsilon: added to the variance (RealNVP's code: 1e-4).
      center: learn a shift ``β``.
      scale: learn a log-scale ``log γ``.
      **kwargs: ``keras.layers.Layer`` arguments.
    """

    config_fields = ("channels", "momentum", "epsilon", "center", "scale")

    def __init__(self, channels: int, momentum: float = 0.9, epsilon: float = 1e-4,
                 center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_int(channels, "channels")
        self.momentum = check_number(momentum, "momentum", 0.0, 1.0, high_inclusive=False,
                                     what="in [0, 1)")
        self.epsilon = check_number(epsilon, "epsilon", 0.0, low_inclusive=False,
                                    what="a float > 0")
        self.center = bool(center)
        self.scale = bool(scale)

    def create_weights(self) -> dict:
        shape = (self.channels,)
        weights = {
            "moving_mean": self.add_weight(name="moving_mean", shape=shape, initializer="zeros",
                                           trainable=False, aggregation="mean"),
            "moving_variance": self.add_weight(name="moving_variance", shape=shape,
                                               initializer="ones", trainable=False,
                                               aggregation="mean"),
        }
        if self.scale:
            weights["log_gamma"] = self.add_weight(name="log_gamma", shape=shape,
                                                   initializer="zeros")
        if self.center:
            weights["beta"] = self.add_weight(name="beta", shape=shape, initializer="zeros")
        return weights

    moving_mean = weight_property(
        "moving_mean", "The moving average of the batch means (non-trainable).")
    moving_variance = weight_property(
        "moving_variance", "The moving average of the batch variances (non-trainable).")
    log_gamma = weight_property(
        "log_gamma", "The learned log-scale ``log γ`` (``None`` with ``scale=False``).",
        only_if="scale")
    beta = weight_property(
        "beta", "The learned shift ``β`` (``None`` with ``center=False``).", only_if="center")

    def call(self, inputs, training=None, update=True, normalize=False):
        if normalize:
            return self._normalize(inputs, bool(training), update)
        if not training:
            return self.moving_statistics(inputs.dtype)
        mean, variance = _math.moments(inputs, synchronized=True)
        if update:
            self._update_moving(mean, variance)
        return mean, variance

    def _normalize(self, inputs, training, update):
        log_gamma, beta = self.affine(inputs.dtype)
        if training and _math.fused_batch_norm_applies(inputs, synchronized=True):
            z, log_scale, mean, variance = _math.fused_batch_norm(inputs, log_gamma, beta,
                                                                  self.epsilon)
            if update:
                self._update_moving(mean, variance)
            return z, log_scale
        mean, variance = self.call(inputs, training=training, update=update)
        shift, log_scale = _math.batch_norm_shift_and_log_scale(
            mean, variance, self.epsilon, log_gamma, beta)
        return _math.channel_affine_inverse(inputs, shift, log_scale), log_scale

    def _update_moving(self, mean, variance):
        """``m <- momentum * m + (1 - momentum) * batch`` for both moving statistics."""
        m = self.momentum
        for weight, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch = keras.ops.cast(keras.ops.stop_gradient(batch), weight.dtype)
            weight.assign(m * weight.value + (1 - m) * batch)

    def moving_statistics(self, dtype):
        """``(moving_mean, moving_variance)`` as tensors of ``dtype``."""
        return (keras.ops.cast(self.moving_mean.value, dtype),
                keras.ops.cast(self.moving_variance.value, dtype))

    def affine(self, dtype):
        """``(log_gamma, beta)`` as tensors of ``dtype`` (``None`` where disabled)."""
        lg = None if self.log_gamma is None else keras.ops.cast(self.log_gamma.value, dtype)
        b = None if self.beta is None else keras.ops.cast(self.beta.value, dtype)
        return lg, b
