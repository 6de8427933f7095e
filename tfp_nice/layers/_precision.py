"""Layers that keep full precision under a mixed dtype policy."""

from __future__ import annotations

import keras

from tfp_nice.precision import full_precision

__all__ = ["FullPrecisionLayer"]


class FullPrecisionLayer(keras.layers.Layer):
    """A layer holding numerically sensitive parameters (log-scales, normalisation statistics,
    LU factors): under a mixed policy it computes in the policy's variable dtype.

    ``TanhScale(dtype="mixed_bfloat16")`` therefore has float32 variables *and* float32
    outputs: its outputs feed ``exp(s)`` and the log-det sum, which half precision would
    round to about 3 significant digits. A plain policy (``"float32"``, ``"float64"``, or
    ``"bfloat16"`` for everything) is kept as it is. See :mod:`tfp_nice.precision`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        policy = full_precision(self.dtype_policy)
        if policy is not self.dtype_policy:
            self.dtype_policy = policy
