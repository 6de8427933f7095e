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

__all__ = ["serialize", "deserialize"]

_SKIP = ("self", "__class__", "parameters")


def _tfp_nice_classes() -> dict:
    from tfp_nice import bijectors

    return {name: getattr(bijectors, name) for name in bijectors.__all__}


def serialize(obj: Any, path: str = "obj") -> Any:
    """Returns a JSON-compatible description of ``obj``."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, keras.layers.Layer):
        return {"__keras__": keras.saving.serialize_keras_object(obj)}
    nice = _tfp_nice_classes()
    if type(obj).__name__ in nice and isinstance(obj, nice[type(obj).__name__]):
        return {"__tfp_nice__": type(obj).__name__, "config": obj.get_config()}
    for kind, module in (("bijector", tfp.bijectors), ("distribution", tfp.distributions)):
        name = _public_tfp_name(module, type(obj))
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


def _public_tfp_name(module, cls: type) -> str | None:
    """The public name of a TFP class; TFP builds e.g. ``tfb.Chain`` of non-composite
    bijectors as its private base class ``_Chain``, which ``tfb.Chain(...)`` recreates."""
    name = cls.__name__
    if getattr(module, name, None) is cls:
        return name
    public = getattr(module, name.lstrip("_"), None)
    if name.startswith("_") and isinstance(public, type) and cls in public.__mro__:
        return name.lstrip("_")
    return None


def deserialize(config: Any) -> Any:
    """Inverse of :func:`serialize`."""
    if not isinstance(config, dict):
        return config
    if "__keras__" in config:
        return keras.saving.deserialize_keras_object(config["__keras__"])
    if "__tfp_nice__" in config:
        return _tfp_nice_classes()[config["__tfp_nice__"]].from_config(config["config"])
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
