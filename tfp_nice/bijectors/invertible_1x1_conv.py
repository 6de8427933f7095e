"""Glow's invertible 1x1 convolution as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice._internal.checks import (
    check_channels_event,
    check_finite,
    check_floating,
    check_int,
)
from tfp_nice.bijectors._base import LayerBijector
from tfp_nice.layers.invertible import Invertible1x1ConvLayer

tfb = tfp.bijectors

__all__ = ["Invertible1x1Conv"]


@serialization.register
class Invertible1x1Conv(LayerBijector):
    """Invertible 1x1 convolution (Glow [4] §3.2): a learned linear map of the channels.

    With the LU-decomposed ``C x C`` weight ``W = P L (U + diag(sign_s * exp(log_s)))``
    (``P`` a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper triangular),
    over an event ``[H, W, C]`` (or a vector ``[C]``)::

      forward:  y = x W                                 (latent -> data; every pixel)
      inverse:  x = y W^-1,  W^-1 = U'^-1 L^-1 P^T      (two triangular solves on C x C)
      log|det dy/dx| = H * W * sum(log_s)

    It generalises the fixed channel permutations between couplings: a new convolution is a
    random rotation (log-det 0), and training learns the mixing. The weights live in a
    :class:`tfp_nice.layers.Invertible1x1ConvLayer` (``P`` and ``sign_s`` non-trainable).

    Args:
      channels: ``C``; creates an :class:`~tfp_nice.layers.Invertible1x1ConvLayer`. Give
        this or ``layer``.
      layer: an existing :class:`~tfp_nice.layers.Invertible1x1ConvLayer`.
      event_ndims: the event rank (3 for ``[H, W, C]`` images, 1 for vectors ``[C]``).
      seed: seeds the initial rotation of a new layer (``None``: NumPy's global generator).
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.

    Example:
      >>> import numpy as np
      >>> b = Invertible1x1Conv(channels=4, seed=0)
      >>> x = np.random.default_rng(0).normal(size=[2, 3, 3, 4]).astype("float32")
      >>> bool(np.allclose(b.inverse(b.forward(x)), x, atol=1e-5))
      True
      >>> abs(float(b.forward_log_det_jacobian(x, event_ndims=3))) < 1e-5  # a rotation
      True

    References:
      [4] Kingma, Dhariwal. Glow: Generative flow with invertible 1x1 convolutions.
          arXiv:1807.03039, §3.2 ("LU decomposition").
    """

    _layer_args = ("layer",)

    def __init__(
        self,
        channels: int | None = None,
        layer: Invertible1x1ConvLayer | None = None,
        event_ndims: int = 3,
        seed: int | None = None,
        validate_args: bool = False,
        name: str = "invertible_1x1_conv",
    ):
        parameters = dict(locals())
        if (channels is None) == (layer is None):
            raise ValueError(
                "Invertible1x1Conv: exactly one of `channels` and `layer` must be given. "
                f"Received: channels={channels!r}, layer={layer!r}"
            )
        if layer is None:
            layer = Invertible1x1ConvLayer(channels, seed=seed, name=f"{name}_layer")
        elif not isinstance(layer, Invertible1x1ConvLayer):
            raise TypeError(
                "Invertible1x1Conv: `layer` must be a tfp_nice.layers.Invertible1x1ConvLayer. "
                f"Received: layer={layer!r}"
            )
        self._layer = layer
        self._event_ndims = check_int(event_ndims, "event_ndims", 1, 4)
        super().__init__(
            forward_min_event_ndims=self._event_ndims,
            is_constant_jacobian=True,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def layer(self) -> Invertible1x1ConvLayer:
        """The layer holding ``P``, ``L``, ``U``, ``sign_s`` and ``log_s``."""
        return self._layer

    def _factors(self, x: tf.Tensor, arg: str):
        check_floating(x, "Invertible1x1Conv", arg)
        event = check_channels_event(x, self._event_ndims, self._layer.channels,
                                     "Invertible1x1Conv", arg)
        factors = tuple(None if f is None else tf.cast(f, x.dtype) for f in self._layer())
        return factors, event

    def _forward(self, x):
        factors, _ = self._factors(x, "x")
        x = check_finite(x, "Invertible1x1Conv", "x") if self.validate_args else x
        return _math.channel_matmul(x, _math.lu_weight(*factors))

    def _inverse(self, y):
        factors, _ = self._factors(y, "y")
        y = check_finite(y, "Invertible1x1Conv", "y") if self.validate_args else y
        return _math.channel_matmul(y, _math.lu_inverse_weight(*factors))

    def _forward_log_det_jacobian(self, x):
        factors, event = self._factors(x, "x")
        return _math.channel_affine_log_det(factors[-1], event)

    def _inverse_log_det_jacobian(self, y):
        factors, event = self._factors(y, "y")
        return -_math.channel_affine_log_det(factors[-1], event)

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._config(layer=self._layer, event_ndims=self._event_ndims)
