"""The one module that touches TensorFlow Probability and Keras internals.

Each function names the private detail it relies on; ``tests/test_compat.py`` pins each one
against the installed TFP and Keras, so an upgrade that moves a detail fails there, in one
place, and not silently elsewhere.

* **TFP's bijector cache** (``Bijector._cache``): a coupling computes its output and log-det
  from one conditioner call and stores the log-det where ``log_prob`` looks for it, as
  ``tfb.FFJORD`` does (:func:`store_forward_log_det`, :func:`store_inverse_log_det`).
* **TFP's private composite bases**: ``tfb.Chain([...])`` and ``tfb.Invert(b)`` of bijectors
  that are not composite tensors build ``_Chain`` / ``_Invert`` (:func:`is_chain`,
  :func:`is_invert`, :func:`public_tfp_name`).
* **State a TFP object builds itself** (``tfb.BatchNormalization``'s tf_keras layer) lives in
  its instance attributes next to TFP's private bookkeeping (:func:`instance_state`).
* **Keras 2 detection**: tf_keras layers, TF1 templates (:func:`is_tf_keras_layer`,
  :func:`is_template`).
* **Variable handles**: the ``tf.Variable`` behind a Keras 3 variable (:func:`tf_variable`).
* **Nested layers**: every layer inside a Keras model, recursively, through Keras' private
  ``_flatten_layers`` (:func:`nested_layers`), to read their dtype policies.
* **Keras' resume epoch**: ``BackupAndRestore`` tells ``fit`` where to start through the
  model's private ``_initial_epoch`` (:func:`keras_initial_epoch`).
* **Untracked holders**: Keras and ``tf.Module`` auto-track attributes; :class:`Untracked`
  hides TFP objects whose layers a model already owns.
* **XLA scheduling**: TensorFlow's private ``XlaControlFlowContext`` tells whether ops are
  being built for XLA (:func:`in_xla_context`), and its private ``XlaOptimizationBarrier`` op
  orders computations in a way XLA keeps, where it drops control dependencies
  (:func:`ordered_after`).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = [
    "Untracked",
    "in_xla_context",
    "instance_state",
    "is_chain",
    "is_invert",
    "is_template",
    "keras_initial_epoch",
    "nested_layers",
    "is_tf_keras_layer",
    "ordered_after",
    "public_tfp_name",
    "store_forward_log_det",
    "store_inverse_log_det",
    "tf_variable",
    "variable_refs",
]


# --- TFP's bijector cache ----------------------------------------------------------------------
def store_forward_log_det(bijector, x: tf.Tensor, fldj: tf.Tensor, **kwargs) -> None:
    """Records ``fldj(x)`` so ``bijector.forward_log_det_jacobian(x)`` reuses it.

    TFP keys the cache by tensor identity (and the condition ``kwargs``); it stores the
    *inverse* log-det under ``"ildj"`` for both directions.
    """
    bijector._cache.forward_attributes(x, **kwargs)["ildj"] = -fldj  # noqa: SLF001


def store_inverse_log_det(bijector, y: tf.Tensor, ildj: tf.Tensor, **kwargs) -> None:
    """Records ``ildj(y)`` so ``bijector.inverse_log_det_jacobian(y)`` reuses it."""
    bijector._cache.inverse_attributes(y, **kwargs)["ildj"] = ildj  # noqa: SLF001


# --- TFP classes -------------------------------------------------------------------------------
def _is_tfp(b: Any, name: str) -> bool:
    return any(c.__name__ in (name, f"_{name}") for c in type(b).__mro__)


def is_chain(b: Any) -> bool:
    """``isinstance(b, tfb.Chain)``, also for TFP's private non-composite ``_Chain``."""
    return _is_tfp(b, "Chain")


def is_invert(b: Any) -> bool:
    """``isinstance(b, tfb.Invert)``, also for TFP's private non-composite ``_Invert``."""
    return _is_tfp(b, "Invert")


def public_tfp_name(module, cls: type) -> str | None:
    """The public name of a TFP class in ``module`` (``tfb`` or ``tfd``), or ``None``.

    ``tfb.Chain(...)`` of non-composite bijectors is an instance of the private ``_Chain``,
    which ``tfb.Chain(...)`` recreates.
    """
    name = cls.__name__
    if getattr(module, name, None) is cls:
        return name
    public = getattr(module, name.lstrip("_"), None)
    if name.startswith("_") and isinstance(public, type) and cls in public.__mro__:
        return name.lstrip("_")
    return None


#: TFP's own bookkeeping attributes of bijectors and distributions (not user state).
_TFP_PRIVATE_ATTRS = frozenset({"_cache", "_parameters", "_graph_parents", "_name", "_dtype"})


def instance_state(obj: Any) -> list[tuple[str, Any]]:
    """``(name, value)`` of the state a TFP object holds itself, minus TFP's bookkeeping."""
    return [(k.lstrip("_"), v) for k, v in vars(obj).items() if k not in _TFP_PRIVATE_ATTRS]


