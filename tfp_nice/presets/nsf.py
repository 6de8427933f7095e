"""Neural spline flow (Durkan et al. 2019) for vectors: rational-quadratic spline couplings."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from typing_extensions import Unpack

from tfp_nice._internal.checks import check_int, check_number
from tfp_nice.bijectors import SplineCoupling
from tfp_nice.presets._common import LogitPresetOptions, Preset, SharedOptions, vector_flow

__all__ = ["NSF"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class NSF(Preset):
    """Neural spline flow [5] for vectors: rational-quadratic spline couplings, Gaussian prior.

    ``x -> (rescale to [0, 1) -> logit) -> flatten -> num_couplings spline couplings (the
    halves swap each time) -> N(0, I)``: :class:`RealNVP` with each affine coupling replaced by
    a :class:`~tfp_nice.SplineCoupling` (``num_bins`` bins on ``[-bound, bound]``, the identity
    outside), the coupling form of NSF ("RQ-NSF (C)"). Keep the (preprocessed) data mostly
    inside the bound: data rescaled to ``[0, 1)`` (``data_scale``) is; after
    ``logit_alpha=0.05`` it lies in about ``[-2.9, 2.9]``.

    Args:
      event_shape: the data event shape, ``[D]`` or ``[H, W, C]`` (flattened inside).
      num_couplings: number of spline couplings.
      hidden_units: hidden widths of each coupling's MLP.
      activation: hidden activation.
      num_bins: spline bins ``K`` (each coupling's MLP outputs ``3K - 1`` numbers per unit).
      bound: the spline interval ``[-bound, bound]``.
      prior: ``"normal"`` or ``"logistic"``.
      mask: ``"half"`` or ``"even_odd"``.
      data_scale, data_low, logit_alpha: preprocessing as in :class:`RealNVP`.
      num_classes, context_shape, conditioning, class_mean_stddev: a conditional flow, as in
        :class:`RealNVP`.
      **kwargs: these keyword options
        (:class:`~tfp_nice.presets._common.LogitPresetOptions`) and ``keras.Model`` arguments.

    Example:
      >>> model = NSF([2], num_couplings=2, hidden_units=(16,), num_bins=4)
      >>> model.sample(3, seed=(1, 2)).shape
      TensorShape([3, 2])

    References:
      [5] Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. arXiv:1906.04032.
    """

    def __init__(
        self,
        event_shape,
        num_couplings: int = 4,
        hidden_units: Sequence[int] = (128, 128),
        activation: str = "relu",
        num_bins: int = 8,
        bound: float = 3.0,
        prior: str = "normal",
        mask: str = "half",
        **kwargs: Unpack[LogitPresetOptions],
    ):
        options = SharedOptions.pop(kwargs, conditioning="prior")
        num_bins = check_int(num_bins, "num_bins", minimum=2)
        bound = check_number(bound, "bound", low=0.0, low_inclusive=False, what="a float > 0")
        hp = dict(num_couplings=num_couplings, hidden_units=hidden_units, activation=activation,
                  num_bins=num_bins, bound=bound, prior=prior, mask=mask)
        base, steps, own_config = vector_flow(
            event_shape, hp, options,
            lambda net, m, i: SplineCoupling(net, mask=m, num_bins=num_bins, bound=bound,
                                             name=f"spline_coupling_{i}",
                                             conditional=options.cond.couplings),
            units_per_unit=3 * num_bins - 1,
        )
        super().__init__(base, steps, options, own_config, **kwargs)
