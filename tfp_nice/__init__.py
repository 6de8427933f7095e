"""tfp_nice: NICE, RealNVP and RevNet reversible models as TFP bijectors Keras 3 can train."""

from tfp_nice import masks, preprocessing, priors, reversible, serialization
from tfp_nice._ownership import keras_parameter
from tfp_nice.bijectors import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    DiagonalScale,
    FactorOut,
    Squeeze,
)
from tfp_nice.layers import (
    ActNormLayer,
    BatchNormLayer,
    ConvConditioner,
    LogScale,
    MLPConditioner,
    ResNetConditioner,
    TanhScale,
    WeightNormConv2D,
)
from tfp_nice.models import NICE, FlowModel, RealNVP, RealNVPImage
from tfp_nice.reversible import ReversibleBlock, ReversibleFlow, ReversibleSequential

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
    "ActNorm",
    "BatchNorm",
    "FactorOut",
    "Squeeze",
    "RealNVPImage",
    "ActNormLayer",
    "BatchNormLayer",
    "ConvConditioner",
    "ResNetConditioner",
    "WeightNormConv2D",
    "ReversibleBlock",
    "ReversibleFlow",
    "ReversibleSequential",
    "keras_parameter",
    "masks",
    "preprocessing",
    "priors",
    "reversible",
    "serialization",
    "__version__",
]
