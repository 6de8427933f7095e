"""Running a coupling's conditioner: its inputs (``x1`` and the condition) and its outputs.

Not public; :class:`~tfp_nice.bijectors._coupling.CouplingBase` uses it. A conditioner is
called as ``conditioner(inputs, **condition)`` (TFP's ``bijector_kwargs`` convention):

* ``"flat"`` input: ``inputs`` is ``x1`` as a 2-D batch ``[N, d1]`` (``N`` the flattened batch
  shape), and every vector condition (a tensor ``[..., k]``) is broadcast against ``x1``'s
  batch shape and flattened the same way to ``[N, k]``, so the two line up row by row;
* ``"masked"`` input (image couplings): ``inputs`` is ``[x * mask, mask]`` as ``[N, H, W, C + 1]``
  and the condition is flattened to ``[N, k]`` the same way (conv conditioners tile it into
  constant feature maps).

Outputs follow ``tfb.RealNVP``: with one tensor per parameter (a tuple ``(shift, log_scale)``,
or one shift), each may broadcast against ``x2 [batch, d2]`` — ``[N, d2]``, ``[N, 1]``,
``[d2]``, ``[1]`` or a scalar; a single tensor holding several parameters (``[N, 2 * d2]``) is
split and must have the exact width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfp_nice import _math

__all__ = [
    "flatten_condition",
    "infer_output_units",
    "output_shape_error",
    "outputs_to_tuple",
    "reshape_outputs",
]


def infer_output_units(conditioner: Any, units: int) -> None:
    """Tells a conditioner built without an output size (``MLPConditioner()``) its size."""
    infer = getattr(conditioner, "infer_output_units", None)
    if callable(infer):
        infer(units)


def _is_vector_condition(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim >= 1
    if tf.is_tensor(value) or isinstance(value, tf.Variable):
        return value.shape.rank is None or value.shape.rank >= 1
    return False


def flatten_condition(condition: dict, lead, owner: str, arg: str) -> dict:
    """Each vector condition ``[..., k]`` broadcast to ``lead + [k]`` and flattened to
    ``[N, k]``; other values (scalars, Python objects) pass through unchanged."""
    out = {}
    for key, value in condition.items():
        if not _is_vector_condition(value):
            out[key] = value
            continue
        value = tf.convert_to_tensor(value)
        k = value.shape[-1] if value.shape.rank else None
        if k is None:
            raise ValueError(
                f"{owner}: the condition `{key}` must have a statically known last dimension "
                f"(its feature size). Received: {key}.shape={value.shape}"
            )
        if isinstance(lead, list):
            batch = value.shape[:-1]
            try:
                np.broadcast_shapes(tuple(d if d is not None else 1 for d in batch), tuple(lead))
            except ValueError:
                raise ValueError(
                    f"{owner}: the condition `{key}` must broadcast against the batch shape "
                    f"{lead} of `{arg}` (a vector condition is [batch..., k]). "
                    f"Received: {key}.shape={value.shape}"
                ) from None
        if not (isinstance(lead, list) and value.shape[:-1] == lead):
            value = tf.broadcast_to(value, _target(lead, k))
        out[key] = tf.reshape(value, [-1, k])
    return out


def _target(lead, k: int):
    if isinstance(lead, list):
        return lead + [k]
    return tf.concat([lead, tf.constant([k], lead.dtype)], axis=0)


def outputs_to_tuple(out: Any) -> tuple:
    """A conditioner's output as a tuple of tensors (``None`` entries kept)."""
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return tuple(o if o is None or tf.is_tensor(o) else tf.convert_to_tensor(o) for o in outs)


def reshape_outputs(outs: tuple, rows, lead, dtype) -> tuple:
    """Flat-conditioner outputs back to the batch shape of ``x1``: ``[N, u]`` -> ``lead + [u]``;
    ``[1, u]``, ``[u]`` and scalars broadcast as they are; ``None`` stays ``None``."""
    result = []
    for o in outs:
        if o is None:
            result.append(None)
            continue
        o = tf.cast(o, dtype)
        if o.shape.rank == 2 and o.shape[0] == 1 and rows != 1:
            o = o[0]
        elif o.shape.rank == 2:
            o = _math.reshape_leading(o, lead, 1)
        result.append(o)
    return tuple(result)


def output_shape_error(outs: tuple, rows, expected: dict, num_parameters: int,
                       spatial: tuple = ()) -> str | None:
    """Why ``outs`` do not fit (``None`` if they do).

    ``expected`` maps "number of returned tensors" -> "last dimension of each"; the entry with
    ``num_parameters`` tensors (one per parameter) may broadcast in the flat case.
    """
    k = len(outs)
    if k not in expected:
        return "count"
    u = expected[k]
    for o in outs:
        if o is None:
            if spatial or k != num_parameters or num_parameters == 1:
                return "none"
            continue
        shape = tuple(o.shape)
        if spatial:
            if len(shape) != len(spatial) + 2 or shape[1:] != (*spatial, u):
                return "shape"
            continue
        broadcast = k == num_parameters
        if broadcast and len(shape) <= 1:
            if shape and shape[-1] not in (1, u):
                return "shape"
            continue
        if len(shape) != 2 or shape[-1] not in ((1, u) if broadcast else (u,)):
            return "shape"
        if rows is not None and shape[0] is not None and shape[0] not in (rows, 1):
            return "shape"
    return None
