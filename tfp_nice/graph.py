"""One walker over step graphs: what a flow is made of, and who owns its state.

A flow is a tree of bijectors: ``tfb.Chain`` and :class:`~tfp_nice.bijectors.FactorOut` /
memory-saving runs hold other bijectors, ``tfb.Invert`` wraps one. Everything that needs to
look inside a flow uses this module:

* :func:`children` / :func:`walk` — the bijectors a step holds, and every step of a tree;
* :func:`flatten_chains` — nested ``tfb.Chain`` steps as one flat list (memory-saving runs);
* :func:`collect` — every Keras layer and variable a flow uses (a ``FlowModel`` owns them)
  and any state Keras could not train (a ``tf_keras`` layer, a TF1 template, a raw
  ``tf.Variable``), so a model can refuse it instead of training without it; Python
  callables (a ``tfb.RealNVP``'s ``shift_and_log_scale_fn`` lambda) are searched through
  their closures, defaults and the globals they name;
* :func:`route_condition` — the condition keyword arguments of a flow, routed to every step
  that takes them (``tfb.Chain``'s ``bijector_kwargs`` convention);
* :func:`keras_parameter` — a Keras variable as a TFP bijector parameter.

Keras 3 does not descend into ``tf.Module`` objects (bijectors, distributions) and
``tf.Module`` does not descend into Keras 3 layers, hence this walk.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import weakref
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice._internal import compat

__all__ = [
    "Ownership",
    "children",
    "collect",
    "flatten_chains",
    "foreign_state_error",
    "keras_parameter",
    "read_variables",
    "route_condition",
    "walk",
]

tfb = tfp.bijectors
tfd = tfp.distributions

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


# --- the tree ----------------------------------------------------------------------------------
def children(b: Any) -> list:
    """The bijectors ``b`` holds: a Chain's or a memory-saving run's steps, the bijector an
    ``Invert`` or ``FactorOut`` wraps; ``[]`` for a leaf."""
    held = getattr(b, "bijectors", None)
    if isinstance(held, (list, tuple)):
        return [c for c in held if isinstance(c, tfb.Bijector)]
    inner = getattr(b, "bijector", None)
    return [inner] if isinstance(inner, tfb.Bijector) and inner is not b else []


def walk(b: Any) -> Iterator:
    """Every bijector of the tree rooted at ``b`` (``b`` first, then depth first)."""
    yield b
    for c in children(b):
        yield from walk(c)


def flatten_chains(steps) -> list:
    """``steps`` with every (nested) ``tfb.Chain`` replaced by its own steps, in order."""
    out = []
    for b in steps:
        out.extend(flatten_chains(b.bijectors) if compat.is_chain(b) else [b])
    return out


def route_condition(b: Any, condition: dict) -> dict:
    """The keyword arguments that bring ``condition`` to every step of ``b`` that takes one.

    A step that takes a condition (tfp_nice couplings unless built with ``conditional=False``,
    and :class:`~tfp_nice.ContextAffine`: ``step.conditional``) gets ``condition`` itself; a
    ``tfb.Chain`` (or a memory-saving run) gets ``{step.name: route, ...}`` for its steps that
    need one, as ``tfb.Chain`` routes ``bijector_kwargs``; ``tfb.Invert`` and ``FactorOut``
    pass theirs through to the bijector they wrap. Other steps get nothing.

    Raises:
      ValueError: if two steps of one chain share a name but not a route (``tfb.Chain`` routes
        by name, so one would get the other's condition).

    Example:
      >>> import numpy as np, tensorflow_probability as tfp
      >>> from tfp_nice import AffineCoupling, MLPConditioner
      >>> chain = tfp.bijectors.Chain([AffineCoupling(MLPConditioner(), num_masked=1, name="c0"),
      ...                              tfp.bijectors.Shift(1.0)])
      >>> route_condition(chain, {"context": "c"})
      {'c0': {'context': 'c'}}
    """
    if getattr(b, "conditional", False) is True:
        return dict(condition)
    held = getattr(b, "bijectors", None)
    if isinstance(held, (list, tuple)):
        routes: dict = {}
        for c in (c for c in held if isinstance(c, tfb.Bijector)):
            route = route_condition(c, condition)
            if c.name in routes and (tf.nest.map_structure(id, routes[c.name])
                                     != tf.nest.map_structure(id, route)):
                raise ValueError(
                    f"Two steps of `{b.name}` are named {c.name!r}, and only one takes the "
                    "condition: tfb.Chain routes condition keyword arguments by step name. "
                    f"Give the steps unique names. Received: {[s.name for s in held]}"
                )
            routes[c.name] = route
        return {k: v for k, v in routes.items() if v}
    inner = getattr(b, "bijector", None)
    if isinstance(inner, tfb.Bijector) and inner is not b:
        return route_condition(inner, condition)
    return {}


# --- ownership ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Ownership:
    """What a walk found: Keras layers/variables to own, and state Keras cannot train."""

    layers: list = dataclasses.field(default_factory=list)
    variables: list = dataclasses.field(default_factory=list)
    foreign: list = dataclasses.field(default_factory=list)  # (path, description)


def collect(obj: Any, path: str = "obj", found: Ownership | None = None,
            _seen: set | None = None) -> Ownership:
    """Walks ``obj`` (bijector, distribution, layer or nested structure) and records its state.

    Bijectors and distributions are walked through their constructor ``parameters``, their
    ``keras_layers`` (tfp_nice's) and the state they built themselves; a plain Python
    callable cannot be inspected (see :func:`foreign_state_error` for what a model reports).
    """
    found = found if found is not None else Ownership()
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return found
    seen.add(id(obj))
    if isinstance(obj, keras.layers.Layer):
        found.layers.append(obj)
    elif isinstance(obj, keras.Variable):
        found.variables.append(obj)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            collect(item, f"{path}[{i}]", found, seen)
    elif isinstance(obj, dict):
        for k, item in obj.items():
            collect(item, f"{path}.{k}", found, seen)
    elif compat.is_template(obj):
        found.foreign.append((path, "a TF1 `tf.compat.v1.make_template` function (such as "
                              "`tfb.real_nvp_default_template`) whose variables Keras cannot see"))
    elif compat.is_tf_keras_layer(obj):
        found.foreign.append((path, f"a tf_keras (Keras 2) layer `{getattr(obj, 'name', obj)}` "
                              "whose weights Keras 3 cannot see or train"))
    elif isinstance(obj, tf.Variable):
        _collect_tf_variable(obj, path, found)
    elif isinstance(obj, (tfb.Bijector, tfd.Distribution)):
        _collect_tfp(obj, path, found, seen)
    elif isinstance(obj, tf.Module):  # e.g. tfp.util.DeferredTensor
        for k, item in compat.instance_state(obj):
            collect(item, f"{path}.{k}", found, seen)
        for v in obj.variables:
            collect(v, f"{path}.{v.name}", found, seen)
    elif isinstance(obj, (types.FunctionType, types.MethodType, functools.partial)):
        for where, item in _callable_state(obj):
            collect(item, f"{path}.<{where}>", found, seen)
    return found


def _callable_state(fn: Any) -> list[tuple[str, Any]]:
    """What a Python function can reach: closure cells, defaults, the globals it names
    (modules, classes and builtins left out), a bound method's object, a partial's arguments."""
    if isinstance(fn, functools.partial):
        return [("partial.func", fn.func), ("partial.args", list(fn.args)),
                ("partial.keywords", dict(fn.keywords or {}))]
    if isinstance(fn, types.MethodType):
        return [("self", fn.__self__), ("method", fn.__func__)]
    state: list[tuple[str, Any]] = []
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            state.append((f"closure {name}", cell.cell_contents))
        except ValueError:  # an empty cell
            continue
    state += [("defaults", list(fn.__defaults__ or ())),
              ("kwdefaults", dict(fn.__kwdefaults__ or {}))]
    for name in _global_names(code):
        value = fn.__globals__.get(name)
        if value is not None and not isinstance(value, (types.ModuleType, type,
                                                        types.BuiltinFunctionType)):
            state.append((f"global {name}", value))
    return state


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:  # nested functions and lambdas
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return names


def _collect_tf_variable(v: tf.Variable, path: str, found: Ownership) -> None:
    owner = _KERAS_BEHIND.get(id(v))
    if owner is not None and owner.value is v:
        found.variables.append(owner)
    else:
        found.foreign.append((path, f"a raw tf.Variable `{v.name}` that Keras cannot see "
                              "(for a Keras variable, pass `tfp_nice.keras_parameter(var)`)"))


def _collect_tfp(obj: Any, path: str, found: Ownership, seen: set) -> None:
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
    for k, item in compat.instance_state(obj):  # state a bijector builds (tfb.BatchNormalization)
        collect(item, f"{path}.{k}", found, seen)


def read_variables(steps, base_distribution, x: tf.Tensor, condition: dict) -> list[list]:
    """Runs ``steps`` (``tfb.Chain`` order) data -> latent on ``x`` eagerly, then the base
    ``log_prob``, and returns the trainable ``tf.Variable`` objects each read (the last entry:
    the base's). Builds every Keras layer on the way.

    A ``FlowModel`` compares them with the variables it owns: a variable read here that Keras
    cannot see (held by a Python callable, a closure it could not search...) would silently
    never train.
    """
    read, h = [], x
    for step in steps:
        kwargs = route_condition(step, condition) if condition else {}
        with tf.GradientTape() as tape:
            out = step.inverse(h, **kwargs)
            step.inverse_log_det_jacobian(h, event_ndims=h.shape.rank - 1, **kwargs)
        read.append(list(tape.watched_variables()))
        h = out
    with tf.GradientTape() as tape:
        base_distribution.log_prob(h)
    read.append(list(tape.watched_variables()))
    return read


def foreign_state_error(step_desc: str, path: str, what: str) -> ValueError:
    """The error raised when a flow step holds state Keras cannot train."""
    return ValueError(
        f"FlowModel: {step_desc} holds {what} (at `{path}`). Keras `fit` would train the flow "
        "without it and give no error. Use tfp_nice bijectors whose weights live in Keras 3 "
        "layers (AdditiveCoupling, AffineCoupling, DiagonalScale with tfp_nice.layers "
        "conditioners), and give TFP bijectors Keras variables through "
        "`tfp_nice.keras_parameter(var)`."
    )
