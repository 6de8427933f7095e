"""The general coupling: ``x2`` goes through any elementwise TFP bijector chosen from ``x1``."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import serialization
from tfp_nice._internal.checks import check_int
from tfp_nice.bijectors._coupling import CouplingBase

tfb = tfp.bijectors

__all__ = ["Coupling"]


@serialization.register
class Coupling(CouplingBase):
    """A coupling whose transform of ``x2`` is any elementwise ``tfp.bijectors.Bijector``.

    Split ``x`` by the mask into ``(x1, x2)``; a bijector ``g`` chosen from ``x1`` (and the
    condition) transforms ``x2``::

      forward:  y1 = x1,  y2 = g(x1).forward(x2)
      inverse:  x1 = y1,  x2 = g(y1).inverse(y2)
      log|det dy/dx| = g(x1).forward_log_det_jacobian(x2, event_ndims=1)

    Two forms:

    * **TFP's** ``bijector_fn`` contract (``tfb.RealNVP(bijector_fn=...)``): ``bijector_fn(x1,
      **condition)`` returns the bijector, ``x1`` with the batch shape of ``x``
      (``[..., d1]``). Any weights it uses must be Keras 3 layers a ``FlowModel`` can find
      (closures and globals of the function are searched), else the model refuses it.
    * **Keras**: ``conditioner`` is a layer ``x1 [N, d1] -> h [N, u]`` (given the condition
      too, ``conditioner(x1, **condition)``) whose weights a ``FlowModel`` owns, and
      ``bijector_fn(h)`` maps its output (reshaped to ``[..., u]``) to the bijector. With
      ``units_per_dim=p`` a conditioner built without an output size
      (``MLPConditioner()``) gets ``u = p * d2``.

    ``g`` must act elementwise on ``x2`` (``forward_min_event_ndims`` 0 or 1, not changing the
    rank), as ``tfb.Shift``, ``tfb.Scale``, ``tfb.Sigmoid``, ``tfb.RationalQuadraticSpline``...
    and chains of them; others are refused with a ``ValueError`` on first use.

    Args:
      bijector_fn: see the two forms above.
      num_masked, fraction_masked, mask: the split; exactly one is given (see
        :class:`~tfp_nice.bijectors.AdditiveCoupling`).
      conditioner: the Keras form's layer (``None``: TFP's form).
      units_per_dim: conditioner outputs per transformed unit (Keras form), used to size a
        conditioner built without ``output_units``.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.
      conditional: whether a conditional :class:`~tfp_nice.FlowModel` passes its context
        to the conditioner (default ``True``).

    Example:
      >>> import numpy as np, tensorflow as tf, tensorflow_probability as tfp
      >>> from tfp_nice.layers import MLPConditioner
      >>> tfb = tfp.bijectors
      >>> def gated(h):  # h: [..., 2 * d2] -> shift and gate
      ...     shift, logit = tf.split(h, 2, axis=-1)
      ...     gate = tf.sigmoid(logit + 2.0)
      ...     return tfb.Shift((1.0 - gate) * shift)(tfb.Scale(gate))
      >>> b = Coupling(gated, num_masked=2, conditioner=MLPConditioner(hidden_units=(8,)),
      ...              units_per_dim=2)
      >>> x = np.random.randn(3, 4).astype("float32")
      >>> bool(np.allclose(b.inverse(b.forward(x)), x, atol=1e-5))
      True
    """

    def __init__(
        self,
        bijector_fn: Callable,
        num_masked: int | None = None,
        fraction_masked: float | None = None,
        mask=None,
        conditioner=None,
        units_per_dim: int | None = None,
        validate_args: bool = False,
        name: str = "coupling",
        conditional: bool = True,
    ):
        parameters = dict(locals())
        if not callable(bijector_fn):
            raise TypeError(
                "Coupling: `bijector_fn` must be callable (returning a tfp.bijectors.Bijector). "
                f"Received: bijector_fn={bijector_fn!r}"
            )
        self._bijector_fn = bijector_fn
        self._keras_form = conditioner is not None
        self._units_per_dim = (None if units_per_dim is None
                               else check_int(units_per_dim, "units_per_dim", owner="Coupling"))
        self._conditioner_arg = "conditioner" if self._keras_form else "bijector_fn"
        super().__init__(conditioner if self._keras_form else bijector_fn, num_masked,
                         fraction_masked, mask, validate_args, parameters, name,
                         conditional=conditional)

    @property
    def bijector_fn(self) -> Callable:
        """The function returning the bijector of ``x2``."""
        return self._bijector_fn

    def _conditioner_output_units(self, num_transformed: int):
        return None  # any width: bijector_fn reads it

    def _conditioner_units(self, num_transformed: int) -> int | None:
        return None if self._units_per_dim is None else self._units_per_dim * num_transformed

    def coupling_parameters(self, x1: tf.Tensor, x: tf.Tensor, mask, **condition) -> tuple:
        """``(g,)``: the bijector of the transformed units."""
        if self._keras_form:
            return super().coupling_parameters(x1, x, mask, **condition)
        return (self._checked(self._bijector_fn(x1, **condition)),)

    def _parameters_from(self, outs: tuple) -> tuple:
        return (self._checked(self._bijector_fn(*outs)),)

    def _checked(self, bijector) -> tfb.Bijector:
        """``bijector`` if it acts elementwise on ``x2``, else a ``ValueError``/``TypeError``."""
        if not isinstance(bijector, tfb.Bijector):
            raise TypeError(
                f"Coupling: `bijector_fn` must return a tfp.bijectors.Bijector. "
                f"Received: {bijector!r}"
            )
        fwd, inv = bijector.forward_min_event_ndims, bijector.inverse_min_event_ndims
        if tf.nest.is_nested(fwd) or tf.nest.is_nested(inv) or int(fwd) > 1:
            raise ValueError(
                "Coupling: `bijector_fn` must return an elementwise bijector of x2: Bijectors "
                "with `forward_min_event_ndims` > 1 are not supported. Received: "
                f"{bijector.name} with forward_min_event_ndims={fwd}"
            )
        if fwd != inv:
            raise ValueError(
                "Coupling: `bijector_fn` must return a bijector that keeps the rank of x2: "
                "Bijectors which alter `event_ndims` are not supported. Received: "
                f"{bijector.name} with forward_min_event_ndims={fwd}, "
                f"inverse_min_event_ndims={inv}"
            )
        return bijector

    def coupling_transform(self, v2: tf.Tensor, params: tuple, inverse: bool):
        """``g.forward(x2)`` (or ``g.inverse``) and its log-det over the ``d2`` units."""
        (bijector,) = params
        # A fresh tensor: `bijector`'s own cache must not answer a reconstruction
        # (tfp_nice.reversible runs g^-1 then g on the same object).
        v2 = tf.identity(v2)
        if inverse:
            out = bijector.inverse(v2)
            ldj = bijector.inverse_log_det_jacobian(v2, event_ndims=1)
        else:
            out = bijector.forward(v2)
            ldj = bijector.forward_log_det_jacobian(v2, event_ndims=1)
        return out, tf.cast(ldj, v2.dtype)

    def get_config(self) -> dict:
        """A JSON-serialisable config; ``bijector_fn`` must be a registered Keras object
        (``keras.saving.register_keras_serializable``)."""
        name = keras.saving.get_registered_name(self._bijector_fn)
        if getattr(self._bijector_fn, "__name__", None) == name:  # not registered
            raise TypeError(
                "Coupling.get_config: `bijector_fn` must be registered to be saved: decorate it "
                "with @keras.saving.register_keras_serializable(package=...). "
                f"Received: bijector_fn={self._bijector_fn!r}"
            )
        config = self._base_config(conditioner=False)
        config.pop("conditioner_input")
        config.update(
            bijector_fn=keras.saving.serialize_keras_object(self._bijector_fn),
            conditioner=(serialization.serialize_layer(self._conditioner, "conditioner",
                                                       "Coupling")
                         if self._keras_form else None),
            units_per_dim=self._units_per_dim,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> Coupling:
        config = dict(config)
        config["bijector_fn"] = keras.saving.deserialize_keras_object(config["bijector_fn"])
        return cls._from_base_config(config, "conditioner")
