"""Compatibility alias: ``FlowModel`` now lives in :mod:`tfp_nice.flow_model` and the presets
in :mod:`tfp_nice.presets`; ``from tfp_nice.models import ...`` keeps working."""

from tfp_nice.flow_model import FlowModel
from tfp_nice.presets import NICE, RealNVP, RealNVPImage

__all__ = ["FlowModel", "NICE", "RealNVP", "RealNVPImage"]
