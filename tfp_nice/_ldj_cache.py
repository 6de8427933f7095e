"""The only use of TFP internals: share one conditioner call between a pass and its log-det.

``TransformedDistribution.log_prob(x)`` calls ``bijector.inverse(x)`` and then
``bijector.inverse_log_det_jacobian(x)``. A coupling computes both from one
conditioner call, so its ``_inverse`` stores the log-det in TFP's bijector cache
(the same mechanism ``tfb.FFJORD`` uses); ``Bijector._call_inverse_log_det_jacobian``
looks in that cache before it calls ``_inverse_log_det_jacobian``. TFP keys the
cache by tensor identity, so the entry lives exactly as long as the tensors.

The cache stores the *inverse* log-det under ``"ildj"`` for both directions.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["store_forward_log_det", "store_inverse_log_det"]


def store_forward_log_det(bijector, x: tf.Tensor, fldj: tf.Tensor, **kwargs) -> None:
    """Records ``fldj(x)`` so ``bijector.forward_log_det_jacobian(x)`` reuses it."""
    bijector._cache.forward_attributes(x, **kwargs)["ildj"] = -fldj  # noqa: SLF001


def store_inverse_log_det(bijector, y: tf.Tensor, ildj: tf.Tensor, **kwargs) -> None:
    """Records ``ildj(y)`` so ``bijector.inverse_log_det_jacobian(y)`` reuses it."""
    bijector._cache.inverse_attributes(y, **kwargs)["ildj"] = ildj  # noqa: SLF001
