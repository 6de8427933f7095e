"""Coupling conditioners: dense (vectors) and small convolutional (images) networks.

Both are a stack of hidden layers followed by a zero-initialised output layer, so a new
coupling starts as the identity map; they share that stack (:class:`_StackConditioner`).
Both take a context (``net(x1, **condition)``, see :mod:`tfp_nice.layers._context`), and
both may leave their output size to the coupling that uses them (``output_units=None``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfp_nice._internal.checks import check_int, check_int_sequence
from tfp_nice.layers._config import ConfigFields
from tfp_nice.layers._context import ContextInput

__all__ = ["MLPConditioner", "ConvConditioner"]


class _StackConditioner(ContextInput, keras.layers.Layer):
    """``hidden`` layers, then ``out``: built in order, called in order.

    ``out`` is made by ``_make_output(units)``, at construction or, when the size is left to
    the coupling (``None``), by :meth:`infer_output_units` before the first call.
    """

    hidden: list
    out: keras.layers.Layer | None
    _units_arg = "output_units"

    def infer_output_units(self, units: int | None) -> None:
        """Sets the output size a coupling needs, if it was not given (no-op otherwise)."""
        if self.out is None and units is not None:
            setattr(self, self._units_arg, int(units))
            self.out = self._make_output(int(units))

    def _make_output(self, units: int) -> keras.layers.Layer:
        raise NotImplementedError

    def build(self, input_shape):
        if self.out is None:
            raise ValueError(
                f"{type(self).__name__} `{self.name}`: `{self._units_arg}` is not set. Pass it, "
                "or use the layer as a tfp_nice coupling's conditioner, which sets it from the "
                f"split. Received: {self._units_arg}=None"
            )
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        self.out.build(shape)

    def call(self, inputs):
        h = inputs
        for layer in self.hidden:
            h = layer(h)
        return self.out(h)


@keras.saving.register_keras_serializable(package="tfp_nice")
class MLPConditioner(ConfigFields, _StackConditioner):
    """A dense network ``[batch, d_in] -> [batch, output_units]`` for coupling conditioners.

    ``hidden_units`` dense layers with ``activation``, then a linear output layer whose
    kernel and bias start at zero, so ``AdditiveCoupling``/``AffineCoupling`` (with the
    ``exp``, ``tanh`` or ``soft_clamp`` stabiliser) start as the identity map.

    A context: ``net(x1, **condition)`` concatenates every condition ``[batch, k]`` (sorted
    by name) to ``x1`` before the first layer, ``h = relu(W [x1, c] + b)``, as a conditional
    coupling needs (the first layer is built for ``d1 + k`` inputs).

    Args:
      output_units: width of the output; ``d2`` for an additive coupling's shift,
        ``2 * d2`` for an affine coupling's ``[shift, raw log-scale]``. ``None``: set by the
        coupling that uses the layer (like ``tfb.RealNVP``'s ``output_units`` argument),
        before it is built.
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

    config_fields = (
        "output_units", "hidden_units", "activation", "kernel_initializer", "zero_init_output")

    def __init__(
        self,
        output_units: int | None = None,
        hidden_units: Sequence[int] = (64, 64),
        activation: str = "relu",
        kernel_initializer: str = "glorot_uniform",
        zero_init_output: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_units = (None if output_units is None
                             else check_int(output_units, "output_units"))
        self.hidden_units = check_int_sequence(hidden_units, "hidden_units")
        self.activation = keras.activations.serialize(keras.activations.get(activation))
        self.kernel_initializer = kernel_initializer
        self.zero_init_output = zero_init_output
        dt = self.dtype_policy
        self.hidden = [
            keras.layers.Dense(u, activation=activation, kernel_initializer=kernel_initializer,
                               dtype=dt, name=f"hidden_{i}")
            for i, u in enumerate(self.hidden_units)
        ]
        self.out = None if output_units is None else self._make_output(self.output_units)

    def _make_output(self, units: int) -> keras.layers.Layer:
        out_init = "zeros" if self.zero_init_output else self.kernel_initializer
        return keras.layers.Dense(units, kernel_initializer=out_init, bias_initializer="zeros",
                                  dtype=self.dtype_policy, name="output")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_units,)


@keras.saving.register_keras_serializable(package="tfp_nice")
class ConvConditioner(ConfigFields, _StackConditioner):
    """A small plain conv net for image couplings (Glow's ``3x3 -> 1x1 -> 3x3`` shape).

    ``[N, H, W, C_in] -> [N, H, W, output_channels]``: one ``"same"`` convolution per entry of
    ``filters`` with ``activation`` (kernel ``kernel_size`` for the first, 1x1 for the rest),
    then a zero-initialised ``kernel_size`` output convolution, so a new coupling is the
    identity. Cheaper than :class:`~tfp_nice.layers.ResNetConditioner`; no weight
    normalisation. ``net(x, **condition)`` adds each vector condition ``[N, k]`` as ``k``
    constant input feature maps (an image condition ``[N, H, W, k]`` as it is).

    Args:
      output_channels: channels of the output (``None``: set by the coupling).
      filters: widths of the hidden convolutions, e.g. ``(64, 64)``.
      kernel_size: kernel of the first hidden and of the output convolution.
      activation: Keras activation of the hidden layers.
      zero_init_output: if ``False`` the output layer uses the default initializer.
      **kwargs: ``keras.layers.Layer`` arguments.

    Example:
      >>> import numpy as np
      >>> net = ConvConditioner(output_channels=4, filters=(8,))
      >>> net(np.zeros([2, 4, 4, 3], "float32")).shape
      TensorShape([2, 4, 4, 4])
    """

    config_fields = ("output_channels", "filters", "kernel_size", "activation", "zero_init_output")

    _units_arg = "output_channels"

    def __init__(self, output_channels: int | None = None, filters: Sequence[int] = (64, 64),
                 kernel_size: int = 3, activation: str = "relu", zero_init_output: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_channels = (None if output_channels is None
                                else check_int(output_channels, "output_channels"))
        try:
            filters = tuple(filters)
        except TypeError:
            filters = (filters,)
        self.filters = tuple(check_int(f, "filters") for f in filters)
        self.kernel_size = check_int(kernel_size, "kernel_size")
        self.activation = keras.activations.serialize(keras.activations.get(activation))
        self.zero_init_output = bool(zero_init_output)
        dt = self.dtype_policy
        self.hidden = [
            keras.layers.Conv2D(f, kernel_size if i == 0 else 1, padding="same",
                                activation=activation, dtype=dt, name=f"hidden_{i}")
            for i, f in enumerate(self.filters)
        ]
        self.out = (None if output_channels is None
                    else self._make_output(self.output_channels))

    def _make_output(self, units: int) -> keras.layers.Layer:
        out_init = "zeros" if self.zero_init_output else "glorot_uniform"
        return keras.layers.Conv2D(units, self.kernel_size, padding="same",
                                   kernel_initializer=out_init, dtype=self.dtype_policy,
                                   name="output")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_channels,)
