"""Random initial class means for FlowGMM's class-conditional prior (``ContextAffine``)."""

from __future__ import annotations

import keras

from tfp_nice._internal.checks import check_int, check_number

__all__ = ["RandomShift"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class RandomShift(keras.initializers.Initializer):
    """A ``[k, 2 * size]`` kernel ``[M, 0]``: ``M ~ N(0, stddev^2)`` (``[k, size]``), then zeros.

    As the kernel of :class:`~tfp_nice.ContextAffine`'s linear conditioner, whose output is
    ``[shift, log_scale] = onehot(c) W + b``, it gives class ``c`` the latent mean
    ``mu_c = M[c] ~ N(0, stddev^2 I)`` and scale 1: FlowGMM's randomly drawn class means [6],
    so the classes start apart in the latent and maximum likelihood pulls each class's data
    to its own mean.

    Args:
      size: the number of shift units (the first ``size`` columns).
      stddev: the standard deviation of the drawn means.
      seed: a seed for ``keras.random.normal`` (``None``: Keras' global seed state, fixed by
        ``keras.utils.set_random_seed``).

    Example:
      >>> init = RandomShift(size=3, stddev=1.0, seed=1)
      >>> w = init((10, 6))
      >>> w.shape, float(keras.ops.max(keras.ops.abs(w[:, 3:])))
      (TensorShape([10, 6]), 0.0)

    References:
      [6] Izmailov, Kirichenko, Finzi, Wilson. Semi-Supervised Learning with Normalizing Flows
          (FlowGMM). arXiv:1912.13025.
    """

    def __init__(self, size: int, stddev: float = 1.0, seed: int | None = None):
        self.size = check_int(size, "size", owner="RandomShift")
        self.stddev = check_number(stddev, "stddev", low=0.0, owner="RandomShift",
                                   what="a float >= 0")
        self.seed = seed

    def __call__(self, shape, dtype=None):
        if len(shape) != 2 or int(shape[1]) != 2 * self.size:
            raise ValueError(
                f"RandomShift: the kernel shape must be [k, {2 * self.size}] (shift and "
                f"log-scale columns). Received: shape={list(shape)}"
            )
        means = keras.random.normal((int(shape[0]), self.size), stddev=self.stddev,
                                    dtype=dtype, seed=self.seed)
        return keras.ops.concatenate([means, keras.ops.zeros_like(means)], axis=-1)

    def get_config(self) -> dict:
        return {"size": self.size, "stddev": self.stddev, "seed": self.seed}
