"""Paper models as ``FlowModel`` subclasses built from a few hyper-parameters.

* :class:`NICE` — additive couplings, diagonal scaling, logistic prior (arXiv:1410.8516);
* :class:`RealNVP` — affine couplings on vectors (arXiv:1605.08803);
* :class:`RealNVPImage` — RealNVP's multi-scale image architecture;
* :class:`Glow` — Glow's multi-scale flow of ActNorm, invertible 1x1 convolutions and
  couplings (arXiv:1807.03039); :func:`glow_step` builds one step of it.
* :class:`NSF` — neural spline flow: rational-quadratic spline couplings on vectors
  (arXiv:1906.04032).

Every preset takes ``num_classes`` (or ``context_shape``) for a conditional flow.
"""

from tfp_nice.presets.glow import Glow, glow_defaults, glow_step
from tfp_nice.presets.nice import NICE
from tfp_nice.presets.nsf import NSF
from tfp_nice.presets.realnvp import RealNVP
from tfp_nice.presets.realnvp_image import RealNVPImage

__all__ = ["NICE", "NSF", "RealNVP", "RealNVPImage", "Glow", "glow_defaults", "glow_step"]
