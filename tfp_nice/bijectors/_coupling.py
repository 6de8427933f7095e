"""The shared base of the coupling bijectors: split, conditioner call, transform, merge.

Not public: :class:`~tfp_nice.AdditiveCoupling` and :class:`~tfp_nice.AffineCoupling` are.

A coupling is ``x -> (x1, x2) -> (x1, f(x2; conditioner(x1, **condition)))``. Subclasses say
what ``f`` is through a small package-internal protocol, which :mod:`tfp_nice.reversible` also
uses (through ``isinstance(b, CouplingBase)``, so subclasses take its fused backward pass):

* :meth:`CouplingBase.coupling_split` — the checked input, its mask and halves ``(x1, x2)``;
* :meth:`CouplingBase.coupling_parameters` — the conditioner's parameters for ``x2``, given
  ``x1`` and the condition keyword arguments;
* :meth:`CouplingBase.coupling_transform` — ``f`` (or ``f^-1``) of ``x2`` and its log-det.

The condition follows TFP's ``bijector_kwargs`` convention: ``b.forward(x, context=c)`` (and
``inverse`` and both log-dets) pass ``context=c`` on to the conditioner, so
``tfb.Chain([...]).forward(x, coupling_name={"context": c})`` and
``TransformedDistribution.log_prob(x, bijector_kwargs=...)`` route it as for any TFP bijector.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice import masks as masks_lib
from tfp_nice._internal import compat
from tfp_nice._internal.checks import check_finite, check_floating, is_int
from tfp_nice.bijectors import _conditioner_io as io
from tfp_nice.bijectors._base import LayerBijector

tfb = tfp.bijectors

__all__ = ["CONDITIONER_INPUTS", "CouplingBase"]

#: Accepted values of a coupling's ``conditioner_input``.
CONDITIONER_INPUTS = ("flat", "masked")


class CouplingBase(LayerBijector):
    """Common parts of a coupling ``x -> (x1, x2) -> (x1, f(x2; conditioner(x1)))``.

    Subclasses implement :meth:`coupling_transform` and ``_conditioner_output_units`` and
    set ``_conditioner_arg``; a volume-preserving one sets ``volume_preserving = True``
    (its log-det is 0 without running the conditioner).

    ``conditioner_input`` says what the conditioner sees:

    * ``"flat"`` (default): ``x1`` as a flat ``[batch, d1]`` vector; it returns
      ``[batch, k * d2]`` (or a tuple of ``k`` tensors ``[batch, d2]``).
    * ``"masked"`` (image masks ``[H, W, C]``, for convolutional conditioners, RealNVP [2]
      §3.4): ``concat([x * mask, mask[..., :1]], -1)`` of shape ``[batch, H, W, C + 1]`` — the
      pass-through units in place, zeros elsewhere, plus the mask as an extra channel (as in
      RealNVP's code); it returns ``[batch, H, W, k * C]`` (or ``k`` tensors ``[batch, H, W, C]``)
      with the event shape. Couplings whose zero parameters are the identity (affine,
      additive: ``_elementwise_masked``) then run on whole images, RealNVP's elementwise
      formulation ``y = x·m + (1 − m)·f(x; θ)`` with ``θ·(1 − m)`` (log-det ``Σ (1 − m)·s``), so
      no unit is gathered or scattered; the protocol below still splits with the mask.
    """

    _conditioner_arg = "conditioner"
    #: ``True`` for couplings whose log-det is always 0 (additive).
    volume_preserving = False
    #: How many parameters the conditioner returns per transformed unit when it returns one
    #: tensor per parameter (these may broadcast against ``x2``, as in ``tfb.RealNVP``).
    _num_parameters = 1
    #: ``True`` where :meth:`coupling_transform` with every parameter zero is exactly the
    #: identity with log-det 0: a ``"masked"`` coupling then runs elementwise (no gathers).
    _elementwise_masked = False

    def __init__(self, conditioner, num_masked: int | None, fraction_masked: float | None,
                 mask, validate_args: bool, parameters: dict, name: str,
                 conditioner_input: str = "flat", conditional: bool = True):
        self._conditioner_input = self._check_conditioner_input(conditioner_input, mask)
        if not isinstance(conditional, bool):
            raise TypeError(
                f"{self._owner}: `conditional` must be a bool. "
                f"Received: conditional={conditional!r}"
            )
        self._conditional = conditional
        if not callable(conditioner):
            raise TypeError(
                f"{self._owner}: `{self._conditioner_arg}` must be callable (a Keras layer "
                f"mapping x1 -> parameters). Received: {self._conditioner_arg}={conditioner!r}"
            )
        self._mask = self._check_split(num_masked, fraction_masked, mask)
        self._conditioner = conditioner
        self._num_masked = num_masked
        self._fraction_masked = fraction_masked
        self._fraction_rounding = "round"  # "truncate": configs saved before TFP's rounding
        self._resolved: dict[int, masks_lib.Mask] = {}
        super().__init__(
            forward_min_event_ndims=self._mask.event_ndims if self._mask is not None else 1,
            is_constant_jacobian=False,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def _owner(self) -> str:
        return type(self).__name__

    def _check_conditioner_input(self, conditioner_input: str, mask) -> str:
        if conditioner_input not in CONDITIONER_INPUTS:
            raise ValueError(
                f"{self._owner}: `conditioner_input` must be one of {list(CONDITIONER_INPUTS)}. "
                f"Received: conditioner_input={conditioner_input!r}"
            )
        if conditioner_input == "masked" and (
            mask is None or masks_lib.as_mask(mask).event_ndims != 3
        ):
            raise ValueError(
                f"{self._owner}: conditioner_input='masked' needs an image `mask` over "
                "[H, W, C] (e.g. tfp_nice.masks.checkerboard or channel). Received: "
                + ("mask=None" if mask is None else
                   f"a mask over {list(masks_lib.as_mask(mask).event_shape)}")
            )
        return conditioner_input

    def _check_split(self, num_masked, fraction_masked, mask) -> masks_lib.Mask | None:
        """The mask if given; otherwise checks the ``num_masked``/``fraction_masked`` split."""
        given = [a for a, v in (("num_masked", num_masked), ("fraction_masked", fraction_masked),
                                ("mask", mask)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"{self._owner}: exactly one of `num_masked`, `fraction_masked` and `mask` "
                f"must be given. Received: num_masked={num_masked!r}, "
                f"fraction_masked={fraction_masked!r}, "
                f"mask={'<given>' if mask is not None else None}"
            )
        if mask is not None:
            return masks_lib.as_mask(mask)
        if num_masked is not None and not is_int(num_masked):
            raise TypeError(
                f"{self._owner}: `num_masked` must be an integer. "
                f"Received: num_masked={num_masked!r}"
            )
        if num_masked == 0:
            raise ValueError(
                f"{self._owner}: `num_masked` must be in [1, D - 1] (negative: the last units). "
                "Received: num_masked=0"
            )
        if fraction_masked is not None:
            masks_lib.check_fraction_masked(fraction_masked, self._owner)
        return None

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
    def _masked_size(self) -> int | None:
        """``tfb.RealNVP``'s (private) signed count of pass-through units: negative when the
        last units pass through; ``None`` until a ``fraction_masked`` split sees data."""
        if self._num_masked is not None:
            return int(self._num_masked)
        m = self.mask
        if m is None:
            return None
        return m.num_masked if self._fraction_masked is None or self._fraction_masked > 0 else (
            -m.num_masked)

    @property
    def conditional(self) -> bool:
        """Whether a conditional :class:`~tfp_nice.FlowModel` passes its context to this
        coupling (condition keyword arguments given directly always reach the conditioner)."""
        return self._conditional

    @property
    def conditioner_input(self) -> str:
        """``"flat"`` (``x1`` as a vector) or ``"masked"`` (``[x * mask, mask]`` as an image)."""
        return self._conditioner_input

    @property
    def keras_layers(self) -> list:
        """Every Keras layer this bijector uses; a ``FlowModel`` owns them."""
        return [self._conditioner] if isinstance(self._conditioner, keras.layers.Layer) else []

    # --- the protocol ------------------------------------------------------------------------
    def coupling_split(self, x: tf.Tensor, arg: str):
        """``(mask, x1, x2)``: ``x`` checked, its mask, the pass-through and transformed units
        (flattened: ``[batch..., d1]`` and ``[batch..., d2]``)."""
        check_floating(x, self._owner, arg)
        if self.validate_args:
            x = check_finite(x, self._owner, arg)
        mask = self._resolve_mask(x, arg)
        x1, x2 = mask.split(x)
        return mask, x1, x2

    def coupling_parameters(self, x1: tf.Tensor, x: tf.Tensor, mask: masks_lib.Mask,
                            **condition) -> tuple:
        """The conditioner's parameters for the transformed units, each ``[batch..., d2]``
        (or broadcasting against it).

        ``x1`` feeds a ``"flat"`` conditioner; a ``"masked"`` one sees ``[x * mask, mask]``
        (which depends on the pass-through units only). ``condition`` (TFP's condition
        keyword arguments) goes to the conditioner too. Subclasses map the raw outputs
        (``_parameters_from``).
        """
        if self._conditioner_input == "masked":
            outs = self._run_conditioner_masked(x, mask, condition)
        else:
            outs = self._run_conditioner_flat(x1, mask.num_transformed, condition)
        return self._parameters_from(outs)

    def coupling_transform(self, v2: tf.Tensor, params: tuple, inverse: bool):
        """``f(v2)`` (or ``f^-1``) for the given parameters: ``(out2, log_det or None)``; the
        log-det is summed over the flattened units (``None``: exactly zero)."""
        raise NotImplementedError

    def _parameters_from(self, outs: tuple) -> tuple:
        """Maps the conditioner's raw outputs (``k`` tensors ``[..., d2]``) to parameters."""
        return outs

    def _elementwise_parameters(self, outs: tuple, mask: masks_lib.Mask) -> tuple:
        """:meth:`_parameters_from` for whole-image outputs ``[..., H, W, C]`` (the elementwise
        form); subclasses with per-unit weights place them on the transformed units."""
        return self._parameters_from(outs)

    def _conditioner_output_units(self, num_transformed: int) -> dict[int, int]:
        """Maps "number of returned tensors" -> "last dimension of each"."""
        raise NotImplementedError

    # --- tfb.Bijector ------------------------------------------------------------------------
    def _run(self, x: tf.Tensor, inverse: bool, condition: dict):
        if self._conditioner_input == "masked" and self._elementwise_masked:
            return self._run_elementwise(x, inverse, condition)
        mask, x1, x2 = self.coupling_split(x, "y" if inverse else "x")
        params = self.coupling_parameters(x1, x, mask, **condition)
        out2, ldj = self.coupling_transform(x2, params, inverse)
        return mask.merge(x1, out2), ldj

    def _forward(self, x, **condition):
        y, fldj = self._run(x, False, condition)
        if fldj is not None:
            compat.store_forward_log_det(self, x, fldj, **condition)
        return y

    def _inverse(self, y, **condition):
        x, ildj = self._run(y, True, condition)
        if ildj is not None:
            compat.store_inverse_log_det(self, y, ildj, **condition)
        return x

    def _log_det(self, x: tf.Tensor, inverse: bool, condition: dict) -> tf.Tensor:
        if self.volume_preserving:
            check_floating(x, self._owner, "y" if inverse else "x")
            return tf.zeros([], dtype=x.dtype)
        ldj = self._run(x, inverse, condition)[1]
        return tf.zeros([], dtype=x.dtype) if ldj is None else ldj

    def _forward_log_det_jacobian(self, x, **condition):
        return self._log_det(x, False, condition)

    def _inverse_log_det_jacobian(self, y, **condition):
        return self._log_det(y, True, condition)

    # --- helpers -----------------------------------------------------------------------------
    def _resolve_mask(self, x: tf.Tensor, arg: str) -> masks_lib.Mask:
        if self._mask is not None:
            n = self._mask.event_ndims
            got = tuple(x.shape[x.shape.rank - n :]) if x.shape.rank is not None else None
            if got is None or len(got) != n or got != self._mask.event_shape:
                raise ValueError(
                    f"{self._owner}: the event shape of `{arg}` must match the mask's "
                    f"{list(self._mask.event_shape)}. Received: {arg}.shape={x.shape}"
                )
            return self._mask
        d = x.shape[-1] if x.shape.rank else None
        if d is None:
            raise ValueError(
                f"{self._owner}: `{arg}` must have a statically known last dimension (the "
                f"event size). Received: {arg}.shape={x.shape}"
            )
        if d not in self._resolved:
            try:
                self._resolved[d] = masks_lib.half(d, self._num_masked, self._fraction_masked,
                                                   rounding=self._fraction_rounding)
            except ValueError as e:
                raise ValueError(f"{self._owner}: {e}") from None
        return self._resolved[d]

    def _run_conditioner_flat(self, x1: tf.Tensor, num_transformed: int, condition: dict
                              ) -> tuple:
        """Runs the conditioner on ``x1 [batch..., d1]`` as a 2-D batch (the condition too)."""
        lead = _math.leading_shape(x1, 1)
        inputs = tf.reshape(x1, [-1, x1.shape[-1]])
        expected = self._conditioner_output_units(num_transformed)
        io.infer_output_units(self._conditioner, self._conditioner_units(num_transformed))
        out = self._conditioner(inputs, **io.flatten_condition(condition, lead, self._owner, "x"))
        outs = io.outputs_to_tuple(out)
        rows = inputs.shape[0]
        if expected is not None and io.output_shape_error(
                outs, rows, expected, self._num_parameters) is not None:
            raise self._output_error(outs, num_transformed, (),
                                     f"for {num_transformed} transformed units")
        return io.reshape_outputs(outs, rows, lead, x1.dtype)

    def _run_elementwise(self, x: tf.Tensor, inverse: bool, condition: dict):
        """The coupling on whole images ``[..., H, W, C]``: ``f`` with the parameters of the
        pass-through units zeroed, ``y = x·m + (1 − m)·f(x; θ)`` exactly (``f(x; 0) = x``);
        log-det ``Σ_{H,W,C} (1 − m)·s``."""
        arg = "y" if inverse else "x"
        check_floating(x, self._owner, arg)
        if self.validate_args:
            x = check_finite(x, self._owner, arg)
        mask = self._resolve_mask(x, arg)
        outs = self._run_conditioner_masked(x, mask, condition, gather=False)
        keep = tf.constant(~mask.pattern, x.dtype)  # 1 where units are transformed
        params = self._elementwise_parameters(outs, mask)
        params = tuple(None if p is None else p * keep for p in params)
        out, ldj = self.coupling_transform(x, params, inverse)
        return out, None if ldj is None else tf.reduce_sum(ldj, axis=[-2, -1])

    def _run_conditioner_masked(self, x: tf.Tensor, mask: masks_lib.Mask, condition: dict,
                                gather: bool = True) -> tuple:
        """Runs the conditioner on ``[x * mask, mask]`` images; gathers the transformed units
        (``gather=False``: returns whole images ``[..., H, W, C]``)."""
        h, w, c = mask.event_shape
        m = tf.constant(mask.pattern, x.dtype)
        inputs = tf.concat([x * m, tf.zeros_like(x[..., :1]) + m[..., :1]], axis=-1)
        lead = _math.leading_shape(x, 3)
        expected = self._conditioner_output_units(c)
        io.infer_output_units(self._conditioner, self._conditioner_units(c))
        cond = io.flatten_condition(condition, lead, self._owner, "x")
        outs = io.outputs_to_tuple(self._conditioner(tf.reshape(inputs, [-1, h, w, c + 1]),
                                                     **cond))
        if expected is None:
            return tuple(_math.reshape_leading(tf.cast(o, x.dtype), lead, 3) for o in outs)
        if io.output_shape_error(outs, None, expected, self._num_parameters, (h, w)) is not None:
            raise self._output_error(outs, c, (h, w), f"for images [{h}, {w}, {c}]",
                                     "with conditioner_input='masked', ")
        if len(outs) == 1 and expected[1] != c:
            outs = tuple(tf.split(outs[0], expected[1] // c, axis=-1))
        if not gather:
            return tuple(_math.reshape_leading(tf.cast(o, x.dtype), lead, 3) for o in outs)
        return tuple(mask.split(_math.reshape_leading(tf.cast(o, x.dtype), lead, 3))[1]
                     for o in outs)

    def _conditioner_units(self, num_transformed: int) -> int | None:
        """The width of the conditioner's single-tensor output (``None``: not known)."""
        expected = self._conditioner_output_units(num_transformed)
        return None if expected is None else expected[1]

    def _output_error(self, outs: tuple, units: int, spatial: tuple, target: str,
                      context: str = "") -> ValueError:
        """The ``ValueError`` describing the shapes the conditioner must return
        (``[batch, *spatial, u]``, one tensor or ``k``)."""
        expected = self._conditioner_output_units(units)
        dims = "".join(f"{d}, " for d in spatial)
        want = " or ".join(
            (f"a tensor [batch, {dims}{u}]" if k == 1
             else f"a tuple of {k} tensors [batch, {dims}{u}]")
            for k, u in expected.items()
        )
        hint = "" if spatial else (
            " (one tensor per parameter may also broadcast against [batch, "
            f"{units}]: [batch, 1], [{units}], [1] or a scalar)")
        got = [None if o is None else tuple(o.shape) for o in outs]
        return ValueError(
            f"{self._owner}: {context}`{self._conditioner_arg}` must return {want} "
            f"{target}{hint}. Received output shape(s): {got}"
        )

    def _base_config(self, conditioner: bool = True) -> dict:
        """The split, flags and (with ``conditioner``) the conditioner layer's config."""
        config = {} if not conditioner else {
            self._conditioner_arg: serialization.serialize_layer(
                self._conditioner, self._conditioner_arg, self._owner)}
        return config | {
            "num_masked": None if self._num_masked is None else int(self._num_masked),
            "fraction_masked": self._fraction_masked,
            "mask": None if self._mask is None else self._mask.get_config(),
            "conditioner_input": self._conditioner_input,
            "fraction_rounding": self._fraction_rounding,
            "conditional": self._conditional,
            "validate_args": self.validate_args,
            "name": self.name,
        }

    @classmethod
    def _from_base_config(cls, config: dict, *keys: str):
        """``cls(**config)`` with the Keras layers under ``keys`` deserialised.

        Configs saved before ``fraction_masked`` rounded as ``tfb.RealNVP`` have no
        ``fraction_rounding``: they keep truncating, so their weights still fit.
        """
        config = dict(config)
        for key in keys:
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        legacy = "truncate" if config.get("fraction_masked") is not None else "round"
        rounding = config.pop("fraction_rounding", legacy)
        bijector = cls(**config)
        bijector._fraction_rounding = rounding
        return bijector
