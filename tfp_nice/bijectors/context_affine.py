"""An elementwise affine map chosen by the context: FlowGMM's class-conditional prior."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice._internal import compat
from tfp_nice._internal.checks import check_event_shape, check_floating, check_number
from tfp_nice.bijectors import _conditioner_io as io
from tfp_nice.bijectors._base import LayerBijector
from tfp_nice.layers import MLPConditioner, RandomShift
from tfp_nice.precision import full_precision

tfb = tfp.bijectors

__all__ = ["ContextAffine"]


@serialization.register
class ContextAffine(LayerBijector):
    """``y = x * exp(s(c)) + t(c)`` with a shift and log-scale per context ``c`` [6].

    Placed nearest the latent (last in ``tfb.Chain`` order) over a ``N(0, I)`` base, it is a
    learned class-conditional Gaussian prior: ``z = f^-1(x)`` is modelled as
    ``N(t_c, diag(exp(2 s_c)))`` for class ``c`` (FlowGMM [6]), while the couplings stay
    shared. With a one-hot class context and the default linear conditioner,
    ``[t_c, s_c] = W[c] + b`` is one learned row per class (starting at zero, the identity,
    or at random class means, see ``mean_stddev``)::

      forward:  y = x * exp(s(c)) + t(c)          (latent -> data)
      inverse:  x = (y - t(c)) * exp(-s(c))
      log|det dy/dx| = sum(s(c))

    The context comes as condition keyword arguments (``b.forward(x, context=c)``, ``c [batch,
    k]``; several are concatenated in name order), as for the couplings; a
    :class:`tfp_nice.FlowModel` with ``num_classes`` or ``context_shape`` passes it.

    Args:
      event_shape: the event shape of ``x`` (e.g. the latent ``[D]``); creates the default
        conditioner, a zero-initialised linear :class:`~tfp_nice.layers.MLPConditioner`
        (in float32 under a mixed policy: its outputs are the prior's mean and log-scale).
      conditioner: instead, a layer mapping the context ``[N, k]`` to ``[N, 2 * prod(event)]``
        (``[t, s]`` flattened); give ``event_shape`` with it.
      mean_stddev: if > 0, the default conditioner's kernel starts at random means
        ``W[c] = [mu_c, 0]``, ``mu_c ~ N(0, mean_stddev^2 I)`` (FlowGMM's initialisation [6],
        :class:`~tfp_nice.layers.initializers.RandomShift`): the classes start apart in the
        latent, which makes the flow a better Bayes classifier at some cost in bits/dim
        (``bench/conditional_mnist_sweep.md``). ``0``: the identity at start.
      seed: the seed of those means (``None``: Keras' global seed state).
      validate_args: passed to ``tfb.Bijector``.
      name: the bijector's name.

    Example:
      >>> import numpy as np
      >>> b = ContextAffine(event_shape=[3])
      >>> labels = np.eye(4, dtype="float32")[[0, 2]]      # one-hot, 4 classes
      >>> b.forward(np.ones([2, 3], "float32"), context=labels).shape
      TensorShape([2, 3])

    References:
      [6] Izmailov, Kirichenko, Finzi, Wilson. Semi-Supervised Learning with Normalizing Flows
          (FlowGMM). arXiv:1912.13025.
    """

    #: A conditional FlowModel always passes its context here.
    conditional = True

    _layer_args = ("conditioner",)

    def __init__(
        self,
        event_shape: Sequence[int],
        conditioner=None,
        mean_stddev: float = 0.0,
        seed: int | None = None,
        validate_args: bool = False,
        name: str = "context_affine",
    ):
        parameters = dict(locals())
        self._event_shape = check_event_shape(event_shape)
        size = int(np.prod(self._event_shape))
        mean_stddev = check_number(mean_stddev, "mean_stddev", low=0.0, owner="ContextAffine",
                                   what="a float >= 0")
        if conditioner is None:
            conditioner = _linear_conditioner(size, mean_stddev, seed, name)
        elif mean_stddev or seed is not None:
            raise ValueError(
                "ContextAffine: `mean_stddev` and `seed` initialise the default conditioner; "
                "give them without `conditioner`. Received: "
                f"conditioner={conditioner!r}, mean_stddev={mean_stddev}, seed={seed!r}"
            )
        elif not callable(conditioner):
            raise TypeError(
                "ContextAffine: `conditioner` must be callable (a Keras layer mapping the context "
                f"to [batch, 2 * {size}]). Received: conditioner={conditioner!r}"
            )
        self._conditioner = conditioner
        super().__init__(
            forward_min_event_ndims=len(self._event_shape),
            is_constant_jacobian=False,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def conditioner(self):
        return self._conditioner

    @property
    def keras_layers(self) -> list:
        return [self._conditioner] if isinstance(self._conditioner, keras.layers.Layer) else []

    def _shift_and_log_scale(self, x: tf.Tensor, arg: str, condition: dict):
        check_floating(x, "ContextAffine", arg)
        n = len(self._event_shape)
        if x.shape.rank is None or tuple(x.shape[x.shape.rank - n:]) != self._event_shape:
            raise ValueError(
                f"ContextAffine: the event shape of `{arg}` must be {list(self._event_shape)}. "
                f"Received: {arg}.shape={x.shape}"
            )
        if not condition:
            raise ValueError(
                "ContextAffine: a context is required, e.g. `b.forward(x, context=c)` with "
                "c [batch, k] (a FlowModel with num_classes or context_shape passes it). "
                "Received no condition keyword argument"
            )
        lead = _math.leading_shape(x, n)
        flat = io.flatten_condition(condition, lead, "ContextAffine", arg)
        context = tf.concat([tf.cast(flat[k], x.dtype) for k in sorted(flat)], axis=-1)
        out = tf.cast(self._conditioner(context), x.dtype)
        size = int(np.prod(self._event_shape))
        if out.shape.rank != 2 or out.shape[-1] != 2 * size:
            raise ValueError(
                f"ContextAffine: `conditioner` must return [batch, {2 * size}] (shift and "
                f"log-scale). Received output shape: {tuple(out.shape)}"
            )
        shift, log_scale = tf.split(out, 2, axis=-1)
        return (_math.reshape_to(shift, lead, list(self._event_shape)),
                _math.reshape_to(log_scale, lead, list(self._event_shape)))

    def _log_det(self, log_scale: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(log_scale, axis=list(range(-len(self._event_shape), 0)))

    def _forward(self, x, **condition):
        shift, log_scale = self._shift_and_log_scale(x, "x", condition)
        compat.store_forward_log_det(self, x, self._log_det(log_scale), **condition)
        return _math.channel_affine_forward(x, shift, log_scale)

    def _inverse(self, y, **condition):
        shift, log_scale = self._shift_and_log_scale(y, "y", condition)
        compat.store_inverse_log_det(self, y, -self._log_det(log_scale), **condition)
        return _math.channel_affine_inverse(y, shift, log_scale)

    def _forward_log_det_jacobian(self, x, **condition):
        return self._log_det(self._shift_and_log_scale(x, "x", condition)[1])

    def _inverse_log_det_jacobian(self, y, **condition):
        return -self._log_det(self._shift_and_log_scale(y, "y", condition)[1])

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._config(event_shape=list(self._event_shape),
                            conditioner=self._conditioner)


def _linear_conditioner(size: int, mean_stddev: float, seed, name: str) -> MLPConditioner:
    """The default conditioner: linear, ``[t, s] = W c + b``, in float32 under a mixed policy
    (its outputs are the prior's mean and log-scale); ``W`` starts at zero or at
    :class:`~tfp_nice.layers.initializers.RandomShift` means."""
    dtype = full_precision(keras.config.dtype_policy())
    if not mean_stddev:
        return MLPConditioner(2 * size, hidden_units=(), name=f"{name}_net", dtype=dtype)
    return MLPConditioner(2 * size, hidden_units=(), zero_init_output=False,
                          kernel_initializer=RandomShift(size, mean_stddev, seed),
                          name=f"{name}_net", dtype=dtype)
