"""NICE (Dinh, Krueger, Bengio 2014): additive couplings, diagonal scaling, logistic prior."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice.bijectors import AdditiveCoupling, DiagonalScale
from tfp_nice.presets._common import (
    Conditioning,
    Preset,
    alternating_couplings,
    vector_flow_start,
)

tfb = tfp.bijectors

__all__ = ["NICE"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class NICE(Preset):
    """NICE [1]: additive couplings on alternating halves, diagonal scaling, logistic prior.

    ``x -> (rescale to [0, 1)) -> flatten -> num_couplings additive couplings (the halves
    swap each time) -> exp(s) scaling -> logistic prior``. With ``event_shape=[784]`` and the
    defaults this is the NICE paper's MNIST model (4 couplings, each ``m`` a 5×1000 ReLU MLP,
    odd/even partition).

    Args:
      event_shape: the data event shape, ``[D]`` or ``[H, W, C]`` (flattened inside).
      num_couplings: number of additive couplings.
      hidden_units: hidden widths of each coupling's MLP.
      activation: hidden activation.
      prior: ``"logistic"`` (the paper) or ``"normal"``.
      mask: ``"even_odd"`` (the paper's partition) or ``"half"`` (first/second half).
      data_scale: if given, data live on ``[data_low, data_low + data_scale)`` (e.g. 17 for
        dequantized digits, 256 for 8-bit pixels) and are rescaled to ``[0, 1)``.
      data_low: the lower end of the data range.
      num_classes: make the flow class-conditional, ``p(x | c)`` for labels in ``[0, K)``
        (see :class:`~tfp_nice.FlowModel`); ``context_shape=[k]`` instead for a vector context.
      context_shape: a vector context's shape ``[k]``.
      conditioning: where the context acts: ``"couplings"`` (every coupling's network sees
        it), ``"prior"`` (a learned per-class latent mean and scale, FlowGMM, via
        :class:`~tfp_nice.ContextAffine`; shared couplings) or ``"both"`` (default: the
        best on the digits, ``bench/conditioning_digits.md``).
      **kwargs: ``keras.Model`` arguments.

    Example:
      >>> model = NICE([8, 8, 1], hidden_units=(32,), data_scale=17.0)
      >>> model.event_shape
      (8, 8, 1)

    References:
      [1] Dinh, Krueger, Bengio. NICE. arXiv:1410.8516, §5.1.
    """

    def __init__(
        self,
        event_shape,
        num_couplings: int = 4,
        hidden_units: Sequence[int] = (1000,) * 5,
        activation: str = "relu",
        prior: str = "logistic",
        mask: str = "even_odd",
        data_scale: float | None = None,
        data_low: float = 0.0,
        num_classes: int | None = None,
        context_shape: Sequence[int] | None = None,
        conditioning: str = "both",
        **kwargs,
    ):
        event_shape, num_couplings, base, first, steps = vector_flow_start(
            event_shape, num_couplings, prior, mask, data_scale, data_low, None)
        size = first.num_masked + first.num_transformed
        cond = Conditioning.from_args(num_classes, context_shape, conditioning)
        steps += alternating_couplings(
            num_couplings, first, hidden_units, activation,
            lambda net, m, i: AdditiveCoupling(net, mask=m, name=f"additive_coupling_{i}",
                                               conditional=cond.couplings),
            units_per_unit=1,
        )
        steps.append(DiagonalScale([size], name="diagonal_scale"))
        steps += cond.prior_steps([size])
        super().__init__(base, steps, **cond.model_kwargs(), **kwargs)
        self._preset_config = dict(
            event_shape=list(event_shape), num_couplings=num_couplings,
            hidden_units=list(hidden_units), activation=activation, prior=prior, mask=mask,
            data_scale=data_scale, data_low=data_low, **cond.config(),
        )

    def initialize_scale(self, x, context=None) -> np.ndarray:
        """Data-dependent initialisation of the diagonal scaling (like Glow's ActNorm).

        Sets ``s`` so that ``f^-1(x)`` has the prior's standard deviation in every dimension
        on the batch ``x``: ``s_d = log(std_d / std_prior)`` (``std_d`` floored at 1e-3).
        Call it before training, on a batch of (dequantized) training data; the paper
        starts from ``s = 0`` instead, which makes near-constant pixels (image borders)
        take hundreds of epochs to fit. A conditional NICE takes the batch's ``context`` (its
        labels) too. Returns the new ``s``.
        """
        x = self._check_x(x)
        chain = tfb.Chain(self.steps[: self._diagonal_index()])
        h = chain.inverse(x, **self._condition(context, x, len(self.event_shape), bijector=chain))
        std = tf.maximum(tf.math.reduce_std(h, axis=0), tf.constant(1e-3, h.dtype))
        log_scale = tf.math.log(std / self.base_distribution.distribution.stddev())
        layer = self.steps[self._diagonal_index()].log_scale
        layer.log_scale.assign(tf.cast(log_scale, layer.log_scale.dtype))
        return log_scale.numpy()

    def _diagonal_index(self) -> int:
        return next(i for i, b in enumerate(self.steps) if isinstance(b, DiagonalScale))
