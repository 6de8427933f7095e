"""NICE's diagonal scaling layer as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice._internal.checks import check_finite, check_floating
from tfp_nice.bijectors._base import LayerBijector
from tfp_nice.layers import LogScale

tfb = tfp.bijectors

__all__ = ["DiagonalScale"]


@serialization.register
class DiagonalScale(LayerBijector):
    """NICE's diagonal scaling [1] §3.3 with a learned log-scale ``s`` (a Keras weight)::

      forward:  y = x * exp(s)
      inverse:  x = y * exp(-s)
      log|det dy/dx| = sum(s)

    The Jacobian does not depend on ``x`` (``is_constant_jacobian=True``). ``s`` has the
    event shape and starts at zero (the identity).

    Args:
      event_shape: the event shape, e.g. ``[784]`` or ``[8, 8, 1]``; creates a
        :class:`tfp_nice.layers.LogScale` layer. Give this or ``log_scale``.
      log_scale: an existing :class:`~tfp_nice.layers.LogScale` layer to use.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.

    Example:
      >>> import numpy as np
      >>> b = DiagonalScale(event_shape=[3])
      >>> float(b.forward_log_det_jacobian(np.ones([2, 3], "float32"), event_ndims=1))
      0.0

    References:
      [1] Dinh, Krueger, Bengio. NICE. arXiv:1410.8516, §3.3.
    """

    _layer_args = ("log_scale",)

    def __init__(
        self,
        event_shape: Sequence[int] | None = None,
        log_scale: LogScale | None = None,
        validate_args: bool = False,
        name: str = "diagonal_scale",
    ):
        parameters = dict(locals())
        if (event_shape is None) == (log_scale is None):
            raise ValueError(
                "DiagonalScale: exactly one of `event_shape` and `log_scale` must be given. "
                f"Received: event_shape={event_shape!r}, log_scale={log_scale!r}"
            )
        if log_scale is None:
            log_scale = LogScale(event_shape, name=f"{name}_log_scale")
        elif not isinstance(log_scale, LogScale):
            raise TypeError(
                "DiagonalScale: `log_scale` must be a tfp_nice.layers.LogScale layer. "
                f"Received: log_scale={log_scale!r}"
            )
        self._log_scale = log_scale
        super().__init__(
            forward_min_event_ndims=len(log_scale.event_shape),
            is_constant_jacobian=True,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def log_scale(self) -> LogScale:
        """The layer holding ``s``."""
        return self._log_scale

    @property
    def keras_layers(self) -> list:
        return [self._log_scale]

    def _s(self, x: tf.Tensor, arg: str) -> tf.Tensor:
        check_floating(x, "DiagonalScale", arg)
        n = len(self._log_scale.event_shape)
        got = tuple(x.shape[x.shape.rank - n :]) if x.shape.rank is not None else None
        if got != self._log_scale.event_shape:
            raise ValueError(
                f"DiagonalScale: the event shape of `{arg}` must be "
                f"{list(self._log_scale.event_shape)}. Received: {arg}.shape={x.shape}"
            )
        return tf.cast(self._log_scale(), x.dtype)

    def _forward(self, x):
        s = self._s(x, "x")
        x = check_finite(x, "DiagonalScale", "x") if self.validate_args else x
        return _math.diagonal_scale_forward(x, s, len(self._log_scale.event_shape))[0]

    def _inverse(self, y):
        s = self._s(y, "y")
        y = check_finite(y, "DiagonalScale", "y") if self.validate_args else y
        return _math.diagonal_scale_inverse(y, s, len(self._log_scale.event_shape))[0]

    def _forward_log_det_jacobian(self, x):
        return _math.diagonal_scale_log_det(self._s(x, "x"), len(self._log_scale.event_shape))

    def _inverse_log_det_jacobian(self, y):
        return -_math.diagonal_scale_log_det(self._s(y, "y"), len(self._log_scale.event_shape))

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._config(log_scale=self._log_scale)
