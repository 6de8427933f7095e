"""NICE's additive coupling as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_nice import _math
from tfp_nice.bijectors._coupling import CouplingBase, check_floating

__all__ = ["AdditiveCoupling"]


class AdditiveCoupling(CouplingBase):
    """NICE additive coupling [1]: volume preserving, exactly invertible.

    Split ``x`` by the mask into ``(x1, x2)`` (``x1`` passes through, ``x2`` is transformed)::

      forward:  y1 = x1,  y2 = x2 + m(x1)
      inverse:  x1 = y1,  x2 = y2 - m(y1)
      log|det J| = 0

    ``is_constant_jacobian`` is ``False``: the log-det is constant, the Jacobian is not.

    Args:
      shift_fn: the network ``m``; maps ``x1 [batch, d1]`` to ``[batch, d2]``. Usually a
        :class:`tfp_nice.layers.MLPConditioner` with ``output_units=d2``.
      num_masked: the first ``num_masked`` units pass through (negative: the last).
      fraction_masked: the same as a fraction of the event size, like ``tfb.RealNVP``.
      mask: a :class:`tfp_nice.masks.Mask` (or boolean array) over the event shape; use this
        for even/odd, checkerboard or channel splits and for image event shapes.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.
      conditioner_input: ``"flat"`` (default: ``m`` maps ``x1 [batch, d1]``) or ``"masked"``
        (image masks: ``m`` maps ``[x * mask, mask]`` of shape ``[batch, H, W, C + 1]`` to
        ``[batch, H, W, C]``, e.g. a :class:`tfp_nice.layers.ResNetConditioner`).

    Exactly one of ``num_masked``, ``fraction_masked`` and ``mask`` is given.

    Example:
      >>> import numpy as np, tensorflow_probability as tfp
      >>> from tfp_nice.layers import MLPConditioner
      >>> b = AdditiveCoupling(MLPConditioner(output_units=2, hidden_units=(8,)), num_masked=2)
      >>> x = np.ones([3, 4], "float32")
      >>> bool(np.allclose(b.inverse(b.forward(x)), x))
      True

    References:
      [1] Dinh, Krueger, Bengio. NICE. arXiv:1410.8516, eq. (4)-(5).
    """

    _conditioner_arg = "shift_fn"

    def __init__(
        self,
        shift_fn,
        num_masked: int | None = None,
        fraction_masked: float | None = None,
        mask=None,
        validate_args: bool = False,
        name: str = "additive_coupling",
        conditioner_input: str = "flat",
    ):
        parameters = dict(locals())
        super().__init__(
            shift_fn, num_masked, fraction_masked, mask, validate_args, parameters, name,
            conditioner_input,
        )

    def _conditioner_output_units(self, num_transformed: int) -> dict[int, int]:
        return {1: num_transformed}

    def _shift(self, x1: tf.Tensor, num_transformed: int, x=None, mask=None) -> tf.Tensor:
        return self._conditioner_outputs(x1, num_transformed, x, mask)[0]

    def _forward(self, x):
        x = self._check(x, "x")
        mask = self._resolve_mask(x, "x")
        x1, x2 = mask.split(x)
        shift = self._shift(x1, mask.num_transformed, x, mask)
        return mask.merge(x1, _math.additive_forward(x2, shift))

    def _inverse(self, y):
        y = self._check(y, "y")
        mask = self._resolve_mask(y, "y")
        y1, y2 = mask.split(y)
        shift = self._shift(y1, mask.num_transformed, y, mask)
        return mask.merge(y1, _math.additive_inverse(y2, shift))

    def _forward_log_det_jacobian(self, x):
        check_floating(x, "AdditiveCoupling", "x")
        return tf.zeros([], dtype=x.dtype)

    def _inverse_log_det_jacobian(self, y):
        check_floating(y, "AdditiveCoupling", "y")
        return tf.zeros([], dtype=y.dtype)

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._base_config()

    @classmethod
    def from_config(cls, config: dict) -> AdditiveCoupling:
        config = dict(config)
        config["shift_fn"] = keras.saving.deserialize_keras_object(config["shift_fn"])
        return cls(**config)
