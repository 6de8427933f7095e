"""tfp_nice bijectors: thin ``tfp.bijectors.Bijector`` subclasses over :mod:`tfp_nice._math`."""

from tfp_nice.bijectors.act_norm import ActNorm
from tfp_nice.bijectors.additive_coupling import AdditiveCoupling
from tfp_nice.bijectors.affine_coupling import AffineCoupling
from tfp_nice.bijectors.batch_norm import BatchNorm
from tfp_nice.bijectors.context_affine import ContextAffine
from tfp_nice.bijectors.coupling import Coupling
from tfp_nice.bijectors.diagonal_scale import DiagonalScale
from tfp_nice.bijectors.factor_out import FactorOut
from tfp_nice.bijectors.invertible_1x1_conv import Invertible1x1Conv
from tfp_nice.bijectors.spline_coupling import SplineCoupling
from tfp_nice.bijectors.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNorm",
    "ContextAffine",
    "Coupling",
    "DiagonalScale",
    "FactorOut",
    "Invertible1x1Conv",
    "SplineCoupling",
    "Squeeze",
]
