"""RealNVP's squeeze (space to channels) as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice._internal.checks import check_finite, check_floating
from tfp_nice.bijectors._base import LayerBijector

tfb = tfp.bijectors

__all__ = ["Squeeze", "CHANNEL_ORDERS"]

#: Accepted values of ``Squeeze(channel_order=...)``.
CHANNEL_ORDERS = ("channel_major", "checkerboard")


@serialization.register
class Squeeze(LayerBijector):
    """Squeeze [2] §3.6: each ``f × f`` block of pixels becomes ``f²`` channels.

    ::

      forward:  [H, W, C] -> [H/f, W/f, f²·C]   (space to channels)
      inverse:  [H/f, W/f, f²·C] -> [H, W, C]   (channels to space)
      log|det J| = 0                            (a permutation of the units)

    Channel order of the output (``f = 2``, block offsets ``(dh, dw)``):

    * ``"channel_major"`` (default): channel ``4c + 2dh + dw`` holds input channel ``c`` at
      offset ``(dh, dw)`` — RealNVP's ``squeeze_2x2`` and Glow's ``squeeze2d``.
    * ``"checkerboard"`` (``f = 2`` only): RealNVP's ``squeeze_2x2_ordered``: all ``C``
      channels at offset ``(0, 0)``, then ``(1, 1)``, then ``(0, 1)``, then ``(1, 0)``. The
      first ``2C`` output channels are then one colour of the input's checkerboard and the last
      ``2C`` the other, so factoring out half the channels after it (RealNVP's multi-scale
      architecture) factors out a checkerboard half of the finer image.

    In a flow written data side first (``tfb.Chain`` order, as :class:`tfp_nice.FlowModel`
    takes its steps), ``tfb.Invert(Squeeze())`` squeezes on the way from data to latent.

    Args:
      factor: the block size ``f`` (``H`` and ``W`` must be divisible by it).
      channel_order: ``"channel_major"`` or ``"checkerboard"``.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.

    Raises:
      ValueError: at construction for a bad ``factor``/``channel_order``; when called, if ``H``
        or ``W`` is not divisible by ``factor`` (forward) or the channels by ``factor²``
        (inverse).

    Example:
      >>> import numpy as np
      >>> b = Squeeze()
      >>> b.forward(np.zeros([5, 8, 8, 3], "float32")).shape
      TensorShape([5, 4, 4, 12])
      >>> b.inverse_event_shape([4, 4, 12])
      TensorShape([8, 8, 3])

    References:
      [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803,
          §3.6 and Fig. 3.
    """

    def __init__(
        self,
        factor: int = 2,
        channel_order: str = "channel_major",
        validate_args: bool = False,
        name: str = "squeeze",
    ):
        parameters = dict(locals())
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
            raise ValueError(f"`factor` must be an int >= 2. Received: factor={factor!r}")
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(
                f"`channel_order` must be one of {list(CHANNEL_ORDERS)}. "
                f"Received: channel_order={channel_order!r}"
            )
        if channel_order == "checkerboard" and factor != 2:
            raise ValueError(
                "channel_order='checkerboard' needs factor=2 (a 2x2 block has two checkerboard "
                f"colours). Received: factor={factor}"
            )
        self._factor = int(factor)
        self._channel_order = channel_order
        super().__init__(
            forward_min_event_ndims=3,
            inverse_min_event_ndims=3,
            is_constant_jacobian=True,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def factor(self) -> int:
        return self._factor

    @property
    def channel_order(self) -> str:
        return self._channel_order

    # --- shapes ------------------------------------------------------------------------------
    def _image_dims(self, shape, arg: str) -> tuple[int, int, int]:
        shape = tf.TensorShape(shape)
        if shape.rank is None or shape.rank < 3 or not shape[-3:].is_fully_defined():
            raise ValueError(
                f"Squeeze: `{arg}` must have a static event shape [height, width, channels]. "
                f"Received: {arg}.shape={shape}"
            )
        h, w, c = (int(d) for d in shape[-3:])
        return h, w, c

    def _check_forward_shape(self, shape, arg: str = "x") -> tuple[int, int, int]:
        h, w, c = self._image_dims(shape, arg)
        f = self._factor
        if h % f or w % f:
            raise ValueError(
                f"Squeeze: the height and width of `{arg}` must be divisible by factor={f}. "
                f"Received: event shape [{h}, {w}, {c}]"
            )
        return h, w, c

    def _check_inverse_shape(self, shape, arg: str = "y") -> tuple[int, int, int]:
        h, w, c = self._image_dims(shape, arg)
        ff = self._factor**2
        if c % ff:
            raise ValueError(
                f"Squeeze: the channels of `{arg}` must be divisible by factor**2={ff}. "
                f"Received: event shape [{h}, {w}, {c}]"
            )
        return h, w, c

    def _forward_event_shape(self, input_shape):
        if input_shape.rank is None or not input_shape[-3:].is_fully_defined():
            return tf.TensorShape(None)
        h, w, c = self._check_forward_shape(input_shape, "input_shape")
        f = self._factor
        return input_shape[:-3].concatenate([h // f, w // f, c * f * f])

    def _inverse_event_shape(self, output_shape):
        if output_shape.rank is None or not output_shape[-3:].is_fully_defined():
            return tf.TensorShape(None)
        h, w, c = self._check_inverse_shape(output_shape, "output_shape")
        f = self._factor
        return output_shape[:-3].concatenate([h * f, w * f, c // (f * f)])

    def _forward_event_shape_tensor(self, input_shape):
        f = self._factor
        return tf.concat([input_shape[:-3], input_shape[-3:-1] // f, input_shape[-1:] * f * f], 0)

    def _inverse_event_shape_tensor(self, output_shape):
        f = self._factor
        return tf.concat(
            [output_shape[:-3], output_shape[-3:-1] * f, output_shape[-1:] // (f * f)], 0
        )

    # --- transforms --------------------------------------------------------------------------
    def _forward(self, x):
        check_floating(x, "Squeeze", "x")
        _, _, c = self._check_forward_shape(x.shape)
        x = check_finite(x, "Squeeze", "x") if self.validate_args else x
        perm = _math.squeeze_channel_permutation(c, self._factor, self._channel_order)
        return _math.squeeze(x, self._factor, perm)

    def _inverse(self, y):
        check_floating(y, "Squeeze", "y")
        _, _, c = self._check_inverse_shape(y.shape)
        y = check_finite(y, "Squeeze", "y") if self.validate_args else y
        perm = _math.squeeze_channel_permutation(
            c // self._factor**2, self._factor, self._channel_order
        )
        inverse = None if perm is None else np.argsort(perm).astype(np.int32)
        return _math.unsqueeze(y, self._factor, inverse)

    def _forward_log_det_jacobian(self, x):
        return tf.zeros([], dtype=x.dtype)

    def _inverse_log_det_jacobian(self, y):
        return tf.zeros([], dtype=y.dtype)

    # --- config ------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._config(factor=self._factor, channel_order=self._channel_order)
