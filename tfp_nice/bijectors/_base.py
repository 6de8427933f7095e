"""The base of tfp_nice's bijectors whose parameters are the weights of Keras layers."""

from __future__ import annotations

import tensorflow_probability as tfp

__all__ = ["LayerBijector"]


class LayerBijector(tfp.bijectors.Bijector):
    """A ``tfb.Bijector`` whose parameters are Keras layer weights (a ``FlowModel`` owns them).

    It has no batch-shaped parameters, so its batch shape is ``[]`` and
    ``experimental_batch_shape()`` works (as for ``tfb.RealNVP``). A subclass keeps its one
    layer in ``self._layer`` or overrides :attr:`keras_layers`.
    """

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()  # the weights live in Keras layers: batch shape []

    @property
    def keras_layers(self) -> list:
        """Every Keras layer this bijector uses; a ``FlowModel`` owns them."""
        layer = getattr(self, "_layer", None)
        return [layer] if layer is not None else []
