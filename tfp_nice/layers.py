"""Keras 3 layers that own every weight a tfp_nice bijector uses.

Bijectors only reference these layers; a :class:`tfp_nice.FlowModel` owns them,
so Keras sees, trains, checkpoints and serialises every weight.

* :class:`MLPConditioner` — the NICE/RealNVP coupling network ``x1 -> m(x1)``
  (or ``x1 -> [t, h]``), last layer zero-initialised so a new coupling is the identity.
* :class:`TanhScale` — the learned per-unit ``c`` of the ``s = c * tanh(h)`` stabiliser.
* :class:`LogScale` — a free log-scale weight ``s`` of a given shape (NICE's diagonal scaling).
* :class:`ResNetConditioner` — RealNVP's residual conv net (weight normalisation, zero-initialised
  output) for image couplings; :class:`ConvConditioner` — a small plain conv net;
  :class:`WeightNormConv2D` — their weight-normalised convolution.
* :class:`ActNormLayer`, :class:`BatchNormLayer` — the weights (and moving statistics) of the
  ActNorm and batch-norm bijectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfp_nice import _math

__all__ = [
    "MLPConditioner",
    "TanhScale",
    "LogScale",
    "WeightNormConv2D",
    "ResNetConditioner",
    "ConvConditioner",
    "ActNormLayer",
    "BatchNormLayer",
]


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


# ---------------------------------------------------------------------------------------------
# Image conditioners (RealNVP's ResNet with weight normalisation, a small conv net) and the
# weights of the ActNorm / batch-norm bijectors.
# ---------------------------------------------------------------------------------------------
def _check_positive_int(value, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value!r}")
    return value


def _check_non_negative_float(value, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"`{arg}` must be a float >= 0. Received: {arg}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="tfp_nice")
class WeightNormConv2D(keras.layers.Layer):
    """A 2-D convolution with weight normalisation [5]: ``w = g · v / ||v||`` per output filter.

    ``v`` (``[k, k, c_in, filters]``) and the gain ``g`` (``[filters]``) are trained instead
    of ``w``; ``g`` starts at ``||v||`` so the layer starts as a plain convolution, or at zero
    with ``zero_init=True`` (then the layer outputs ``bias = 0`` and a coupling using it starts
    as the identity). ``"same"`` padding, stride 1.

    Args:
      filters: output channels.
      kernel_size: the (square) kernel size.
      zero_init: start with ``g = 0``.
      l2: L2 penalty on ``g`` (RealNVP: ``5e-5`` on the weight-norm scales); added to the
        model's losses.
      kernel_initializer: initializer of ``v``.
      **kwargs: ``keras.layers.Layer`` arguments.

    References:
      [5] Salimans, Kingma. Weight normalization. arXiv:1602.07868.
    """

    def __init__(self, filters: int, kernel_size: int = 3, zero_init: bool = False,
                 l2: float = 0.0, kernel_initializer: str = "he_normal", **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_positive_int(filters, "filters")
        self.kernel_size = _check_positive_int(kernel_size, "kernel_size")
        self.zero_init = bool(zero_init)
        self.l2 = _check_non_negative_float(l2, "l2")
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        k = self.kernel_size
        self.v = self.add_weight(name="v", shape=(k, k, c_in, self.filters),
                                 initializer=self.kernel_initializer)
        if self.zero_init:
            g_init = "zeros"
        else:
            norm = keras.ops.convert_to_numpy(
                keras.ops.sqrt(keras.ops.sum(keras.ops.square(self.v), axis=(0, 1, 2)))
            )
            g_init = keras.initializers.Constant(norm)
        self.g = self.add_weight(
            name="g", shape=(self.filters,), initializer=g_init,
            regularizer=keras.regularizers.L2(self.l2) if self.l2 else None,
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        v = self.v
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(v), axis=(0, 1, 2)) + 1e-12)
        w = v * (self.g / norm)
        return keras.ops.conv(inputs, w, padding="same") + self.bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      zero_init=self.zero_init, l2=self.l2,
                      kernel_initializer=self.kernel_initializer)
        return config


@keras.saving.register_keras_serializable(package="tfp_nice")
class ResNetConditioner(keras.layers.Layer):
    """RealNVP's coupling network for images [2] §4.1: a residual conv net, weight-normalised.

    ``[N, H, W, C_in] -> [N, H, W, output_channels]``::

      h = conv3x3(x)                                  # to `filters` channels
      repeat num_blocks:  h = h + conv3x3(relu(conv3x3(relu(h))))
      out = conv1x1(relu(h))                          # zero-initialised: a new coupling is
                                                      # the identity
    Every convolution is a :class:`WeightNormConv2D`. For an image coupling use it with
    ``conditioner_input="masked"`` (it then sees ``[x * mask, mask]``) and
    ``output_channels = 2 * C`` (affine: shift and raw log-scale) or ``C`` (additive).

    Args:
      output_channels: channels of the output.
      filters: feature maps of the hidden convolutions (RealNVP: 64 on CIFAR-10, 32 at 32x32).
      num_blocks: residual blocks (RealNVP: 8 on CIFAR-10, 4 at 32x32, 2 at 64x64).
      kernel_size: kernel of the hidden convolutions.
      output_kernel_size: kernel of the zero-initialised output convolution.
      l2: L2 penalty on the weight-norm gains (RealNVP: ``5e-5``).
      zero_init_output: if ``False`` the output layer starts like the others.
      **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Example:
      >>> import numpy as np
      >>> net = ResNetConditioner(output_channels=2, filters=8, num_blocks=1)
      >>> net(np.zeros([3, 4, 4, 2], "float32")).shape
      TensorShape([3, 4, 4, 2])
    """

    def __init__(self, output_channels: int, filters: int = 64, num_blocks: int = 2,
                 kernel_size: int = 3, output_kernel_size: int = 1, l2: float = 0.0,
                 zero_init_output: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = _check_positive_int(output_channels, "output_channels")
        self.filters = _check_positive_int(filters, "filters")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(
                f"`num_blocks` must be an int >= 0. Received: num_blocks={num_blocks!r}"
            )
        self.num_blocks = num_blocks
        self.kernel_size = _check_positive_int(kernel_size, "kernel_size")
        self.output_kernel_size = _check_positive_int(output_kernel_size, "output_kernel_size")
        self.l2 = _check_non_negative_float(l2, "l2")
        self.zero_init_output = bool(zero_init_output)
        dt = self.dtype_policy

        def conv(filters, k, name, zero=False):
            return WeightNormConv2D(filters, k, zero_init=zero, l2=self.l2, dtype=dt, name=name)

        self.conv_in = conv(filters, kernel_size, "conv_in")
        self.blocks = [
            (conv(filters, kernel_size, f"block_{i}_a"), conv(filters, kernel_size, f"block_{i}_b"))
            for i in range(num_blocks)
        ]
        self.conv_out = conv(output_channels, output_kernel_size, "conv_out",
                             zero=self.zero_init_output)

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.conv_in.build(shape)
        hidden = shape[:-1] + (self.filters,)
        for a, b in self.blocks:
            a.build(hidden)
            b.build(hidden)
        self.conv_out.build(hidden)

    def call(self, inputs):
        h = self.conv_in(inputs)
        for a, b in self.blocks:
            h = h + b(keras.ops.relu(a(keras.ops.relu(h))))
        return self.conv_out(keras.ops.relu(h))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_channels,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(output_channels=self.output_channels, filters=self.filters,
                      num_blocks=self.num_blocks, kernel_size=self.kernel_size,
                      output_kernel_size=self.output_kernel_size, l2=self.l2,
                      zero_init_output=self.zero_init_output)
        return config


@keras.saving.register_keras_serializable(package="tfp_nice")
class ConvConditioner(keras.layers.Layer):
    """A small plain conv net for image couplings (Glow's ``3x3 -> 1x1 -> 3x3`` shape).

    ``[N, H, W, C_in] -> [N, H, W, output_channels]``: one ``"same"`` convolution per entry of
    ``filters`` with ``activation`` (kernel ``kernel_size`` for the first, 1x1 for the rest),
    then a zero-initialised ``kernel_size`` output convolution, so a new coupling is the
    identity. Cheaper than :class:`ResNetConditioner`; no weight normalisation.

    Args:
      output_channels: channels of the output.
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

    def __init__(self, output_channels: int, filters: Sequence[int] = (64, 64),
                 kernel_size: int = 3, activation: str = "relu", zero_init_output: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_channels = _check_positive_int(output_channels, "output_channels")
        try:
            filters = tuple(filters)
        except TypeError:
            filters = (filters,)
        for f in filters:
            _check_positive_int(f, "filters")
        self.filters = filters
        self.kernel_size = _check_positive_int(kernel_size, "kernel_size")
        self.activation = keras.activations.serialize(keras.activations.get(activation))
        self.zero_init_output = bool(zero_init_output)
        dt = self.dtype_policy
        self.hidden = [
            keras.layers.Conv2D(f, kernel_size if i == 0 else 1, padding="same",
                                activation=activation, dtype=dt, name=f"hidden_{i}")
            for i, f in enumerate(filters)
        ]
        out_init = "zeros" if self.zero_init_output else "glorot_uniform"
        self.out = keras.layers.Conv2D(output_channels, kernel_size, padding="same",
                                       kernel_initializer=out_init, dtype=dt, name="output")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = shape[:-1] + (layer.filters,)
        self.out.build(shape)

    def call(self, inputs):
        h = inputs
        for layer in self.hidden:
            h = layer(h)
        return self.out(h)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_channels,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(output_channels=self.output_channels, filters=list(self.filters),
                      kernel_size=self.kernel_size, activation=self.activation,
                      zero_init_output=self.zero_init_output)
        return config


@keras.saving.register_keras_serializable(package="tfp_nice")
class ActNormLayer(keras.layers.Layer):
    """The weights of :class:`tfp_nice.bijectors.ActNorm`: per-channel ``loc`` and ``log_scale``.

    Also holds ``initialized`` (a non-trainable 0/1 weight), so a saved and reloaded model
    knows its data-dependent initialisation is done. Calling the layer returns
    ``(loc, log_scale)``.

    Args:
      channels: the number of channels ``C`` (the last axis of the event).
      **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = _check_positive_int(channels, "channels")
        self.loc = self.add_weight(name="loc", shape=(channels,), initializer="zeros")
        self.log_scale = self.add_weight(name="log_scale", shape=(channels,), initializer="zeros")
        self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros",
                                           trainable=False)
        self.built = True

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

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(channels=self.channels)
        return config


@keras.saving.register_keras_serializable(package="tfp_nice")
class BatchNormLayer(keras.layers.Layer):
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

    Args:
      channels: the number of channels ``C``.
      momentum: of the moving averages (RealNVP's code: 0.9, i.e. its ``decay=0.1``).
      epsilon: added to the variance (RealNVP's code: 1e-4).
      center: learn a shift ``β``.
      scale: learn a log-scale ``log γ``.
      **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, channels: int, momentum: float = 0.9, epsilon: float = 1e-4,
                 center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = _check_positive_int(channels, "channels")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
            0 <= momentum < 1
        ):
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"`epsilon` must be a float > 0. Received: epsilon={epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        shape = (channels,)
        self.moving_mean = self.add_weight(name="moving_mean", shape=shape, initializer="zeros",
                                           trainable=False, aggregation="mean")
        self.moving_variance = self.add_weight(name="moving_variance", shape=shape,
                                               initializer="ones", trainable=False,
                                               aggregation="mean")
        self.log_gamma = (self.add_weight(name="log_gamma", shape=shape, initializer="zeros")
                          if self.scale else None)
        self.beta = (self.add_weight(name="beta", shape=shape, initializer="zeros")
                     if self.center else None)
        self.built = True

    def call(self, inputs, training=None, update=True):
        if not training:
            return (keras.ops.cast(self.moving_mean.value, inputs.dtype),
                    keras.ops.cast(self.moving_variance.value, inputs.dtype))
        mean, variance = _math.moments(inputs, synchronized=True)
        if update:
            m = self.momentum
            self.moving_mean.assign(
                m * self.moving_mean.value
                + (1 - m) * keras.ops.cast(keras.ops.stop_gradient(mean), self.moving_mean.dtype)
            )
            self.moving_variance.assign(
                m * self.moving_variance.value
                + (1 - m) * keras.ops.cast(keras.ops.stop_gradient(variance),
                                           self.moving_variance.dtype)
            )
        return mean, variance

    def moving_statistics(self, dtype):
        """``(moving_mean, moving_variance)`` as tensors of ``dtype``."""
        return (keras.ops.cast(self.moving_mean.value, dtype),
                keras.ops.cast(self.moving_variance.value, dtype))

    def affine(self, dtype):
        """``(log_gamma, beta)`` as tensors of ``dtype`` (``None`` where disabled)."""
        lg = None if self.log_gamma is None else keras.ops.cast(self.log_gamma.value, dtype)
        b = None if self.beta is None else keras.ops.cast(self.beta.value, dtype)
        return lg, b

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(channels=self.channels, momentum=self.momentum, epsilon=self.epsilon,
                      center=self.center, scale=self.scale)
        return config
