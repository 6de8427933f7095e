"""Shared machinery of the coupling bijectors: masks, input checks, the conditioner call.

Not public: :class:`AdditiveCoupling` and :class:`AffineCoupling` are.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import masks as masks_lib

tfb = tfp.bijectors

__all__ = [
    "CONDITIONER_INPUTS", "CouplingBase", "check_floating", "check_finite", "serialize_layer",
]

#: Accepted values of a coupling's ``conditioner_input``.
CONDITIONER_INPUTS = ("flat", "masked")


def check_floating(x: tf.Tensor, owner: str, arg: str) -> None:
    """Raises ``TypeError`` naming ``arg`` if ``x`` is not a floating-point tensor."""
    if not x.dtype.is_floating:
        raise TypeError(
            f"{owner}: `{arg}` must be a floating-point tensor (float32 or float64). "
            f"Received: {arg}.dtype={x.dtype.name}"
        )


def check_finite(x: tf.Tensor, owner: str, arg: str) -> tf.Tensor:
    """Returns ``x`` behind an in-graph check that every value is finite."""
    return tf.debugging.assert_all_finite(
        x, message=f"{owner}: `{arg}` must be finite, but it holds NaN or Inf values"
    )


def serialize_layer(layer: Any, arg: str, owner: str) -> dict | None:
    if layer is None:
        return None
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"{owner}.get_config: `{arg}` must be a registered keras.layers.Layer to be "
            f"serialised. Received: {arg}={layer!r}"
        )
    return keras.saving.serialize_keras_object(layer)


class CouplingBase(tfb.Bijector):
    """Common parts of a coupling ``x -> (x1, x2) -> (x1, f(x2; conditioner(x1)))``.

    Subclasses implement ``_transform(x2, params, inverse) -> (out2, log_det)`` and
    ``_conditioner_output_units(d2)`` and set ``_conditioner_arg``.

    ``conditioner_input`` says what the conditioner sees:

    * ``"flat"`` (default): ``x1`` as a flat ``[batch, d1]`` vector; it returns
      ``[batch, k * d2]`` (or a tuple of ``k`` tensors ``[batch, d2]``).
    * ``"masked"`` (image masks ``[H, W, C]``, for convolutional conditioners, RealNVP [2]
      §3.4): ``concat([x * mask, mask[..., :1]], -1)`` of shape ``[batch, H, W, C + 1]`` — the
      pass-through units in place, zeros elsewhere, plus the mask as an extra channel (as in
      RealNVP's code); it returns ``[batch, H, W, k * C]`` (or ``k`` tensors ``[batch, H, W, C]``)
      with the event shape, and the transformed units' parameters are gathered with the mask.
    """

    _conditioner_arg = "conditioner"

    def __init__(
        self,
        conditioner,
        num_masked: int | None,
        fraction_masked: float | None,
        mask,
        validate_args: bool,
        parameters: dict,
        name: str,
        conditioner_input: str = "flat",
    ):
        owner = type(self).__name__
        if conditioner_input not in CONDITIONER_INPUTS:
            raise ValueError(
                f"{owner}: `conditioner_input` must be one of {list(CONDITIONER_INPUTS)}. "
                f"Received: conditioner_input={conditioner_input!r}"
            )
        if conditioner_input == "masked" and (
            mask is None or masks_lib.as_mask(mask).event_ndims != 3
        ):
            raise ValueError(
                f"{owner}: conditioner_input='masked' needs an image `mask` over [H, W, C] "
                "(e.g. tfp_nice.masks.checkerboard or channel). Received: "
                + ("mask=None" if mask is None else
                   f"a mask over {list(masks_lib.as_mask(mask).event_shape)}")
            )
        self._conditioner_input = conditioner_input
        if not callable(conditioner):
            raise TypeError(
                f"{owner}: `{self._conditioner_arg}` must be callable (a Keras layer mapping "
                f"x1 -> parameters). Received: {self._conditioner_arg}={conditioner!r}"
            )
        given = [a for a, v in (("num_masked", num_masked), ("fraction_masked", fraction_masked),
                                ("mask", mask)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"{owner}: exactly one of `num_masked`, `fraction_masked` and `mask` must be "
                f"given. Received: num_masked={num_masked!r}, fraction_masked={fraction_masked!r}, "
                f"mask={'<given>' if mask is not None else None}"
            )
        if mask is not None:
            self._mask = masks_lib.as_mask(mask)
            min_event_ndims = self._mask.event_ndims
        else:
            self._mask = None
            if num_masked is not None and (
                isinstance(num_masked, bool) or not isinstance(num_masked, (int, np.integer))
            ):
                raise TypeError(
                    f"{owner}: `num_masked` must be an int. Received: num_masked={num_masked!r}"
                )
            if num_masked == 0:
                raise ValueError(
                    f"{owner}: `num_masked` must be in [1, D - 1] (negative: the last units). "
                    "Received: num_masked=0"
                )
            if fraction_masked is not None and not (
                isinstance(fraction_masked, (int, float)) and -1 < fraction_masked < 1
                and fraction_masked != 0
            ):
                raise ValueError(
                    f"{owner}: `fraction_masked` must be a nonzero float in (-1, 1). "
                    f"Received: fraction_masked={fraction_masked!r}"
                )
            min_event_ndims = 1
        self._conditioner = conditioner
        self._num_masked = num_masked
        self._fraction_masked = fraction_masked
        self._resolved: dict[int, masks_lib.Mask] = {}
        super().__init__(
            forward_min_event_ndims=min_event_ndims,
            is_constant_jacobian=False,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    # --- public introspection ----------------------------------------------------------------
    @property
    def conditioner(self):
        """The network ``x1 -> parameters`` (usually a Keras layer)."""
        return self._conditioner

    @property
    def mask(self) -> masks_lib.Mask | None:
        """The :class:`~tfp_nice.masks.Mask`, or ``None`` until a ``num_masked`` split sees data."""
        if self._mask is not None:
            return self._mask
        return next(iter(self._resolved.values()), None)

    @property
    def conditioner_input(self) -> str:
        """``"flat"`` (``x1`` as a vector) or ``"masked"`` (``[x * mask, mask]`` as an image)."""
        return self._conditioner_input

    @property
    def keras_layers(self) -> list:
        """Every Keras layer this bijector uses; a ``FlowModel`` owns them."""
        return [self._conditioner] if isinstance(self._conditioner, keras.layers.Layer) else []

    # --- helpers -----------------------------------------------------------------------------
    def _resolve_mask(self, x: tf.Tensor, arg: str) -> masks_lib.Mask:
        owner = type(self).__name__
        if self._mask is not None:
            n = self._mask.event_ndims
            got = tuple(x.shape[x.shape.rank - n :]) if x.shape.rank is not None else None
            if got is None or len(got) != n or got != self._mask.event_shape:
                raise ValueError(
                    f"{owner}: the event shape of `{arg}` must match the mask's "
                    f"{list(self._mask.event_shape)}. Received: {arg}.shape={x.shape}"
                )
            return self._mask
        d = x.shape[-1] if x.shape.rank else None
        if d is None:
            raise ValueError(
                f"{owner}: `{arg}` must have a statically known last dimension (the event size). "
                f"Received: {arg}.shape={x.shape}"
            )
        if d not in self._resolved:
            try:
                self._resolved[d] = masks_lib.half(d, self._num_masked, self._fraction_masked)
            except ValueError as e:
                raise ValueError(f"{owner}: {e}") from None
        return self._resolved[d]

    def _check(self, x: tf.Tensor, arg: str) -> tf.Tensor:
        check_floating(x, type(self).__name__, arg)
        if self.validate_args:
            x = check_finite(x, type(self).__name__, arg)
        return x

    def _call_conditioner(self, x1: tf.Tensor, num_transformed: int):
        """Runs the conditioner on ``x1 [batch..., d1]`` as a 2-D batch; returns its raw output."""
        d1 = x1.shape[-1]
        batch_rank = x1.shape.rank - 1
        if batch_rank == 1:
            out = self._conditioner(x1)
            lead = None
        else:
            lead = x1.shape[:-1]
            lead = lead.as_list() if lead.is_fully_defined() else tf.shape(x1)[:-1]
            out = self._conditioner(tf.reshape(x1, [-1, d1]))
        expected = self._conditioner_output_units(num_transformed)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if len(outs) not in expected or any(
            (o.shape.rank != 2 or o.shape[-1] != expected[len(outs)]) for o in outs
        ):
            want = " or ".join(
                (f"a tensor [batch, {u}]" if k == 1 else f"a tuple of {k} tensors [batch, {u}]")
                for k, u in expected.items()
            )
            got = [tuple(getattr(o, "shape", ())) for o in outs]
            raise ValueError(
                f"{type(self).__name__}: `{self._conditioner_arg}` must return {want} for "
                f"{num_transformed} transformed units. Received output shape(s): {got}"
            )
        outs = tuple(tf.cast(o, x1.dtype) for o in outs)
        if lead is not None:
            if isinstance(lead, list):
                outs = tuple(tf.reshape(o, lead + [o.shape[-1]]) for o in outs)
            else:
                outs = tuple(tf.reshape(o, tf.concat([lead, [o.shape[-1]]], 0)) for o in outs)
        return outs

    def _conditioner_output_units(self, num_transformed: int) -> dict[int, int]:
        """Maps "number of returned tensors" -> "last dimension of each"."""
        raise NotImplementedError

    def _conditioner_outputs(self, x1: tf.Tensor, num_transformed: int,
                             x: tf.Tensor | None = None, mask: masks_lib.Mask | None = None):
        """The conditioner's parameters for the transformed units, ``k`` tensors ``[..., d2]``
        (or one ``[..., k * d2]`` on the flat path): from ``x1`` (``"flat"``) or from the full
        ``x`` and ``mask`` (``"masked"``)."""
        if self._conditioner_input == "masked":
            if x is None or mask is None:
                raise ValueError(
                    f"{type(self).__name__}: conditioner_input='masked' needs the full input "
                    "`x` and its `mask`, not only the pass-through units x1"
                )
            return self._call_masked_conditioner(x, mask)
        return self._call_conditioner(x1, num_transformed)

    def _call_masked_conditioner(self, x: tf.Tensor, mask: masks_lib.Mask):
        """Runs the conditioner on ``[x * mask, mask]`` images; gathers the transformed units."""
        h, w, c = mask.event_shape
        m = tf.constant(mask.pattern, x.dtype)
        mask_channel = tf.zeros_like(x[..., :1]) + m[..., :1]
        inputs = tf.concat([x * m, mask_channel], axis=-1)
        lead = x.shape[: x.shape.rank - 3]
        lead = lead.as_list() if lead.is_fully_defined() else tf.shape(x)[: tf.rank(x) - 3]
        out = self._conditioner(tf.reshape(inputs, [-1, h, w, c + 1]))
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        expected = self._conditioner_output_units(c)  # channels in place of units
        if len(outs) not in expected or any(
            (o.shape.rank != 4 or tuple(o.shape[1:]) != (h, w, expected[len(outs)]))
            for o in outs
        ):
            want = " or ".join(
                (f"a tensor [batch, {h}, {w}, {u}]" if k == 1
                 else f"a tuple of {k} tensors [batch, {h}, {w}, {u}]")
                for k, u in expected.items()
            )
            got = [tuple(getattr(o, "shape", ())) for o in outs]
            raise ValueError(
                f"{type(self).__name__}: with conditioner_input='masked', "
                f"`{self._conditioner_arg}` must return {want} for images [{h}, {w}, {c}]. "
                f"Received output shape(s): {got}"
            )
        if len(outs) == 1 and expected[1] != c:
            outs = tuple(tf.split(outs[0], expected[1] // c, axis=-1))
        params = []
        for o in outs:
            o = tf.cast(o, x.dtype)
            shape = (lead + [h, w, c]) if isinstance(lead, list) else tf.concat(
                [lead, [h, w, c]], 0)
            params.append(mask.split(tf.reshape(o, shape))[1])
        return tuple(params)

    def _base_config(self) -> dict:
        owner = type(self).__name__
        return {
            self._conditioner_arg: serialize_layer(self._conditioner, self._conditioner_arg, owner),
            "num_masked": None if self._num_masked is None else int(self._num_masked),
            "fraction_masked": self._fraction_masked,
            "mask": None if self._mask is None else self._mask.get_config(),
            "conditioner_input": self._conditioner_input,
            "validate_args": self.validate_args,
            "name": self.name,
        }
