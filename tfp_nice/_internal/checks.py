"""Every argument and tensor check of the package, written once.

Messages follow one pattern: what the argument must be, then ``Received: arg=value``
(``ValueError("`num_masked` must be in [1, D - 1]. Received: num_masked=0")``). Each check
takes the exception class to raise (``error=``) so modules with their own error types (such
as :class:`tfp_nice.data.DataError`) reuse them. Only the two tensor checks need
TensorFlow, and import it when called, so the CLI can check its arguments without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_channels_event",
    "check_choice",
    "check_event_shape",
    "check_finite",
    "check_floating",
    "check_int",
    "check_int_sequence",
    "check_number",
    "check_value_range",
    "is_int",
]


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy integer (``bool`` is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, arg: str, minimum: int | None = 1, maximum: int | None = None,
              error: type[Exception] = ValueError, owner: str = "") -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``, else ``error`` naming ``arg``.

    The message says "a positive int" for ``minimum=1`` and "an int >= m" otherwise, with
    "<= M" when there is a ``maximum``.
    """
    ok = is_int(value) and (minimum is None or value >= minimum) and (
        maximum is None or value <= maximum)
    if not ok:
        if minimum == 1 and maximum is None:
            what = "a positive int"
        elif minimum is not None and maximum is not None:
            what = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            what = f"an int >= {minimum}"
        else:
            what = f"an int <= {maximum}" if maximum is not None else "an int"
        raise error(f"{_prefix(owner)}`{arg}` must be {what}. Received: {arg}={value!r}")
    return int(value)


def check_int_sequence(value: Any, arg: str, allow_empty: bool = True,
                       error: type[Exception] = ValueError) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (e.g. layer widths), else ``error`` naming ``arg``."""
    try:
        items = tuple(value)
    except TypeError:
        raise error(
            f"`{arg}` must be a sequence of positive ints, e.g. (64, 64). "
            f"Received: {arg}={value!r}"
        ) from None
    if (not items and not allow_empty) or any(not is_int(u) or u < 1 for u in items):
        raise error(f"`{arg}` must be a sequence of positive ints. Received: {arg}={value!r}")
    return tuple(int(u) for u in items)


def check_number(value: Any, arg: str, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True,
                 error: type[Exception] = ValueError, owner: str = "", what: str = "") -> float:
    """``value`` as a finite ``float`` in the given interval, else ``error`` naming ``arg``.

    ``what`` overrides the description ("a float > 0", "in (0, 1)" ...) in the message.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (low is None or (v >= low if low_inclusive else v > low)) and (
            high is None or (v <= high if high_inclusive else v < high))
    if not ok:
        if not what:
            parts = []
            if low is not None:
                parts.append(f"{'>=' if low_inclusive else '>'} {low:g}")
            if high is not None:
                parts.append(f"{'<=' if high_inclusive else '<'} {high:g}")
            what = "a finite number" + (" " + " and ".join(parts) if parts else "")
        raise error(f"{_prefix(owner)}`{arg}` must be {what}. Received: {arg}={value!r}")
    return float(value)


def check_value_range(value_range: Any, arg: str = "value_range",
                      error: type[Exception] = ValueError) -> tuple[float, float]:
    """A pair of finite floats ``(low, high)`` with ``low < high``, else ``error``."""
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise error(
            f"`{arg}` must be a pair of finite numbers (low, high) with low < high. "
            f"Received: {arg}={value_range!r}"
        )
    return low, high


def check_choice(value: Any, options: Sequence, arg: str, error: type[Exception] = ValueError,
                 owner: str = ""):
    """``value`` if it is one of ``options``, else ``error`` listing them."""
    if value not in options:
        raise error(
            f"{_prefix(owner)}`{arg}` must be one of {list(options)}. Received: {arg}={value!r}"
        )
    return value


def check_event_shape(event_shape: Any, arg: str = "event_shape",
                      error: type[Exception] = ValueError, example: str = "") -> tuple[int, ...]:
    """A non-empty tuple of positive ints from an int or a sequence, else ``error``."""
    dims = (event_shape,) if is_int(event_shape) else event_shape
    try:
        shape = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        hint = f", e.g. {example}" if example else ""
        raise error(
            f"`{arg}` must be a non-empty sequence of positive ints{hint}. "
            f"Received: {arg}={event_shape!r}"
        )
    return shape


def check_floating(x, owner: str, arg: str) -> None:
    """Raises ``TypeError`` naming ``arg`` if the tensor ``x`` is not floating point."""
    if not x.dtype.is_floating:
        raise TypeError(
            f"{owner}: `{arg}` must be a floating-point tensor (float32 or float64). "
            f"Received: {arg}.dtype={x.dtype.name}"
        )


def check_finite(x, owner: str, arg: str):
    """``x`` behind an in-graph check that every value is finite."""
    import tensorflow as tf

    return tf.debugging.assert_all_finite(
        x, message=f"{owner}: `{arg}` must be finite, but it holds NaN or Inf values"
    )


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def check_channels_event(x, event_ndims: int, channels: int, owner: str, arg: str) -> list[int]:
    """The static event shape of ``x`` (its last ``event_ndims`` axes), checking that it ends
    in ``channels`` channels; a ``ValueError`` naming ``arg`` otherwise."""
    if x.shape.rank is None or x.shape.rank < event_ndims:
        raise ValueError(
            f"{owner}: `{arg}` must have rank >= {event_ndims} (the event rank). "
            f"Received: {arg}.shape={x.shape}"
        )
    event = x.shape[x.shape.rank - event_ndims :]
    if not event.is_fully_defined() or event[-1] != channels:
        raise ValueError(
            f"{owner}: `{arg}` must have a static event shape ending in {channels} channels. "
            f"Received: {arg}.shape={x.shape}"
        )
    return event.as_list()
