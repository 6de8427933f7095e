"""The neural spline coupling (rational-quadratic splines) as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import tensorflow as tf

from tfp_nice import _math, serialization
from tfp_nice._internal.checks import check_int, check_number
from tfp_nice.bijectors._coupling import CouplingBase

__all__ = ["SplineCoupling"]


@serialization.register
class SplineCoupling(CouplingBase):
    """Neural spline coupling [5]: each unit of ``x2`` goes through a monotone
    rational-quadratic spline whose bins and slopes the conditioner computes from ``x1``.

    With ``K = num_bins`` and bound ``B``, the conditioner maps ``x1`` to ``3K - 1`` numbers per
    transformed unit: bin widths, bin heights and interior knot slopes of a spline on
    ``[-B, B]`` (``tfb.RationalQuadraticSpline``, see :func:`tfp_nice._math.spline_parameters`)::

      forward:  y1 = x1,  y2 = RQS(x2; theta(x1))       (identity where |x2| >= B)
      inverse:  x1 = y1,  x2 = RQS^-1(y2; theta(y1))
      log|det dy/dx| = sum(log RQS'(x2))                (0 for units outside the bound)

    Outside ``[-B, B]`` the map is the identity (linear tails, slope 1 at the boundary, so the
    map is continuously differentiable). Inputs are clipped before the spline math, so values
    far outside the bound never give NaN or Inf, in the values or the gradients. A
    zero-initialised conditioner starts the coupling as the identity. More expressive than an
    affine coupling per layer (NSF: fewer layers for the same density), at ~``3K`` outputs
    per unit.

    Args:
      conditioner: maps ``x1 [batch, d1]`` (and any condition keyword arguments) to
        ``[batch, (3K - 1) * d2]`` (the widths, heights and slopes of all units, parameter
        by parameter). Usually a :class:`tfp_nice.layers.MLPConditioner` (its output size is
        set from the split when not given). With ``conditioner_input="masked"`` (image masks)
        it maps ``[x * mask, mask]`` to ``[batch, H, W, (3K - 1) C]``.
      num_masked, fraction_masked, mask: the split; exactly one is given (see
        :class:`~tfp_nice.bijectors.AdditiveCoupling`).
      num_bins: ``K``.
      bound: ``B``; keep the data (or the activations reaching the coupling) mostly inside.
      min_bin_width, min_bin_height, min_slope: floors that keep the spline well conditioned.
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.
      conditioner_input: ``"flat"`` (default) or ``"masked"``.
      conditional: whether a conditional :class:`~tfp_nice.FlowModel` passes its context
        to the conditioner (default ``True``).

    Example:
      >>> import numpy as np
      >>> from tfp_nice.layers import MLPConditioner
      >>> b = SplineCoupling(MLPConditioner(hidden_units=(8,), zero_init_output=False),
      ...                    num_masked=2, num_bins=4, bound=3.0)
      >>> x = np.array([[0.5, -1.0, 2.0, 100.0]], "float32")
      >>> y = b.forward(x).numpy()
      >>> float(y[0, 3])  # outside the bound: the identity
      100.0

    References:
      [5] Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. arXiv:1906.04032.
    """

    def __init__(
        self,
        conditioner,
        num_masked: int | None = None,
        fraction_masked: float | None = None,
        mask=None,
        num_bins: int = 8,
        bound: float = 3.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_slope: float = 1e-3,
        validate_args: bool = False,
        name: str = "spline_coupling",
        conditioner_input: str = "flat",
        conditional: bool = True,
    ):
        parameters = dict(locals())
        owner = "SplineCoupling"
        self._num_bins = check_int(num_bins, "num_bins", minimum=2, owner=owner)
        self._bound = check_number(bound, "bound", low=0.0, low_inclusive=False, owner=owner,
                                   what="a float > 0")
        mins = {}
        for arg, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            mins[arg] = check_number(value, arg, low=0.0, high=2.0 * self._bound / num_bins,
                                     low_inclusive=False, high_inclusive=False, owner=owner,
                                     what=f"a float in (0, 2 * bound / num_bins = "
                                          f"{2.0 * self._bound / num_bins:g})")
        mins["min_slope"] = check_number(min_slope, "min_slope", low=0.0, high=1.0,
                                         low_inclusive=False, high_inclusive=False, owner=owner,
                                         what="a float in (0, 1)")
        self._mins = mins
        self._num_parameters = 3 * self._num_bins - 1
        super().__init__(conditioner, num_masked, fraction_masked, mask, validate_args,
                         parameters, name, conditioner_input, conditional)

    @property
    def num_bins(self) -> int:
        return self._num_bins

    @property
    def bound(self) -> float:
        return self._bound

    def _conditioner_output_units(self, num_transformed: int) -> dict[int, int]:
        return {1: self._num_parameters * num_transformed}

    def _parameters_from(self, outs: tuple) -> tuple:
        """``(widths, heights, slopes)`` per transformed unit from the raw outputs."""
        if len(outs) == 1:
            outs = tuple(tf.split(outs[0], self._num_parameters, axis=-1))
        raw = tf.stack(outs, axis=-1)  # [..., d2, 3K - 1]
        return _math.spline_parameters(raw, self._num_bins, self._bound, **self._mins)

    def coupling_transform(self, v2: tf.Tensor, params: tuple, inverse: bool):
        """The splines (or their inverses) of ``x2`` and the summed log-det."""
        return _math.rational_quadratic_spline(v2, *params, bound=self._bound, inverse=inverse)

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        config = self._base_config()
        config.update(num_bins=self._num_bins, bound=self._bound, **self._mins)
        return config

    @classmethod
    def from_config(cls, config: dict) -> SplineCoupling:
        return cls._from_base_config(config, "conditioner")
