"""RealNVP's image conditioner: a residual conv net of weight-normalised convolutions."""

from __future__ import annotations

import keras

from tfp_nice._internal.checks import check_int, check_number
from tfp_nice.layers._config import ConfigFields
from tfp_nice.layers._context import ContextInput

__all__ = ["WeightNormConv2D", "ResNetConditioner"]


def _non_negative(value, arg: str) -> float:
    return check_number(value, arg, low=0.0, what="a float >= 0")


@keras.saving.register_keras_serializable(package="tfp_nice")
class WeightNormConv2D(ConfigFields, keras.layers.Layer):
    """A 2-D convolution with weight normalisation [5]: ``w = g · v / ||v||`` per output filter.

    ``v`` (``[k, k, c_in, filters]``) and the gain ``g`` (``[filters]``) are trained instead
    of ``w``; ``g`` starts at ``||v||`` so the layer starts as a plain convolution, or at zero
    with ``zero_init=True`` (then the layer outputs ``bias = 0`` and a coupling using it starts
    as the identity). ``"same"`` padding, stride 1. Under a mixed policy ``v``, ``g`` and
    ``||v||`` stay in the variable dtype (float32) and only ``w`` is cast to the compute dtype.

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

    config_fields = ("filters", "kernel_size", "zero_init", "l2", "kernel_initializer")

    def __init__(self, filters: int, kernel_size: int = 3, zero_init: bool = False,
                 l2: float = 0.0, kernel_initializer: str = "he_normal", **kwargs):
        super().__init__(**kwargs)
        self.filters = check_int(filters, "filters")
        self.kernel_size = check_int(kernel_size, "kernel_size")
        self.zero_init = bool(zero_init)
        self.l2 = _non_negative(l2, "l2")
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        k = self.kernel_size
        # v and g are read in their own dtype (no autocast): the norm is computed in float32
        # under a mixed policy, and only the normalised kernel is cast to the compute dtype.
        self.v = self.add_weight(name="v", shape=(k, k, c_in, self.filters),
                                 initializer=self.kernel_initializer, autocast=False)
        if self.zero_init:
            g_init = "zeros"
        else:
            norm = keras.ops.convert_to_numpy(
                keras.ops.sqrt(keras.ops.sum(keras.ops.square(self.v), axis=(0, 1, 2)))
            )
            g_init = keras.initializers.Constant(norm)
        self.g = self.add_weight(
            name="g", shape=(self.filters,), initializer=g_init,
            regularizer=keras.regularizers.L2(self.l2) if self.l2 else None, autocast=False,
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        v = self.v
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(v), axis=(0, 1, 2)) + 1e-12)
        w = keras.ops.cast(v * (self.g / norm), self.compute_dtype)
        return keras.ops.conv(inputs, w, padding="same") + self.bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)


@keras.saving.register_keras_serializable(package="tfp_nice")
class ResNetConditioner(ConfigFields, ContextInput, keras.layers.Layer):
    """RealNVP's coupling network for images [2] §4.1: a residual conv net, weight-normalised.

    ``[N, H, W, C_in] -> [N, H, W, output_channels]``::

      h = conv3x3(x)                                  # to `filters` channels
      repeat num_blocks:  h = h + conv3x3(relu(conv3x3(relu(h))))
      out = conv1x1(relu(h))                          # zero-initialised: a new coupling is
                                                      # the identity
    Every convolution is a :class:`WeightNormConv2D`. For an image coupling use it with
    ``conditioner_input="masked"`` (it then sees ``[x * mask, mask]``) and
    ``output_channels = 2 * C`` (affine: shift and raw log-scale) or ``C`` (additive).
    ``net(x, **condition)`` adds each vector condition ``[N, k]`` as ``k`` constant input
    feature maps (a class-conditional coupling's context).

    Args:
      output_channels: channels of the output (``None``: set by the coupling that uses it).
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

    config_fields = ("output_channels", "filters", "num_blocks", "kernel_size",
                     "output_kernel_size", "l2", "zero_init_output")

    def __init__(self, output_channels: int | None = None, filters: int = 64,
                 num_blocks: int = 2, kernel_size: int = 3, output_kernel_size: int = 1,
                 l2: float = 0.0, zero_init_output: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = (None if output_channels is None
                                else check_int(output_channels, "output_channels"))
        self.filters = check_int(filters, "filters")
        self.num_blocks = check_int(num_blocks, "num_blocks", minimum=0)
        self.kernel_size = check_int(kernel_size, "kernel_size")
        self.output_kernel_size = check_int(output_kernel_size, "output_kernel_size")
        self.l2 = _non_negative(l2, "l2")
        self.zero_init_output = bool(zero_init_output)
        conv = self._conv
        self.conv_in = conv(filters, kernel_size, "conv_in")
        self.blocks = [
            (conv(filters, kernel_size, f"block_{i}_a"), conv(filters, kernel_size, f"block_{i}_b"))
            for i in range(num_blocks)
        ]
        self.conv_out = (None if output_channels is None else
                         conv(self.output_channels, self.output_kernel_size, "conv_out",
                              zero=self.zero_init_output))

    def _conv(self, filters: int, k: int, name: str, zero: bool = False) -> WeightNormConv2D:
        return WeightNormConv2D(filters, k, zero_init=zero, l2=self.l2, dtype=self.dtype_policy,
                                name=name)

    def infer_output_units(self, units: int | None) -> None:
        """Sets the output channels a coupling needs, if they were not given."""
        if self.conv_out is None and units is not None:
            self.output_channels = int(units)
            self.conv_out = self._conv(self.output_channels, self.output_kernel_size,
                                       "conv_out", zero=self.zero_init_output)

    def build(self, input_shape):
        if self.conv_out is None:
            raise ValueError(
                f"ResNetConditioner `{self.name}`: `output_channels` is not set. Pass it, or use "
                "the layer as a tfp_nice coupling's conditioner, which sets it. "
                "Received: output_channels=None"
            )
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
