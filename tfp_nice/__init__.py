"""tfp_nice: NICE, RealNVP and RevNet reversible models as TFP bijectors Keras 3 can train.

``import tfp_nice`` imports every public class (and so registers its Keras classes, which
``keras.models.load_model`` needs). The one exception is the ``tfp-nice`` command itself: it
checks its arguments and files before it imports TensorFlow, so there names are imported
on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> the module defining it
_EXPORTS = {
    "AdditiveCoupling": "tfp_nice.bijectors",
    "AffineCoupling": "tfp_nice.bijectors",
    "Coupling": "tfp_nice.bijectors",
    "ContextAffine": "tfp_nice.bijectors",
    "SplineCoupling": "tfp_nice.bijectors",
    "DiagonalScale": "tfp_nice.bijectors",
    "ActNorm": "tfp_nice.bijectors",
    "BatchNorm": "tfp_nice.bijectors",
    "FactorOut": "tfp_nice.bijectors",
    "Squeeze": "tfp_nice.bijectors",
    "Invertible1x1Conv": "tfp_nice.bijectors",
    "FlowModel": "tfp_nice.flow_model",
    "NICE": "tfp_nice.presets",
    "NSF": "tfp_nice.presets",
    "RealNVP": "tfp_nice.presets",
    "RealNVPImage": "tfp_nice.presets",
    "Glow": "tfp_nice.presets",
    "LogScale": "tfp_nice.layers",
    "MLPConditioner": "tfp_nice.layers",
    "TanhScale": "tfp_nice.layers",
    "ActNormLayer": "tfp_nice.layers",
    "BatchNormLayer": "tfp_nice.layers",
    "Invertible1x1ConvLayer": "tfp_nice.layers",
    "ConvConditioner": "tfp_nice.layers",
    "ResNetConditioner": "tfp_nice.layers",
    "WeightNormConv2D": "tfp_nice.layers",
    "ReversibleBlock": "tfp_nice.reversible",
    "ReversibleFlow": "tfp_nice.reversible",
    "ReversibleSequential": "tfp_nice.reversible",
    "keras_parameter": "tfp_nice.graph",
}
_SUBMODULES = ("graph", "layers", "masks", "precision", "preprocessing", "presets", "priors",
               "reversible",
               "serialization", "testing")

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tfp_nice.{name}")
    else:
        raise AttributeError(f"module 'tfp_nice' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _started_as_cli() -> bool:
    """Whether this process is the ``tfp-nice`` command (console script or ``-m``)."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("tfp-nice", "tfp-nice.exe"):
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["tfp_nice.cli"]


if not _started_as_cli():
    for _name in __all__:
        if _name != "__version__":
            __getattr__(_name)
