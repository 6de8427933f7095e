"""Finds the Keras state a TFP bijector/distribution uses, and state Keras cannot train.

Keras 3 does not descend into ``tf.Module`` objects (bijectors, distributions) and
``tf.Module`` does not descend into Keras 3 layers. A :class:`tfp_nice.FlowModel` therefore
walks its steps itself: every Keras layer and Keras variable it finds is owned by the model;
every raw ``tf.Variable``, ``tf_keras`` layer or TF1 template is reported, because Keras
would never train it (see ``tfb.BatchNormalization`` and ``tfb.real_nvp_default_template``).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["Ownership", "collect", "foreign_variable_error", "keras_parameter"]

# id(tf.Variable behind a Keras variable) -> that Keras variable (see keras_parameter).
_KERAS_BEHIND: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def keras_parameter(variable: keras.Variable) -> tf.Variable:
    """Lets a TFP bijector or distribution use a Keras variable as a trainable parameter.

    TFP copies any parameter that is not a ``tf.Variable`` into a constant, so
    ``tfb.Shift(keras_variable)`` would silently never train. Pass
    ``tfb.Shift(keras_parameter(keras_variable))`` instead: it returns the ``tf.Variable``
    behind the Keras variable (gradients reach the Keras variable) and remembers the pair, so
    a :class:`tfp_nice.FlowModel` owns, trains and saves the Keras variable.

    Args:
      variable: a ``keras.Variable``.

    Returns:
      The ``tf.Variable`` holding its value.

    Example:
      >>> import keras, numpy as np, tensorflow_probability as tfp
      >>> v = keras.Variable(np.zeros(2, "float32"))
      >>> shift = tfp.bijectors.Shift(keras_parameter(v))
    """
    if not isinstance(variable, keras.Variable):
        raise TypeError(
            f"`variable` must be a keras.Variable. Received: variable={variable!r}"
        )
    tf_variable = variable.value
    if not isinstance(tf_variable, tf.Variable):
        raise TypeError(
            "keras_parameter needs the TensorFlow backend (its variables are tf.Variables). "
            f"Received a variable whose value is {type(tf_variable).__name__}"
        )
    _KERAS_BEHIND[id(tf_variable)] = variable
    return tf_variable


_SKIP_ATTRS = frozenset({"_cache", "_parameters", "_graph_parents", "_name", "_dtype"})


@dataclasses.dataclass
class Ownership:
    """What a walk found: Keras layers/variables to own, and state Keras cannot train."""

    layers: list = dataclasses.field(default_factory=list)
    variables: list = dataclasses.field(default_factory=list)
    foreign: list = dataclasses.field(default_factory=list)  # (path, description)


def _is_template(obj: Any) -> bool:
    return type(obj).__name__ in ("Template", "EagerTemplate") and hasattr(obj, "variable_scope")


def _is_tf_keras_class(cls: type) -> bool:
    mod = cls.__module__ or ""
    return mod.startswith(("tf_keras", "keras.src.legacy")) or (
        mod.startswith("tensorflow") and ".keras." in mod
    )


def _is_tf_keras_layer(obj: Any) -> bool:
    # Look through the MRO: tfb.AutoregressiveNetwork is defined in TFP but subclasses
    # tf_keras.layers.Layer, so its own __module__ does not reveal it.
    legacy = any(_is_tf_keras_class(c) for c in type(obj).__mro__)
    return legacy and hasattr(obj, "trainable_weights")


def collect(
    obj: Any, path: str, found: Ownership | None = None, _seen: set | None = None
) -> Ownership:
    """Walks ``obj`` (bijector, distribution, layer or nested structure) and records its state."""
    found = found if found is not None else Ownership()
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return found
    seen.add(id(obj))
    if isinstance(obj, keras.layers.Layer):
        found.layers.append(obj)
        return found
    if isinstance(obj, keras.Variable):
        found.variables.append(obj)
        return found
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            collect(item, f"{path}[{i}]", found, seen)
        return found
    if isinstance(obj, dict):
        for k, item in obj.items():
            collect(item, f"{path}.{k}", found, seen)
        return found
    if _is_template(obj):
        found.foreign.append((path, "a TF1 `tf.compat.v1.make_template` function (such as "
                              "`tfb.real_nvp_default_template`) whose variables Keras cannot see"))
        return found
    if _is_tf_keras_layer(obj):
        found.foreign.append((path, f"a tf_keras (Keras 2) layer `{getattr(obj, 'name', obj)}` "
                              "whose weights Keras 3 cannot see or train"))
        return found
    if isinstance(obj, tf.Variable):
        owner = _KERAS_BEHIND.get(id(obj))
        if owner is not None and owner.value is obj:
            found.variables.append(owner)
        else:
            found.foreign.append((path, f"a raw tf.Variable `{obj.name}` that Keras cannot see "
                                  "(for a Keras variable, pass `tfp_nice.keras_parameter(var)`)"))
        return found
    if isinstance(obj, (tfp.bijectors.Bijector, tfp.distributions.Distribution)):
        nice = hasattr(obj, "keras_layers")
        for k, item in getattr(obj, "parameters", {}).items():
            if k in ("self", "__class__", "name"):
                continue
            if not nice and isinstance(item, keras.Variable):
                found.foreign.append((f"{path}.{k}", (
                    f"a Keras variable `{item.path}` passed directly as a TFP parameter, which "
                    "TFP copies into a constant that never trains; pass "
                    "`tfp_nice.keras_parameter(var)` instead")))
                continue
            collect(item, f"{path}.{k}", found, seen)
        for i, layer in enumerate(getattr(obj, "keras_layers", ()) or ()):
            collect(layer, f"{path}.keras_layers[{i}]", found, seen)
        for k, item in vars(obj).items():  # state a bijector builds itself (tfb.BatchNormalization)
            if k not in _SKIP_ATTRS:
                collect(item, f"{path}.{k.lstrip('_')}", found, seen)
        return found
    if isinstance(obj, tf.Module):  # e.g. tfp.util.DeferredTensor
        for k, item in vars(obj).items():
            if k not in _SKIP_ATTRS:
                collect(item, f"{path}.{k.lstrip('_')}", found, seen)
        for v in obj.variables:
            collect(v, f"{path}.{v.name}", found, seen)
        return found
    # A plain callable (e.g. a Python function closing over layers) cannot be inspected.
    return found


def foreign_variable_error(step_desc: str, path: str, what: str) -> ValueError:
    """The error raised when a flow step holds state Keras cannot train."""
    return ValueError(
        f"FlowModel: {step_desc} holds {what} (at `{path}`). Keras `fit` would train the flow "
        "without it and give no error. Use tfp_nice bijectors whose weights live in Keras 3 "
        "layers (AdditiveCoupling, AffineCoupling, DiagonalScale with tfp_nice.layers "
        "conditioners), and give TFP bijectors Keras variables through "
        "`tfp_nice.keras_parameter(var)`."
    )
