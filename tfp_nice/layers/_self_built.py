"""A base for layers whose weights' shapes come from constructor arguments alone."""

from __future__ import annotations

from tfp_nice.layers._precision import FullPrecisionLayer

__all__ = ["SelfBuiltLayer", "weight_property"]


class SelfBuiltLayer(FullPrecisionLayer):
    """``build()`` creates the weights from the constructor's arguments (it ignores
    ``input_shape``); reading a weight through :meth:`weight` builds the layer first, so the
    weights exist as soon as anyone needs them, including a bijector that reads them without
    calling the layer.

    These layers hold a flow's sensitive parameters (log-scales, statistics, LU factors), so
    a mixed policy leaves them in its variable dtype (:class:`FullPrecisionLayer`)."""

    def build(self, input_shape=None):
        self._weights_by_name = self.create_weights()

    def create_weights(self) -> dict:
        """Creates the layer's weights; returns them by name."""
        raise NotImplementedError

    def weight(self, name: str):
        """The weight ``name``, building the layer first if needed."""
        if not self.built:
            self.build(None)
            self.built = True
        return self._weights_by_name[name]


def weight_property(name: str, doc: str, only_if: str | None = None) -> property:
    """A read-only property of a :class:`SelfBuiltLayer`: its weight ``name`` (``None`` while
    the layer's attribute ``only_if`` is false, for an optional weight)."""

    def get(self):
        if only_if is not None and not getattr(self, only_if):
            return None
        return self.weight(name)

    return property(get, doc=doc)
