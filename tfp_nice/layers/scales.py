"""Learned scales: the ``c`` of ``s = c * tanh(h)`` and a free log-scale (NICE's ``exp(s)``)."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfp_nice import _math
from tfp_nice._internal.checks import check_event_shape
from tfp_nice.layers._config import ConfigFields
from tfp_nice.layers._precision import FullPrecisionLayer
from tfp_nice.layers._self_built import SelfBuiltLayer, weight_property

__all__ = ["TanhScale", "LogScale"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class TanhScale(ConfigFields, FullPrecisionLayer):
    """``s = c * tanh(h)`` with a learned per-unit ``c`` (RealNVP's scale stabiliser).

    ``c`` has the size of ``h``'s last axis and starts at ``initial_scale``. ``s`` is a
    log-scale: under a mixed policy the layer computes in float32 (the policy's variable
    dtype), see :mod:`tfp_nice.precision`.

    Example:
      >>> import numpy as np
      >>> TanhScale(initial_scale=2.0)(np.zeros([1, 3], "float32")).shape
      TensorShape([1, 3])
    """

    config_fields = ("initial_scale",)

    def __init__(self, initial_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = float(initial_scale)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(int(input_shape[-1]),),
            initializer=keras.initializers.Constant(self.initial_scale),
        )

    def call(self, h):
        return _math.stabilise_log_scale(h, "tanh", tanh_scale=self.scale)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfp_nice")
class LogScale(ConfigFields, SelfBuiltLayer):
    """Holds one free weight ``log_scale`` of shape ``event_shape`` (zeros at start).

    Calling the layer returns the weight; :class:`tfp_nice.bijectors.DiagonalScale` reads it.

    Example:
      >>> LogScale([2, 2])().shape
      TensorShape([2, 2])
    """

    config_fields = ("event_shape",)

    def __init__(self, event_shape: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.event_shape = check_event_shape(event_shape)

    def create_weights(self) -> dict:
        return {"log_scale": self.add_weight(name="log_scale", shape=self.event_shape,
                                             initializer="zeros")}

    log_scale = weight_property("log_scale", "The weight ``s``.")

    def call(self, inputs=None):
        return self.log_scale.value
