"""JSON configs for TFP bijectors and distributions, so a ``FlowModel`` can ``get_config``.

* tfp_nice bijectors serialise through their own ``get_config`` (their Keras layers
  through ``keras.saving``);
* any ``tfp.bijectors`` / ``tfp.distributions`` class whose constructor parameters are
  numbers, strings, arrays, Keras layers or other such objects serialises as its class name
  and parameters (``tfb.Permute``, ``tfb.Shift``, ``tfb.Scale``, ``tfb.Reshape``,
  ``tfb.Chain``, ``tfb.Invert``, ``tfd.Sample``, ``tfd.Normal``...);
* anything else (a Python function, a raw ``tf.Variable``) raises a ``TypeError`` naming it.

Example:
  >>> import tensorflow_probability as tfp

from tfp_nice._internal import compat
  >>> cfg = serialize(tfp.bijectors.Shift(2.0))
  >>> float(deserialize(cfg).forward(1.0))
  3.0
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice._internal import compat

__all__ = ["deserialize", "register", "serialize", "serialize_layer"]

_SKIP = ("self", "__class__", "parameters")

#: tfp_nice bijector classes by name (filled by :func:`register`).
_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: a tfp_nice bijector serialised through its ``get_config`` /
    ``from_config`` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def serialize_layer(layer: Any, arg: str, owner: str) -> dict | None:
    """A Keras layer's config (``None`` stays ``None``); a ``TypeError`` naming ``arg`` if
    it is not a layer Keras can serialise."""
    if layer is None:
        return None
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"{owner}.get_config: `{arg}` must be a registered keras.layers.Layer to be "
            f"serialised. Received: {arg}={layer!r}"
        )
    return keras.saving.serialize_keras_object(layer)


def serialize(obj: Any, path: str = "obj") -> Any:
    """Returns a JSON-compatible description of ``obj``."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, keras.layers.Layer):
        return {"__keras__": keras.saving.serialize_keras_object(obj)}
    if _REGISTRY.get(type(obj).__name__) is type(obj):
        return {"__tfp_nice__": type(obj).__name__, "config": obj.get_config()}
    for kind, module in (("bijector", tfp.bijectors), ("distribution", tfp.distributions)):
        name = compat.public_tfp_name(module, type(obj))
        if name is not None:
            params = {
                k: serialize(v, f"{path}.{k}")
                for k, v in obj.parameters.items()
                if k not in _SKIP
            }
            return {"__tfp__": kind, "class_name": name, "parameters": params}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [serialize(v, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        return {"__dict__": {str(k): serialize(v, f"{path}.{k}") for k, v in obj.items()}}
    if isinstance(obj, tf.Variable) or isinstance(obj, keras.Variable):
        raise TypeError(
            f"Cannot serialise `{path}`: it is a variable ({obj.name}). Hold variables in "
            "Keras layers (tfp_nice.layers) so the model's weights file stores them."
        )
    if isinstance(obj, (np.ndarray, np.generic, tf.Tensor)):
        arr = np.asarray(obj)
        return {"__array__": arr.tolist(), "dtype": arr.dtype.name}
    if isinstance(obj, tf.dtypes.DType):
        return {"__dtype__": obj.name}
    raise TypeError(
        f"Cannot serialise `{path}` of type {type(obj).__name__}: only numbers, strings, arrays, "
        "Keras layers, tfp_nice bijectors and tfp.bijectors/tfp.distributions classes with such "
        f"parameters can be saved. Received: {obj!r}"
    )


def deserialize(config: Any) -> Any:
    """Inverse of :func:`serialize`."""
    if not isinstance(config, dict):
        return config
    if "__keras__" in config:
        return keras.saving.deserialize_keras_object(config["__keras__"])
    if "__tfp_nice__" in config:
        name = config["__tfp_nice__"]
        if name not in _REGISTRY:
            raise ValueError(f"Unknown tfp_nice bijector {name!r} in a saved config")
        return _REGISTRY[name].from_config(config["config"])
    if "__tfp__" in config:
        module = tfp.bijectors if config["__tfp__"] == "bijector" else tfp.distributions
        params = {k: deserialize(v) for k, v in config["parameters"].items()}
        return getattr(module, config["class_name"])(**params)
    if "__list__" in config:
        return [deserialize(v) for v in config["__list__"]]
    if "__dict__" in config:
        return {k: deserialize(v) for k, v in config["__dict__"].items()}
    if "__array__" in config:
        return np.asarray(config["__array__"], dtype=config["dtype"])
    if "__dtype__" in config:
        return tf.as_dtype(config["__dtype__"])
    raise ValueError(f"Not a tfp_nice serialised object: {config!r}")
