"""Keras 3 layers that own every weight a tfp_nice bijector uses.

Bijectors only reference these layers; a :class:`tfp_nice.FlowModel` owns them,
so Keras sees, trains, checkpoints and serialises every weight.

* :class:`MLPConditioner` — the NICE/RealNVP coupling network ``x1 -> m(x1)``
  (or ``x1 -> [t, h]``), last layer zero-initialised so a new coupling is the identity.
* :class:`TanhScale` — the learned per-unit ``c`` of the ``s = c * tanh(h)`` stabiliser.
* :class:`LogScale` — a free log-scale weight ``s`` of a given shape (NICE's diagonal scaling).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfp_nice import _math

__all__ = ["MLPConditioner", "TanhScale", "LogScale"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class MLPConditioner(keras.layers.Layer):
    """A dense network ``[batch, d_in] -> [batch, output_units]`` for coupling conditioners.

    ``hidden_units`` dense layers with ``activation``, then a linear output layer whose
    kernel and bias start at zero, so ``AdditiveCoupling``/``AffineCoupling`` (with the
    ``exp``, ``tanh`` or ``soft_clamp`` stabiliser) start as the identity map.

    Args:
      output_units: width of the output; ``d2`` for an additive coupling's shift,
        ``2 * d2`` for an affine coupling's ``[shift, raw log-scale]``.
      hidden_units: widths of the hidden layers, e.g. ``(1000,) * 5`` for NICE on MNIST.
      activation: Keras activation of the hidden layers.
      kernel_initializer: initializer of the hidden kernels.
      zero_init_output: if ``False`` the output layer uses ``kernel_initializer`` too.
      **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Example:
      >>> import numpy as np
      >>> net = MLPConditioner(output_units=3, hidden_units=(8,))
      >>> net(np.zeros([2, 5], "float32")).shape
      TensorShape([2, 3])
    """

    def __init__(
        self,
        output_units: int,
        hidden_units: Sequence[int] = (64, 64),
        activation: str = "relu",
        kernel_initializer: str = "glorot_uniform",
        zero_init_output: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(output_units, bool) or not isinstance(output_units, int) or output_units < 1:
            raise ValueError(
                f"`output_units` must be a positive int. Received: output_units={output_units!r}"
            )
        try:
            hidden_units = tuple(hidden_units)
        except TypeError:
            raise ValueError(
                "`hidden_units` must be a sequence of positive ints, e.g. (64, 64). "
                f"Received: hidden_units={hidden_units!r}"
            ) from None
        if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in hidden_units):
            raise ValueError(
                "`hidden_units` must be a sequence of positive ints. "
                f"Received: hidden_units={hidden_units!r}"
            )
        self.output_units = output_units
        self.hidden_units = hidden_units
        self.activation = keras.activations.serialize(keras.activations.get(activation))
        self.kernel_initializer = kernel_initializer
        self.zero_init_output = zero_init_output
        dt = self.dtype_policy
        self.hidden = [
            keras.layers.Dense(
                u,
                activation=activation,
                kernel_initializer=kernel_initializer,
                dtype=dt,
                name=f"hidden_{i}",
            )
            for i, u in enumerate(hidden_units)
        ]
        out_init = "zeros" if zero_init_output else kernel_initializer
        self.out = keras.layers.Dense(
            output_units, kernel_initializer=out_init, bias_initializer="zeros", dtype=dt,
            name="output",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.out.build(shape)

    def call(self, inputs):
        h = inputs
        for layer in self.hidden:
            h = layer(h)
        return self.out(h)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_units,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            output_units=self.output_units,
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            kernel_initializer=self.kernel_initializer,
            zero_init_output=self.zero_init_output,
        )
        return config


@keras.saving.register_keras_serializable(package="tfp_nice")
class TanhScale(keras.layers.Layer):
    """``s = c * tanh(h)`` with a learned per-unit ``c`` (RealNVP's scale stabiliser).

    ``c`` has the size of ``h``'s last axis and starts at ``initial_scale``.
    """

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

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(initial_scale=self.initial_scale)
        return config


@keras.saving.register_keras_serializable(package="tfp_nice")
class LogScale(keras.layers.Layer):
    """Holds one free weight ``log_scale`` of shape ``event_shape`` (zeros at start).

    Calling the layer returns the weight; :class:`tfp_nice.bijectors.DiagonalScale` reads it.
    """

    def __init__(self, event_shape: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        try:
            self.event_shape = tuple(int(d) for d in event_shape)
        except (TypeError, ValueError):
            self.event_shape = ()
        if not self.event_shape or any(d < 1 for d in self.event_shape):
            raise ValueError(
                "`event_shape` must be a non-empty sequence of positive ints. "
                f"Received: event_shape={event_shape!r}"
            )
        self.log_scale = self.add_weight(
            name="log_scale", shape=self.event_shape, initializer="zeros"
        )
        self.built = True

    def call(self, inputs=None):
        return self.log_scale.value

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(event_shape=list(self.event_shape))
        return config
