"""Shapes: flatten the event part of a tensor, split and merge it by a static index plan."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

__all__ = [
    "flatten_event",
    "leading_shape",
    "merge_flat",
    "reshape_leading",
    "reshape_to",
    "split_flat",
    "unflatten_event",
]


def leading_shape(x: tf.Tensor, event_ndims: int):
    """The batch part of ``x``'s shape: a list when static, else a dynamic shape tensor."""
    batch = x.shape[: x.shape.rank - event_ndims]
    if batch.is_fully_defined():
        return batch.as_list()
    return tf.shape(x)[: tf.rank(x) - event_ndims]


def reshape_leading(x: tf.Tensor, lead, tail_ndims: int) -> tf.Tensor:
    """Reshapes ``x`` (``[N, *tail]`` or any shape ending in the ``tail_ndims`` static axes
    ``tail``) to ``lead + tail``; ``lead`` comes from :func:`leading_shape`."""
    tail = x.shape[x.shape.rank - tail_ndims :].as_list() if tail_ndims else []
    return reshape_to(x, lead, tail)


def flatten_event(x: tf.Tensor, event_ndims: int) -> tf.Tensor:
    """Reshapes ``x`` from ``batch + event_shape`` to ``batch + [prod(event_shape)]``."""
    if event_ndims == 1:
        return x
    size = x.shape[x.shape.rank - event_ndims :].num_elements()
    return reshape_to(x, leading_shape(x, event_ndims), [size])


def unflatten_event(x: tf.Tensor, event_shape: Sequence[int]) -> tf.Tensor:
    """Inverse of :func:`flatten_event`: ``batch + [D]`` back to ``batch + event_shape``."""
    event_shape = list(event_shape)
    if len(event_shape) == 1:
        return x
    return reshape_to(x, leading_shape(x, 1), event_shape)


def reshape_to(x: tf.Tensor, lead, tail: list) -> tf.Tensor:
    """Reshapes ``x`` to ``lead + tail`` (``lead`` from :func:`leading_shape`)."""
    if isinstance(lead, list):
        return tf.reshape(x, lead + tail)
    return tf.reshape(x, tf.concat([lead, tf.constant(tail, lead.dtype)], axis=0))


def split_flat(x: tf.Tensor, index1, index2) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits the last axis of ``x`` into ``(x1, x2)``.

    ``index1``/``index2`` are either ``slice`` objects (contiguous halves, the
    fast path) or integer index arrays (gathers).
    """
    if isinstance(index1, slice):
        return x[..., index1], x[..., index2]
    return tf.gather(x, index1, axis=-1), tf.gather(x, index2, axis=-1)


def merge_flat(x1: tf.Tensor, x2: tf.Tensor, first_is_x1: bool, inverse_permutation) -> tf.Tensor:
    """Inverse of :func:`split_flat`.

    ``first_is_x1`` says which part comes first on the contiguous path;
    ``inverse_permutation`` (or ``None`` on the contiguous path) undoes the gather.
    """
    if inverse_permutation is None:
        parts = [x1, x2] if first_is_x1 else [x2, x1]
        return tf.concat(parts, axis=-1)
    return tf.gather(tf.concat([x1, x2], axis=-1), inverse_permutation, axis=-1)
