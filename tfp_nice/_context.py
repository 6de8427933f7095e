"""The context of a conditional flow: class labels or a vector, checked and made a tensor.

A :class:`tfp_nice.FlowModel` built with ``num_classes=K`` takes integer class labels
(``[batch]``, or one label for the whole batch) and conditions its steps on their one-hot
vectors ``[batch, K]``; with ``context_shape=[K]`` it takes float vectors ``[batch, K]`` (or one
``[K]``). :class:`ContextSpec` does the checking and conversion; :func:`pack_fit_data` turns
``fit``/``evaluate`` data with a context (``fit(x, labels)``, ``(x, c)`` tuples, datasets of
pairs) into the ``(x, c)`` model inputs Keras hands to ``call``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_nice._internal.checks import check_event_shape, check_int

__all__ = [
    "CONTEXT_KEY", "ContextSpec", "pack_fit_data", "pack_validation_data", "split_inputs",
]

#: The condition keyword a FlowModel passes to its steps (``step.forward(x, context=c)``).
CONTEXT_KEY = "context"


@dataclasses.dataclass(frozen=True)
class ContextSpec:
    """What a conditional flow is conditioned on: ``num_classes`` labels or a vector."""

    num_classes: int | None = None
    context_shape: tuple[int, ...] | None = None

    @classmethod
    def from_args(cls, num_classes: Any, context_shape: Any, owner: str = "FlowModel"
                  ) -> ContextSpec | None:
        """The spec for a model's arguments (``None``: unconditional)."""
        if num_classes is not None and context_shape is not None:
            raise ValueError(
                f"{owner}: give at most one of `num_classes` (class labels) and `context_shape` "
                f"(a vector context). Received: num_classes={num_classes!r}, "
                f"context_shape={context_shape!r}"
            )
        if num_classes is not None:
            return cls(num_classes=check_int(num_classes, "num_classes", minimum=2, owner=owner))
        if context_shape is not None:
            shape = check_event_shape(context_shape, "context_shape", example="[8]")
            if len(shape) != 1:
                raise ValueError(
                    f"{owner}: `context_shape` must be a vector shape [k]. "
                    f"Received: context_shape={list(shape)}"
                )
            return cls(context_shape=shape)
        return None

    @property
    def width(self) -> int:
        """``k``: the size of the context vector the steps see."""
        return self.num_classes if self.num_classes is not None else self.context_shape[0]

    def zeros(self, dtype) -> tf.Tensor:
        """A ``[1, k]`` context (for building the layers)."""
        return tf.zeros([1, self.width], dtype)

    def condition(self, context: Any, x: tf.Tensor, event_ndims: int, arg: str = "context"
                  ) -> tf.Tensor:
        """``context`` as the steps' ``[*batch, k]`` float condition for the data ``x``
        (``batch``: the shape of ``x`` without its ``event_ndims`` event axes).

        Labels become one-hot vectors. Checks run in Python for Python/NumPy/eager values
        (``TypeError``/``ValueError`` naming ``arg``) and in the graph otherwise (an
        ``InvalidArgumentError`` for a label outside ``[0, K)``).
        """
        if context is None:
            raise ValueError(
                f"This flow is conditional ({self.describe()}): `{arg}` is required. "
                f"Received: {arg}=None"
            )
        rank = x.shape.rank - event_ndims
        if self.num_classes is not None:
            labels = self._labels(context, arg)
            if labels.shape.rank == rank + 1 and labels.shape[-1] == 1:  # Keras' usual [N, 1]
                labels = labels[..., 0]
            c, what = tf.one_hot(labels, self.num_classes, dtype=x.dtype), "labels [batch]"
        else:
            c, what = self._vector(context, arg), f"[batch, {self.width}]"
        return _broadcast(tf.cast(c, x.dtype), x, rank, self.width, arg, what)

    def describe(self) -> str:
        if self.num_classes is not None:
            return f"num_classes={self.num_classes}"
        return f"context_shape={list(self.context_shape)}"

    def _labels(self, labels, arg: str) -> tf.Tensor:
        k = self.num_classes
        want = f"`{arg}` must hold integer class labels in [0, {k}) (num_classes={k})"
        if not tf.is_tensor(labels) or tf.executing_eagerly():
            value = np.asarray(labels.numpy() if tf.is_tensor(labels) else labels)
            if value.dtype == bool or not np.issubdtype(value.dtype, np.integer):
                raise TypeError(f"{want}. Received: {arg}.dtype={value.dtype}")
            if value.size and (value.min() < 0 or value.max() >= k):
                raise ValueError(
                    f"{want}. Received labels from {int(value.min())} to {int(value.max())}")
            return tf.constant(value.astype(np.int64))
        if not labels.dtype.is_integer:
            raise TypeError(f"{want}. Received: {arg}.dtype={labels.dtype.name}")
        labels = tf.cast(labels, tf.int64)
        with tf.control_dependencies([
            tf.debugging.assert_non_negative(labels, message=want),
            tf.debugging.assert_less(labels, tf.constant(k, tf.int64), message=want),
        ]):
            return tf.identity(labels)

    def _vector(self, context, arg: str) -> tf.Tensor:
        k = self.width
        c = tf.convert_to_tensor(context)
        if not c.dtype.is_floating:
            raise TypeError(
                f"`{arg}` must be a float vector context [batch, {k}]. "
                f"Received: {arg}.dtype={c.dtype.name}"
            )
        if c.shape.rank is None or c.shape.rank < 1 or c.shape[-1] != k:
            raise ValueError(
                f"`{arg}` must have shape [batch, {k}] (or [{k}] for the whole batch). "
                f"Received: {arg}.shape={c.shape}"
            )
        return c


