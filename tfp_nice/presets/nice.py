"""NICE (Dinh, Krueger, Bengio 2014): additive couplings, diagonal scaling, logistic prior."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from typing_extensions import Unpack

from tfp_nice.bijectors import AdditiveCoupling, DiagonalScale
from tfp_nice.presets._common import Preset, PresetOptions, SharedOptions, vector_flow

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
      data_low: the lower end of the data range (default 0).
      num_classes, context_shape, conditioning, class_mean_stddev: a conditional flow, as in
        :class:`RealNVP`.
      **kwargs: these keyword options (:class:`~tfp_nice.presets._common.PresetOptions`) and
        ``keras.Model`` arguments.

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
        **kwargs: Unpack[PresetOptions],
    ):
        options = SharedOptions.pop(kwargs, takes_logit=False, conditioning="prior")
        hp = dict(num_couplings=num_couplings, hidden_units=hidden_units, activation=activation,
                  prior=prior, mask=mask)
        base, steps, own_config = vector_flow(
            event_shape, hp, options,
            lambda net, m, i: AdditiveCoupling(net, mask=m, name=f"additive_coupling_{i}",
                                               conditional=options.cond.couplings),
            units_per_unit=1,
            scaling=lambda size: [DiagonalScale([size], name="diagonal_scale")],
        )
        super().__init__(base, steps, options, own_config, **kwargs)

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
