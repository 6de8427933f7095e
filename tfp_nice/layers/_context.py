"""Conditioners that take a context: condition keyword arguments join the network's input.

A coupling calls its conditioner as ``conditioner(x1, **condition)`` (TFP's convention). The
layers here accept any condition keyword arguments and concatenate them, in sorted name order,
to the input along the last axis before the network runs (so Keras builds the first layer for
the joint width): vectors ``[N, k]`` next to ``x1 [N, d1]``; for image inputs ``[N, H, W, C]``
a vector condition becomes ``k`` constant feature maps (tiled over ``H, W``) and an image
condition ``[N, H, W, k]`` is concatenated as it is.
"""

from __future__ import annotations

import keras

__all__ = ["ContextInput", "with_context"]

#: Keyword arguments of ``keras.layers.Layer.__call__`` that are not a condition.
_KERAS_CALL_KWARGS = ("training", "mask")


def with_context(inputs, condition: dict):
    """``concat([inputs, *condition values], -1)`` with vector conditions tiled over the
    spatial axes of image inputs; values are cast to the inputs' dtype."""
    inputs = keras.ops.convert_to_tensor(inputs)
    rank = len(inputs.shape)
    parts = [inputs]
    for key in sorted(condition):
        c = keras.ops.cast(keras.ops.convert_to_tensor(condition[key]), inputs.dtype)
        if len(c.shape) == 1:  # one context for the whole batch
            c = keras.ops.broadcast_to(c[None], (keras.ops.shape(inputs)[0], c.shape[-1]))
        if len(c.shape) == 2 and rank > 2:
            c = keras.ops.reshape(c, (-1,) + (1,) * (rank - 2) + (c.shape[-1],))
            c = keras.ops.broadcast_to(c, tuple(keras.ops.shape(inputs)[:-1]) + (c.shape[-1],))
        if len(c.shape) != rank:
            raise ValueError(
                f"The condition `{key}` must be a vector per example [batch, k] (or, for image "
                f"inputs, [batch, H, W, k]). Received: {key}.shape={tuple(c.shape)} for inputs "
                f"of shape {tuple(inputs.shape)}"
            )
        parts.append(c)
    return keras.ops.concatenate(parts, axis=-1)


class ContextInput:
    """Mixin for a ``keras.layers.Layer``: ``layer(x, **condition)`` runs the layer on
    :func:`with_context` of ``x`` and the condition (no condition: ``x`` unchanged)."""

    def __call__(self, inputs, *args, **kwargs):
        condition = {k: kwargs.pop(k) for k in list(kwargs) if k not in _KERAS_CALL_KWARGS}
        if condition:
            inputs = with_context(inputs, condition)
        return super().__call__(inputs, *args, **kwargs)
