"""Masks: which units of an event pass through a coupling (``x1``) and which it transforms (``x2``).

A :class:`Mask` is a static boolean pattern over the event shape: ``True`` marks
the units that pass through unchanged and condition the transform (``x1``),
``False`` the units that are transformed (``x2``). ``mask.complement()`` swaps
the roles, so consecutive couplings alternate.

Kinds (the last three follow RealNVP [2] §3.4 and the NICE paper's [1] alternation):

* :func:`half` — the first ``num_masked`` units (``num_masked < 0``: the last), as ``tfb.RealNVP``
  (``fraction_masked`` rounds as ``tfb.RealNVP``: ``np.round(D * fraction)``);
* :func:`even_odd` — even or odd positions of a vector;
* :func:`checkerboard` — spatial checkerboard over ``[H, W, C]`` images;
* :func:`channel` — the first half of the channels of ``[H, W, C]`` images.

Example:
  >>> m = checkerboard([4, 4, 1])
  >>> m.num_masked, m.num_transformed, bool(m.complement().pattern[0, 0, 0])
  (8, 8, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_nice import _math

__all__ = [
    "Mask", "half", "even_odd", "checkerboard", "channel", "as_mask", "check_fraction_masked",
]


def _as_shape(event_shape: int | Sequence[int], arg: str = "event_shape") -> tuple[int, ...]:
    dims = (event_shape,) if isinstance(event_shape, (int, np.integer)) else event_shape
    try:
        shape = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{arg}` must be a sequence of positive ints. Received: {arg}={event_shape!r}"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(
            f"`{arg}` must be a non-empty sequence of positive ints. "
            f"Received: {arg}={event_shape!r}"
        )
    return shape


class Mask:
    """A static pass-through pattern over an event shape, with split and merge.

    Args:
      pattern: boolean array of the event shape; ``True`` = pass through (``x1``).
      kind: a label used in ``repr`` and ``get_config`` (``"half"``, ``"checkerboard"``...).

    Raises:
      ValueError: if the pattern is all ``True`` or all ``False`` (nothing to
        transform, or nothing to condition on).
    """

    def __init__(self, pattern: Any, kind: str = "custom"):
        pattern = _check_pattern(pattern, "pattern")
        self._pattern = pattern
        self._pattern.setflags(write=False)
        self.kind = kind
        flat = pattern.reshape(-1)
        idx1 = np.flatnonzero(flat)
        idx2 = np.flatnonzero(~flat)
        contiguous = bool(flat[0]) != bool(flat[-1]) and np.count_nonzero(np.diff(flat)) == 1
        if contiguous:
            self._index1 = slice(int(idx1[0]), int(idx1[-1]) + 1)
            self._index2 = slice(int(idx2[0]), int(idx2[-1]) + 1)
            self._first_is_x1 = bool(flat[0])
            self._inverse_permutation = None
        else:
            self._index1, self._index2 = idx1.astype(np.int32), idx2.astype(np.int32)
            self._first_is_x1 = True
            self._inverse_permutation = np.argsort(np.concatenate([idx1, idx2])).astype(np.int32)

    # --- properties --------------------------------------------------------------------------
    @property
    def pattern(self) -> np.ndarray:
        """The boolean pattern (read-only), ``True`` where units pass through."""
        return self._pattern

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._pattern.shape)

    @property
    def event_ndims(self) -> int:
        return self._pattern.ndim

    @property
    def num_masked(self) -> int:
        """Number of pass-through units ``d1``."""
        return int(self._pattern.sum())

    @property
    def num_transformed(self) -> int:
        """Number of transformed units ``d2``."""
        return int(self._pattern.size - self._pattern.sum())

    def complement(self) -> Mask:
        """The mask with the roles swapped (for the next coupling)."""
        return Mask(~self._pattern, kind=self.kind)

    # --- tensors -----------------------------------------------------------------------------
    def split(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``batch + event_shape`` -> ``(x1 [batch, d1], x2 [batch, d2])`` (flattened units)."""
        flat = _math.flatten_event(x, self.event_ndims)
        return _math.split_flat(flat, self._index1, self._index2)

    def merge(self, x1: tf.Tensor, x2: tf.Tensor) -> tf.Tensor:
        """Inverse of :meth:`split`."""
        flat = _math.merge_flat(x1, x2, self._first_is_x1, self._inverse_permutation)
        return _math.unflatten_event(flat, self.event_shape)

    # --- config ------------------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"pattern": self._pattern.astype(int).tolist(), "kind": self.kind}

    @classmethod
    def from_config(cls, config: dict) -> Mask:
        return cls(np.asarray(config["pattern"], dtype=bool), kind=config.get("kind", "custom"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mask) and np.array_equal(self._pattern, other._pattern)

    def __hash__(self) -> int:
        return hash((self._pattern.shape, self._pattern.tobytes()))

    def __repr__(self) -> str:
        return (
            f"Mask(kind={self.kind!r}, event_shape={self.event_shape}, "
            f"num_masked={self.num_masked}, num_transformed={self.num_transformed})"
        )


def half(
    event_size: int,
    num_masked: int | None = None,
    fraction_masked: float | None = None,
    rounding: str = "round",
) -> Mask:
    """The first ``num_masked`` units pass through (the last ``|num_masked|`` if negative).

    Exactly one of ``num_masked`` / ``fraction_masked`` is given, with ``tfb.RealNVP``'s
    meaning: ``fraction_masked`` is a float in ``(-1, 1)`` and selects
    ``np.round(D * fraction_masked)`` units, as ``tfb.RealNVP`` (``D = 8``, ``0.7``: 6 units).
    ``rounding="truncate"`` rounds towards zero instead, as tfp_nice did before it matched
    TFP (couplings saved then keep it when loaded).

    Raises:
      TypeError: if ``num_masked`` is not an int or ``fraction_masked`` not a float.
      ValueError: if the resolved count is not in ``[1, D - 1]`` (or ``[-(D-1), -1]``).
    """
    d = _as_size(event_size)
    if (num_masked is None) == (fraction_masked is None):
        raise ValueError(
            "Exactly one of `num_masked` and `fraction_masked` must be given. "
            f"Received: num_masked={num_masked!r}, fraction_masked={fraction_masked!r}"
        )
    if fraction_masked is not None:
        check_fraction_masked(fraction_masked)
        if rounding not in ("round", "truncate"):
            raise ValueError(
                f"`rounding` must be 'round' or 'truncate'. Received: rounding={rounding!r}"
            )
        scaled = d * float(fraction_masked)
        num_masked = int(np.round(scaled)) if rounding == "round" else int(scaled)
        arg, value = "fraction_masked", fraction_masked
    else:
        arg, value = "num_masked", num_masked
    if isinstance(num_masked, bool) or not isinstance(num_masked, (int, np.integer)):
        raise TypeError(
            f"`num_masked` must be an integer. Received: num_masked={num_masked!r}")
    if d < 2 or not 1 <= abs(num_masked) <= d - 1:
        too_many = (f"Number of masked units {num_masked} must be smaller than the event size "
                    f"{d}: " if abs(num_masked) >= d else "")  # tfb.RealNVP's words
        raise ValueError(
            f"{too_many}`{arg}` must select between 1 and D - 1 = {d - 1} units of an event of "
            f"size D = {d} (negative values select the last units). Received: {arg}={value!r}"
            + (f" (= {num_masked} units)" if arg == "fraction_masked" else "")
        )
    pattern = np.zeros([d], dtype=bool)
    if num_masked > 0:
        pattern[:num_masked] = True
    else:
        pattern[num_masked:] = True
    return Mask(pattern, kind="half")


def check_fraction_masked(fraction_masked: Any, owner: str = "") -> float:
    """``fraction_masked`` if it is a float in ``(-1, 1)`` other than 0 (``tfb.RealNVP``'s rule).

    Raises:
      TypeError: if it is not a float (an ``int`` such as ``1`` included, as in TFP).
      ValueError: if it is outside ``(-1, 1)`` or zero.
    """
    prefix = f"{owner}: " if owner else ""
    if not isinstance(fraction_masked, (float, np.floating)):
        raise TypeError(
            f"{prefix}`fraction_masked` must be a float in (-1, 1). "
            f"Received: fraction_masked={fraction_masked!r}"
        )
    if not (-1 < fraction_masked < 1 and fraction_masked != 0):
        raise ValueError(
            f"{prefix}`fraction_masked` must be in (-1, 1) and nonzero. "
            f"Received: fraction_masked={fraction_masked!r}"
        )
    return float(fraction_masked)


def even_odd(event_size: int, parity: str = "even") -> Mask:
    """Units at even (``parity="even"``) or odd positions pass through (NICE's alternation)."""
    d = _as_size(event_size)
    _check_parity(parity)
    pattern = (np.arange(d) % 2) == (0 if parity == "even" else 1)
    return Mask(pattern, kind="even_odd")


def checkerboard(event_shape: Sequence[int], parity: str = "even") -> Mask:
    """RealNVP's spatial checkerboard over ``[H, W, C]``: ``(i + j) % 2 == 0`` passes (even)."""
    shape = _as_image_shape(event_shape)
    _check_parity(parity)
    h, w, c = shape
    board = (np.add.outer(np.arange(h), np.arange(w)) % 2) == (0 if parity == "even" else 1)
    return Mask(np.repeat(board[:, :, None], c, axis=2), kind="checkerboard")


def channel(event_shape: Sequence[int], parity: str = "even") -> Mask:
    """RealNVP's channel mask over ``[H, W, C]``: the first ``C // 2`` channels pass (even)."""
    shape = _as_image_shape(event_shape)
    _check_parity(parity)
    h, w, c = shape
    if c < 2:
        raise ValueError(
            "A channel mask needs at least 2 channels (squeeze first). "
            f"Received: event_shape={list(shape)}"
        )
    first = np.arange(c) < c // 2
    if parity == "odd":
        first = ~first
    return Mask(np.broadcast_to(first, (h, w, c)).copy(), kind="channel")


def as_mask(mask: Any, arg: str = "mask") -> Mask:
    """Accepts a :class:`Mask` or a boolean array-like and returns a :class:`Mask`."""
    if isinstance(mask, Mask):
        return mask
    if isinstance(mask, dict):
        return Mask.from_config(mask)
    try:
        arr = np.asarray(mask)
    except Exception:  # noqa: BLE001 - report the value below
        arr = None
    if arr is None or arr.dtype == object or arr.ndim == 0:
        raise TypeError(
            f"`{arg}` must be a tfp_nice.masks.Mask or a boolean array. Received: {arg}={mask!r}"
        )
    return Mask(_check_pattern(arr, arg))


def _check_pattern(pattern: Any, arg: str) -> np.ndarray:
    """Validates a pass-through pattern; errors name ``arg`` (``pattern`` or ``mask``)."""
    pattern = np.asarray(pattern)
    if pattern.dtype != bool:
        if not np.isin(pattern, (0, 1)).all():
            raise ValueError(
                f"`{arg}` must be boolean (or 0/1). "
                f"Received values {np.unique(pattern)[:5].tolist()}"
            )
        pattern = pattern.astype(bool)
    if pattern.ndim == 0:
        raise ValueError(f"`{arg}` must have at least one dimension. Received a scalar")
    n1 = int(pattern.sum())
    if n1 == 0 or n1 == pattern.size:
        raise ValueError(
            f"`{arg}` must mark at least one unit to pass through and one to transform. "
            f"Received: {arg} with {n1} of {pattern.size} units marked True"
        )
    return pattern


def _as_size(event_size: int, arg: str = "event_size") -> int:
    shape = _as_shape(event_size, arg)
    if len(shape) != 1:
        raise ValueError(
            f"`{arg}` must be a positive int (the size of a vector event; use checkerboard or "
            f"channel masks for images). Received: {arg}={event_size!r}"
        )
    return shape[0]


def _check_parity(parity: str) -> None:
    if parity not in ("even", "odd"):
        raise ValueError(f"`parity` must be 'even' or 'odd'. Received: parity={parity!r}")


def _as_image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = _as_shape(event_shape)
    if len(shape) != 3:
        raise ValueError(
            f"`event_shape` must be [height, width, channels]. Received: event_shape={list(shape)}"
        )
    return shape  # type: ignore[return-value]
