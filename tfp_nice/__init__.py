"""tfp_nice: NICE, RealNVP and RevNet reversible models as TFP bijectors Keras 3 can train."""

from tfp_nice import masks, preprocessing, priors, serialization
from tfp_nice._ownership import keras_parameter
from tfp_nice.bijectors import AdditiveCoupling, AffineCoupling, DiagonalScale
from tfp_nice.layers import LogScale, MLPConditioner, TanhScale
from tfp_nice.models import NICE, FlowModel, RealNVP

__version__ = "0.1.0"

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "DiagonalScale",
    "FlowModel",
    "NICE",
    "RealNVP",
    "LogScale",
    "MLPConditioner",
    "TanhScale",
    "keras_parameter",
    "masks",
    "preprocessing",
    "priors",
    "serialization",
    "__version__",
]