def _broadcast(c: tf.Tensor, x: tf.Tensor, rank: int, k: int, arg: str, what: str
               ) -> tf.Tensor:
    """``c [..., k]`` broadcast to ``batch(x) + [k]`` (a clear error when it cannot)."""
    batch = x.shape[:rank]
    target = tuple(batch) + (k,)
    got = tuple(c.shape)
    try:
        np.broadcast_shapes(tuple(1 if d is None else d for d in got),
                            tuple(1 if d is None else d for d in target))
        ok = len(got) <= len(target)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"`{arg}` must match the batch: {what} for a batch of shape {batch.as_list()}. "
            f"Received: {arg} giving a context of shape {list(got)}"
        )
    if got == target and None not in got:
        return c
    return tf.broadcast_to(c, tf.concat([tf.shape(x)[:rank], [k]], axis=0))


def split_inputs(inputs: Any, owner: str = "FlowModel") -> tuple[Any, Any]:
    """``(x, context)`` from a conditional model's inputs: a pair or ``{"x", "context"}``."""
    if isinstance(inputs, dict) and set(inputs) == {"x", CONTEXT_KEY}:
        return inputs["x"], inputs[CONTEXT_KEY]
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
        return inputs[0], inputs[1]
    raise ValueError(
        f"{owner}: a conditional model's inputs are pairs (x, context) (or a dict with keys "
        f"'x' and 'context'): call model((x, labels)), fit(x, labels) or fit on a dataset of "
        f"(x, labels). Received: {type(inputs).__name__}"
    )


def pack_fit_data(x: Any, y: Any, what: str = "x") -> tuple[Any, Any]:
    """``(x, y)`` for ``keras.Model.fit``/``evaluate`` of a conditional model: the context
    moves into the inputs, ``x -> (x, context)``.

    Accepts ``(x, context_array)`` as ``fit(x, y)``, an ``(x, context)`` tuple as ``x``, and a
    ``tf.data.Dataset`` of ``(x, context)`` or ``(x, context, sample_weight)`` elements.
    """
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], tuple):
            return x.map(lambda a, c: ((a, c),)), None
        if isinstance(spec, tuple) and len(spec) == 3 and not isinstance(spec[0], tuple):
            return x.map(lambda a, c, w: ((a, c), c, w)), None
        if isinstance(spec, tuple) and spec and isinstance(spec[0], tuple) and len(spec[0]) == 2:
            return x, None
        raise ValueError(
            f"A conditional model needs `{what}` to yield (x, context) pairs (or "
            f"(x, context, sample_weight)). Received a dataset of {spec}"
        )
    if y is not None and not isinstance(x, (tuple, list, dict)):
        return (x, y), None
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return tuple(x), y
    if isinstance(x, dict):
        return x, y
    raise ValueError(
        f"A conditional model is fitted on (x, context): pass fit(x, labels), fit((x, labels)) "
        f"or a dataset of (x, labels) pairs. Received `{what}` without a context"
    )


def pack_validation_data(data: Any) -> Any:
    """``validation_data`` of a conditional model: ``(x, c)`` -> ``((x, c),)``; datasets as
    :func:`pack_fit_data`."""
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        return pack_fit_data(data, None, "validation_data")[0]
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(
            data[0], (tuple, list, dict)):
        return ((data[0], data[1]),) + ((None, data[2]) if len(data) == 3 else ())
    return data
