"""Mixed precision for flows: conditioners in bfloat16/float16, the flow's math in float32.

A flow's cost is its coupling conditioners (dense or convolutional networks); its numerics
are the log-determinant, a sum over every unit of ``log|scale|``, and the prior's
log-density. Under a Keras ``mixed_bfloat16`` / ``mixed_float16`` policy tfp_nice splits
them:

* **half precision** (the policy's compute dtype): the conditioner networks
  (:class:`~tfp_nice.MLPConditioner`, :class:`~tfp_nice.ConvConditioner`,
  :class:`~tfp_nice.ResNetConditioner`; a :class:`~tfp_nice.WeightNormConv2D` normalises its
  kernel in float32 and convolves in half precision);
* **float32** (the flow's dtype, the base distribution's): the data, every coupling's input
  and output, the conditioner's outputs (cast back before ``exp(s)``, the stabiliser
  ``s = c * tanh(h)``, the affine/additive/spline transform and the log-det sum), every
  other bijector (ActNorm, batch norm, 1x1 convolution, diagonal scale, squeeze...), the
  prior and bits/dim. The layers holding those parameters (:class:`~tfp_nice.TanhScale`,
  :class:`~tfp_nice.LogScale`, :class:`~tfp_nice.ActNormLayer`,
  :class:`~tfp_nice.BatchNormLayer`, :class:`~tfp_nice.Invertible1x1ConvLayer`) compute in
  their variable dtype (:func:`full_precision`);
* **variables** stay float32 (the policy's variable dtype), so the optimizer updates
  float32 weights.

A :class:`~tfp_nice.FlowModel` keeps its own dtype, the base distribution's: Keras casts its
inputs to it, so the data is never rounded to half precision; the policy reaches the
conditioners when they are built. Build the model inside :func:`policy_scope` (or with
``keras.mixed_precision.set_global_policy``); ``FlowModel.compile`` then wraps the
optimizer in ``keras.optimizers.LossScaleOptimizer`` when some layer computes in float16
(dynamic loss scaling: float16 gradients underflow without it; bfloat16 has float32's
range and needs none). The memory-saving backward pass (``memory_saving=True``) and the
``tfp_nice.distributed`` loop honour the loss scale too.

Example:
  >>> import numpy as np
  >>> from tfp_nice import RealNVP, precision
  >>> with precision.policy_scope("bfloat16"):
  ...     model = RealNVP([4], num_couplings=2, hidden_units=(16,))
  >>> precision.model_precision(model)
  'bfloat16'
  >>> model.log_prob(np.zeros([3, 4], "float32")).dtype.name
  'float32'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from tfp_nice._internal import compat
from tfp_nice._internal.checks import check_choice

__all__ = [
    "PRECISIONS",
    "check_flow_dtype",
    "compute_dtypes",
    "full_precision",
    "model_precision",
    "needs_loss_scaling",
    "policy_name",
    "policy_scope",
    "with_loss_scaling",
]

#: The half-precision compute dtypes a mixed policy may use.
PRECISIONS = ("bfloat16", "float16")
_HALF = frozenset(PRECISIONS)


def policy_name(precision: str | None) -> str:
    """The Keras policy of ``precision``: ``"mixed_bfloat16"``, ``"mixed_float16"``, or
    ``"float32"`` for ``None``.

    Raises:
      ValueError: naming ``mixed_precision`` if it is not ``None`` or one of
        :data:`PRECISIONS`.
    """
    if precision is None:
        return "float32"
    check_choice(precision, PRECISIONS, "mixed_precision")
    return f"mixed_{precision}"


@contextlib.contextmanager
def policy_scope(precision: str | None) -> Iterator[keras.DTypePolicy]:
    """Sets Keras' global dtype policy to ``policy_name(precision)`` inside the block.

    Layers created inside (a preset's conditioners) take the policy; the previous global
    policy comes back on exit, even after an error. ``None`` means float32.

    Example:
      >>> from tfp_nice import MLPConditioner, precision
      >>> with precision.policy_scope("float16"):
      ...     net = MLPConditioner(2, (8,))
      >>> net.compute_dtype, net.variable_dtype
      ('float16', 'float32')
    """
    name = policy_name(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def check_flow_dtype(dtype) -> None:
    """Refuses a mixed policy as a :class:`~tfp_nice.FlowModel`'s own ``dtype``: Keras would
    round the data to half precision before ``call``; the policy belongs to the conditioners.

    Raises:
      ValueError: naming ``dtype`` and the policy received.
    """
    policy = keras.dtype_policies.get(dtype)
    if policy.compute_dtype != policy.variable_dtype:
        raise ValueError(
            "FlowModel: `dtype` is the flow's own dtype (data, log-dets, prior) and must not "
            "be a mixed policy; build the steps under "
            f"tfp_nice.precision.policy_scope({policy.compute_dtype!r}) instead, so only the "
            f"conditioners compute in {policy.compute_dtype}. Received: dtype={policy.name!r}"
        )


def full_precision(policy) -> keras.DTypePolicy:
    """The policy of a numerically sensitive layer given ``policy``: a mixed policy's variable
    dtype for its computation too (``mixed_bfloat16`` -> ``float32``); any other policy
    unchanged.

    Example:
      >>> full_precision(keras.DTypePolicy("mixed_float16")).name
      'float32'
    """
    policy = keras.dtype_policies.get(policy)
    if (type(policy) is keras.DTypePolicy and policy.compute_dtype != policy.variable_dtype):
        return keras.DTypePolicy(policy.variable_dtype)
    return policy


def _layers(model) -> list:
    return [layer for layer in compat.nested_layers(model) if layer.weights]


def compute_dtypes(model) -> list[str]:
    """The sorted compute dtypes of the layers (with weights) inside ``model``."""
    return sorted({layer.compute_dtype for layer in _layers(model)})


def model_precision(model) -> str | None:
    """``"bfloat16"`` or ``"float16"`` if some layer of ``model`` computes in it with wider
    variables (a mixed policy), else ``None``."""
    half = [layer.compute_dtype for layer in _layers(model)
            if layer.compute_dtype in _HALF and layer.variable_dtype not in _HALF]
    if not half:
        return None
    return "float16" if "float16" in half else "bfloat16"


def needs_loss_scaling(model) -> bool:
    """Whether some layer of ``model`` computes in float16 (its gradients need a loss
    scale to stay out of float16's underflow range)."""
    return any(layer.compute_dtype == "float16" for layer in _layers(model))


def with_loss_scaling(optimizer, model):
    """``optimizer`` in a ``keras.optimizers.LossScaleOptimizer`` if :func:`needs_loss_scaling`
    says ``model`` needs one and it is not wrapped yet; otherwise ``optimizer`` itself."""
    optimizer = keras.optimizers.get(optimizer)
    if (optimizer is None or isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            or not needs_loss_scaling(model)):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