# --- Keras 2 / TF1 detection -------------------------------------------------------------------
def _is_tf_keras_class(cls: type) -> bool:
    mod = cls.__module__ or ""
    return mod.startswith(("tf_keras", "keras.src.legacy")) or (
        mod.startswith("tensorflow") and ".keras." in mod
    )


def is_tf_keras_layer(obj: Any) -> bool:
    """Whether ``obj`` is a tf_keras (Keras 2) layer, whose weights Keras 3 cannot see.

    Looks through the MRO: ``tfb.AutoregressiveNetwork`` is defined in TFP but subclasses
    ``tf_keras.layers.Layer``.
    """
    legacy = any(_is_tf_keras_class(c) for c in type(obj).__mro__)
    return legacy and hasattr(obj, "trainable_weights")


def is_template(obj: Any) -> bool:
    """Whether ``obj`` is a TF1 ``tf.compat.v1.make_template`` function."""
    return type(obj).__name__ in ("Template", "EagerTemplate") and hasattr(obj, "variable_scope")


# --- variables ---------------------------------------------------------------------------------
def tf_variable(v: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras 3 variable (``v`` itself if it is one).

    Under a ``tf.distribute`` strategy Keras' ``.value`` is a read, so the handle is its
    private ``_value``.
    """
    if isinstance(v, keras.Variable):
        value = v.value
        if not isinstance(value, tf.Variable):
            value = v._value  # noqa: SLF001
        v = value
    if not isinstance(v, tf.Variable):
        raise TypeError(f"Not a tf.Variable or a Keras variable: {v!r}")
    return v


def nested_layers(layer) -> list:
    """Every layer inside ``layer`` (recursively, each once, ``layer`` itself excluded),
    through Keras' private ``Layer._flatten_layers``."""
    return list(layer._flatten_layers(include_self=False, recursive=True))  # noqa: SLF001


def keras_initial_epoch(model) -> int | None:
    """The epoch a callback asked ``fit`` to start from (Keras' private ``_initial_epoch``).

    ``keras.callbacks.BackupAndRestore.on_train_begin`` sets it after restoring a backup;
    Keras' own ``fit`` reads it right after ``on_train_begin``.
    """
    epoch = getattr(model, "_initial_epoch", None)
    return int(epoch) if epoch is not None else None


def variable_refs(v: Any) -> set:
    """The ``ref()`` keys of a Keras or TF variable: its ``tf.Variable`` and, for a
    ``tf.distribute`` variable, each per-replica component (``.values``)."""
    tv = tf_variable(v)
    refs = {tv.ref()}
    for component in getattr(tv, "values", None) or ():
        if isinstance(component, tf.Variable):
            refs.add(component.ref())
    return refs


class Untracked:
    """Holds objects out of sight of Keras' and ``tf.Module``'s attribute tracking.

    Keras auto-tracks attributes of layers and models: a ``tfd.TransformedDistribution``
    assigned to a model would be wrapped and walked. A model that already owns every layer
    of its flow keeps the TFP objects in one of these.
    """

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)


# --- XLA scheduling ----------------------------------------------------------------------------
def in_xla_context() -> bool:
    """Whether ops built now go to XLA (inside ``tf.function(jit_compile=True)``).

    TensorFlow enters a private ``XLAControlFlowContext`` while it traces a ``jit_compile``
    function, its gradient functions included; ``control_flow_util`` reads it.
    """
    if tf.executing_eagerly():
        return False
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


@tf.custom_gradient
def _barrier(t: tf.Tensor, *deps: tf.Tensor):
    from tensorflow.compiler.tf2xla.python import xla

    def grad(dt):
        return [dt] + [None] * len(deps)

    return xla.optimization_barrier(t, *deps)[0], grad


def ordered_after(t: tf.Tensor, deps) -> tf.Tensor:
    """``t``, available only once every tensor in ``deps`` is computed.

    Outside XLA this is ``tf.identity(t)`` behind ``tf.control_dependencies(deps)``. XLA
    drops control dependencies, so under ``jit_compile`` ``t`` and ``deps`` go through one
    ``XlaOptimizationBarrier`` (TF's private ``tf2xla.python.xla.optimization_barrier``): its
    outputs exist only after all its inputs, and XLA neither moves computations across it
    nor simplifies through it (e.g. a slice of ``t`` is not traced back to the tensors
    ``t`` was concatenated from). The value of ``t`` is unchanged either way, and so is its
    gradient (the barrier has none registered: it passes ``t``'s through, none to ``deps``).

    Args:
      t: the tensor to hold back.
      deps: tensors (``None`` entries are ignored) that must exist first.

    Returns:
      A tensor equal to ``t``.
    """
    deps = [d for d in deps if d is not None]
    if not deps:
        return t
    if in_xla_context():
        return _barrier(t, *deps)
    with tf.control_dependencies(deps):
        return tf.identity(t)
