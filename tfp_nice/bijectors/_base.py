"""The base of tfp_nice's bijectors whose parameters are the weights of Keras layers."""

from __future__ import annotations

import keras
import tensorflow_probability as tfp

from tfp_nice import serialization

__all__ = ["LayerBijector"]


class LayerBijector(tfp.bijectors.Bijector):
    """A ``tfb.Bijector`` whose parameters are Keras layer weights (a ``FlowModel`` owns them).

    It has no batch-shaped parameters, so its batch shape is ``[]`` and
    ``experimental_batch_shape()`` works (as for ``tfb.RealNVP``). A subclass keeps its one
    layer in ``self._layer`` or overrides :attr:`keras_layers`. Its config
    (:meth:`_config`) holds its Keras layers by the argument names in ``_layer_args``.
    """

    #: The constructor arguments that take a Keras layer (serialised with Keras in the config).
    _layer_args: tuple[str, ...] = ()

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()  # the weights live in Keras layers: batch shape []

    @property
    def keras_layers(self) -> list:
        """Every Keras layer this bijector uses; a ``FlowModel`` owns them."""
        layer = getattr(self, "_layer", None)
        return [layer] if layer is not None else []

    def _config(self, **args) -> dict:
        """The config of :meth:`get_config`: the constructor ``args`` (the Keras layers among
        them serialised), then ``validate_args`` and ``name``."""
        for key in self._layer_args:
            args[key] = serialization.serialize_layer(args[key], key, type(self).__name__)
        return dict(args, validate_args=self.validate_args, name=self.name)

    @classmethod
    def from_config(cls, config: dict):
        """Rebuilds the bijector from its :meth:`get_config`."""
        config = dict(config)
        for key in cls._layer_args:
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
