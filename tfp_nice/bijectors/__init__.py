"""tfp_nice bijectors: thin ``tfp.bijectors.Bijector`` subclasses over :mod:`tfp_nice._math`."""

from tfp_nice.bijectors.additive_coupling import AdditiveCoupling
from tfp_nice.bijectors.affine_coupling import AffineCoupling
from tfp_nice.bijectors.diagonal_scale import DiagonalScale

__all__ = ["AdditiveCoupling", "AffineCoupling", "DiagonalScale"]
