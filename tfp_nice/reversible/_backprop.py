"""Shared machinery of the memory-saving custom gradients (RevNet stacks and coupling flows)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_nice._internal import compat

__all__ = ["GradientSink", "after", "or_zeros", "trainable"]


def after(t: tf.Tensor, *deps) -> tf.Tensor:
    """``t``, available only after ``deps``: orders a reconstruction after the gradient.

    A control dependency outside XLA, an optimization barrier under ``jit_compile`` (XLA
    drops control dependencies); see :func:`tfp_nice._internal.compat.ordered_after`.
    """
    return compat.ordered_after(t, deps)


def or_zeros(g, like: tf.Tensor) -> tf.Tensor:
    if g is None:
        return tf.zeros_like(like)
    return tf.convert_to_tensor(g)


class GradientSink:
    """Collects the gradients of ``tf.custom_gradient``'s ``variables`` pass by pass.

    ``variables`` are the ``tf.Variable`` objects the forward pass read, in TF's order; each
    backward pass asks for the ones among them that belong to its sub-network (by identity),
    plus any read variable no sub-network claims, and adds the gradients it gets (shared
    weights accumulate). :meth:`result` returns them in ``variables`` order.
    """

    def __init__(self, variables, weight_groups):
        self.variables = list(variables or ())
        self._index = {v.ref(): i for i, v in enumerate(self.variables)}
        self._grads: list = [None] * len(self.variables)
        claimed = {compat.tf_variable(w).ref() for ws in weight_groups for w in ws}
        self._orphans = [v for v in self.variables if v.ref() not in claimed]

    def sources(self, weights) -> list:
        out, seen = [], set()
        for w in weights:
            r = compat.tf_variable(w).ref()
            if r in self._index and r not in seen:
                seen.add(r)
                out.append(self.variables[self._index[r]])
        return out + [v for v in self._orphans if v.ref() not in seen]

    def add(self, sources, grads) -> None:
        for v, g in zip(sources, grads):
            if g is None:
                continue
            g = tf.convert_to_tensor(g)
            i = self._index[v.ref()]
            self._grads[i] = g if self._grads[i] is None else self._grads[i] + g

    def result(self) -> list:
        return list(self._grads)


def trainable(layer) -> list:
    return list(layer.trainable_weights) if isinstance(layer, keras.layers.Layer) else []
