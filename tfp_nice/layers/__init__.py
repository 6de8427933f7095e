"""Keras 3 layers that own every weight a tfp_nice bijector uses.

Bijectors only reference these layers; a :class:`tfp_nice.FlowModel` owns them,
so Keras sees, trains, checkpoints and serialises every weight.

* :class:`MLPConditioner` — the NICE/RealNVP coupling network ``x1 -> m(x1)``
  (or ``x1 -> [t, h]``), last layer zero-initialised so a new coupling is the identity;
  :class:`ConvConditioner` — a small plain conv net for image couplings.
* :class:`ResNetConditioner` — RealNVP's residual conv net of :class:`WeightNormConv2D`
  convolutions (zero-initialised output).
* :class:`TanhScale` — the learned per-unit ``c`` of the ``s = c * tanh(h)`` stabiliser;
  :class:`LogScale` — a free log-scale weight (NICE's diagonal scaling).
* :class:`ActNormLayer`, :class:`BatchNormLayer` — the weights (and moving statistics) of the
  ActNorm and batch-norm bijectors.
* :class:`Invertible1x1ConvLayer` — the LU factors of Glow's invertible 1x1 convolution.
* :class:`RandomShift` — an initializer: FlowGMM's random initial class means for
  :class:`~tfp_nice.ContextAffine`'s linear conditioner.
"""

from tfp_nice.layers.conditioners import ConvConditioner, MLPConditioner
from tfp_nice.layers.initializers import RandomShift
from tfp_nice.layers.invertible import Invertible1x1ConvLayer
from tfp_nice.layers.normalization import ActNormLayer, BatchNormLayer
from tfp_nice.layers.resnet import ResNetConditioner, WeightNormConv2D
from tfp_nice.layers.scales import LogScale, TanhScale

__all__ = [
    "MLPConditioner",
    "TanhScale",
    "LogScale",
    "WeightNormConv2D",
    "ResNetConditioner",
    "ConvConditioner",
    "ActNormLayer",
    "BatchNormLayer",
    "Invertible1x1ConvLayer",
    "RandomShift",
]
