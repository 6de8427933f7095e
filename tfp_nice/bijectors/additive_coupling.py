"""NICE's additive coupling as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import tensorflow as tf

from tfp_nice import _math, serialization
from tfp_nice.bijectors._coupling import CouplingBase

__all__ = ["AdditiveCoupling"]


@serialization.register
class AdditiveCoupling(CouplingBase):
    """NICE additive coupling [1]: volume preserving, exactly invertible.

    Split ``x`` by the mask into ``(x1, x2)`` (``x1`` passes through, ``x2`` is transformed)::

      forward:  y1 = x1,  y2 = x2 + m(x1)
      inverse:  x1 = y1,  x2 = y2 - m(y1)
      log|det J| = 0

    ``is_constant_jacobian`` is ``False``: the log-det is constant, the Jacobian is not.

    Args:
      shift_fn: the network ``m``; maps ``x1 [batch, d1]`` (and any condition keyword
        arguments, ``m(x1, **condition)``) to ``[batch, d2]``, or a shape that broadcasts
        against it (``[batch, 1]``, ``[1]``...) as in ``tfb.RealNVP``. Usually a
        :class:`tfp_nice.layers.MLPConditioner` (its ``output_units``, ``d2``, are set from
        the split when not given).
      num_masked: the first ``num_masked`` units pass through (negative: the last).
      fraction_masked: the same as a fraction of the event size, like ``tfb.RealNVP``.
      mask: a :class:`tfp_nice.masks.Mask` (or boolean array) over the event shape; use this
        for even/odd, checkerboard or channel splits and for image event shapes.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.
      conditioner_input: ``"flat"`` (default: ``m`` maps ``x1 [batch, d1]``) or ``"masked"``
        (image masks: ``m`` maps ``[x * mask, mask]`` of shape ``[batch, H, W, C + 1]`` to
        ``[batch, H, W, C]``, e.g. a :class:`tfp_nice.layers.ResNetConditioner`).
      conditional: whether a conditional :class:`~tfp_nice.FlowModel` passes its context
        to ``m`` (``m(x1, context=c)``; default ``True``).

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
    _elementwise_masked = True

    def __init__(
        self,
        shift_fn,
        num_masked: int | None = None,
        fraction_masked: float | None = None,
        mask=None,
        validate_args: bool = False,
        name: str = "additive_coupling",
        conditioner_input: str = "flat",
        conditional: bool = True,
    ):
        parameters = dict(locals())
        super().__init__(
            shift_fn, num_masked, fraction_masked, mask, validate_args, parameters, name,
            conditioner_input, conditional,
        )

    volume_preserving = True

    def _conditioner_output_units(self, num_transformed: int) -> dict[int, int]:
        return {1: num_transformed}

    def coupling_transform(self, v2: tf.Tensor, params: tuple, inverse: bool):
        """``y2 = x2 + m`` (``x2 = y2 - m`` inverse); log-det ``None`` (exactly 0)."""
        fn = _math.additive_inverse if inverse else _math.additive_forward
        shift = tf.zeros([], v2.dtype) if params[0] is None else params[0]
        return fn(v2, shift), None

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._base_config()

    @classmethod
    def from_config(cls, config: dict) -> AdditiveCoupling:
        return cls._from_base_config(config, "shift_fn")
