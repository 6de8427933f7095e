"""RealNVP's affine coupling as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import tensorflow as tf

from tfp_nice import _math, serialization
from tfp_nice.bijectors._coupling import CouplingBase
from tfp_nice.layers import TanhScale

__all__ = ["AffineCoupling"]


@serialization.register
class AffineCoupling(CouplingBase):
    """RealNVP affine coupling [2] with a selectable scale stabiliser.

    Split ``x`` by the mask into ``(x1, x2)``; the conditioner maps ``x1`` to a shift ``t``
    and a raw output ``h``, and the stabiliser maps ``h`` to the log-scale ``s``::

      forward:  y1 = x1,  y2 = x2 * exp(s(x1)) + t(x1)
      inverse:  x1 = y1,  x2 = (y2 - t(y1)) * exp(-s(y1))
      log|det dy/dx| = sum(s)

    ``scale`` picks the stabiliser (see :func:`tfp_nice._math.stabilise_log_scale`):
    ``"tanh"`` (``s = c * tanh(h)``, learned ``c``; default, RealNVP's code), ``"exp"``
    (``s = h``), ``"sigmoid"`` (``s = log sigmoid(h + 2)``, Glow) or ``"soft_clamp"``
    (``s = 2c/pi * atan(pi h / 2c)``, ``c = clamp``).

    One conditioner call serves both a pass and its log-det: ``_inverse`` stores the
    log-det in TFP's bijector cache, so ``TransformedDistribution.log_prob`` runs the
    network once per coupling.

    Args:
      shift_and_log_scale_fn: maps ``x1 [batch, d1]`` (and any condition keyword arguments,
        ``fn(x1, **condition)``) to either a tuple ``(t, h)`` of two ``[batch, d2]`` tensors
        or one ``[batch, 2 * d2]`` tensor (split as ``[t, h]``). As in ``tfb.RealNVP``, each
        tensor of the tuple may broadcast against ``[batch, d2]`` (``[batch, 1]``, ``[1]``...)
        and ``None`` means zero. Usually a :class:`tfp_nice.layers.MLPConditioner` (its
        ``output_units``, ``2 * d2``, are set from the split when not given).
      num_masked, fraction_masked, mask: the split; exactly one is given (see
        :class:`~tfp_nice.bijectors.AdditiveCoupling`).
      scale: the stabiliser name.
      clamp: the bound for ``"soft_clamp"``.
      tanh_scale: the :class:`tfp_nice.layers.TanhScale` layer holding ``c`` for
        ``scale="tanh"``; created when not given.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.
      conditioner_input: ``"flat"`` (default: the conditioner maps ``x1 [batch, d1]``) or
        ``"masked"`` (image masks: it maps ``[x * mask, mask]`` of shape ``[batch, H, W, C + 1]``
        to ``[batch, H, W, 2C]``, e.g. a :class:`tfp_nice.layers.ResNetConditioner`).
      conditional: whether a conditional :class:`~tfp_nice.FlowModel` passes its context
        to the conditioner (default ``True``).

    Example:
      >>> import numpy as np
      >>> from tfp_nice.layers import MLPConditioner
      >>> b = AffineCoupling(MLPConditioner(output_units=4, hidden_units=(8,)), num_masked=2)
      >>> x = np.ones([3, 4], "float32")
      >>> b.forward_log_det_jacobian(x, event_ndims=1).shape
      TensorShape([3])

    References:
      [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803,
          eq. (6)-(9).
    """

    _conditioner_arg = "shift_and_log_scale_fn"
    _num_parameters = 2
    _elementwise_masked = True

    def __init__(
        self,
        shift_and_log_scale_fn,
        num_masked: int | None = None,
        fraction_masked: float | None = None,
        mask=None,
        scale: str = "tanh",
        clamp: float = 2.0,
        tanh_scale: TanhScale | None = None,
        validate_args: bool = False,
        name: str = "affine_coupling",
        conditioner_input: str = "flat",
        conditional: bool = True,
    ):
        parameters = dict(locals())
        _math.check_stabiliser(scale)
        if not isinstance(clamp, (int, float)) or not clamp > 0:
            raise ValueError(f"`clamp` must be a positive float. Received: clamp={clamp!r}")
        if scale == "tanh" and tanh_scale is None:
            policy = getattr(shift_and_log_scale_fn, "dtype_policy", None)
            tanh_scale = TanhScale(name=f"{name}_tanh_scale", dtype=policy)
        self._scale = scale
        self._clamp = float(clamp)
        self._tanh_scale = tanh_scale if scale == "tanh" else None
        super().__init__(
            shift_and_log_scale_fn, num_masked, fraction_masked, mask, validate_args,
            parameters, name, conditioner_input, conditional
        )

    @property
    def scale(self) -> str:
        """The stabiliser name."""
        return self._scale

    @property
    def keras_layers(self) -> list:
        extra = [self._tanh_scale] if self._tanh_scale is not None else []
        return super().keras_layers + extra

    def _conditioner_output_units(self, num_transformed: int) -> dict[int, int]:
        return {1: 2 * num_transformed, 2: num_transformed}

    def _parameters_from(self, outs: tuple) -> tuple:
        """``(shift, log_scale)`` from the conditioner's ``(t, h)`` or ``[t, h]``; a ``None``
        entry means zero (no shift, or no scaling), as in ``tfb.RealNVP``."""
        shift, h = outs if len(outs) == 2 else tf.split(outs[0], 2, axis=-1)
        if h is None:
            return shift, None
        if self._scale == "tanh":
            return shift, tf.cast(self._tanh_scale(h), h.dtype)
        return shift, _math.stabilise_log_scale(h, self._scale, clamp=self._clamp)

    def _elementwise_parameters(self, outs: tuple, mask) -> tuple:
        """As :meth:`_parameters_from` on whole images: the learned ``c`` of ``"tanh"`` (one
        per transformed unit, ``[d2]``, as the split form) placed on the transformed units."""
        if self._scale != "tanh":
            return self._parameters_from(outs)
        shift, h = outs if len(outs) == 2 else tf.split(outs[0], 2, axis=-1)
        if h is None:
            return shift, None
        if not self._tanh_scale.built:
            self._tanh_scale.build((None, mask.num_transformed))
        c = tf.cast(self._tanh_scale.scale, h.dtype)[None]
        c = mask.merge(tf.zeros([1, mask.num_masked], h.dtype), c)[0]  # [H, W, C]
        return shift, _math.stabilise_log_scale(h, "tanh", tanh_scale=c)

    def coupling_transform(self, v2: tf.Tensor, params: tuple, inverse: bool):
        """``y2 = x2 * exp(s) + t`` (or its inverse) and its log-det ``±sum(s)``; ``t`` and
        ``s`` broadcast against ``x2``."""
        shift, log_scale = params
        shift = tf.zeros([], v2.dtype) if shift is None else shift
        if log_scale is None:  # shift only: volume preserving
            fn = _math.additive_inverse if inverse else _math.additive_forward
            return fn(v2, shift), tf.zeros([], v2.dtype)
        fn = _math.affine_inverse if inverse else _math.affine_forward
        return fn(v2, shift, log_scale)

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        config = self._base_config()
        config.update(
            scale=self._scale,
            clamp=self._clamp,
            tanh_scale=serialization.serialize_layer(self._tanh_scale, "tanh_scale",
                                                     "AffineCoupling"),
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> AffineCoupling:
        return cls._from_base_config(config, "shift_and_log_scale_fn", "tanh_scale")
