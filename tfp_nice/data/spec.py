"""What a dataset is: :class:`DataSpec` (shape and value range) and :class:`Splits` (arrays)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfp_nice._internal.checks import check_event_shape, is_int

__all__ = ["DataError", "DataSpec", "MAX_CLASSES", "MAX_LEVELS", "Splits"]

#: The most integer levels float32 holds exactly (2**24).
MAX_LEVELS = 2**24
#: The most classes a class-conditional flow takes (its labels are one-hot vectors).
MAX_CLASSES = 10_000


class DataError(ValueError):
    """A dataset could not be loaded or is invalid; the message says why in one line."""


# --- descriptions ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a dataset looks like: its event shape and the range of its raw values.

    Args:
      name: the ``source`` it was loaded from (``"digits"``, ``"moons"``, a path, ``"tfds:mnist"``).
      event_shape: shape of one example, ``(H, W, C)`` for images or ``(D,)`` for vectors.
      num_levels: integer-valued data takes values in ``{0, ..., num_levels - 1}`` and is
        dequantized to ``[0, num_levels)``; ``None`` means continuous data.
      low: smallest value the raw data may take.
      high: largest value the raw data may take.

    Example:
      >>> spec = DataSpec("digits", (8, 8, 1), num_levels=17, low=0.0, high=16.0)
      >>> spec.is_image, spec.num_dims, DataSpec.from_config(spec.to_config()) == spec
      (True, 64, True)
    """

    name: str
    event_shape: tuple[int, ...]
    num_levels: int | None
    low: float
    high: float

    def __post_init__(self) -> None:
        shape = check_event_shape(self.event_shape, error=DataError)
        object.__setattr__(self, "event_shape", shape)
        if self.num_levels is not None:
            if not is_int(self.num_levels) or not 2 <= self.num_levels <= MAX_LEVELS:
                raise DataError(
                    f"`num_levels` must be None or an int in [2, {MAX_LEVELS}] (integers above "
                    f"2**24 are not exact in float32). Received: num_levels={self.num_levels!r}"
                )
            object.__setattr__(self, "num_levels", int(self.num_levels))
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise DataError(
                f"`low` and `high` must be finite with low <= high. Received: low={self.low!r}, "
                f"high={self.high!r}"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def is_image(self) -> bool:
        """Whether examples are ``[H, W, C]`` images."""
        return len(self.event_shape) == 3

    @property
    def num_dims(self) -> int:
        """Number of dimensions ``D`` of one example (for bits/dim)."""
        return int(np.prod(self.event_shape))

    def to_config(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_config` inverts it."""
        return {
            "name": self.name,
            "event_shape": list(self.event_shape),
            "num_levels": self.num_levels,
            "low": self.low,
            "high": self.high,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DataSpec:
        """Rebuilds a spec from :meth:`to_config`'s dict."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(config, Mapping) or set(config) != fields:
            got = sorted(config) if isinstance(config, Mapping) else config
            raise DataError(
                f"A DataSpec config needs exactly the keys {sorted(fields)}. Received: {got!r}"
            )
        return cls(**{**config, "event_shape": tuple(config["event_shape"])})


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Splits:
    """Train / validation / test arrays of raw float32 values, each ``[N, *spec.event_shape]``,
    and their integer class labels when the source has them.

    ``train_labels`` etc. are int64 arrays ``[N]`` in ``[0, num_classes)`` or all ``None``;
    ``labels_dropped`` says why a source's labels were not kept (given for only some splits:
    enough for an unconditional model, which ignores them; :meth:`require_labels` refuses).

    Example:
      >>> from tfp_nice.data import load
      >>> s = load("8gaussians", num_samples=40)
      >>> s
      Splits(spec=DataSpec(name='8gaussians', ...), train=(40, 2), validation=(10, 2), test=(10, 2))
      >>> load("digits").num_classes
      10
    """

    spec: DataSpec
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    num_classes: int | None = None
    labels_dropped: str | None = None

    @property
    def has_labels(self) -> bool:
        """Whether every split has class labels."""
        return self.train_labels is not None

    def require_labels(self, what: str = "--conditional") -> int:
        """The number of classes, or a one-line :class:`DataError` if there are no labels
        (or too many classes for a one-hot label: at most :data:`MAX_CLASSES`)."""
        if not self.has_labels and self.labels_dropped:
            raise DataError(f"{what} needs class labels for every split: {self.labels_dropped}")
        if not self.has_labels:
            raise DataError(
                f"{what} needs class labels, but {self.spec.name!r} has none: give a .npz with "
                "integer 'y' (or 'y_train', and 'y_val'/'y_test' beside 'x_val'/'x_test'), the "
                "digits, or a TFDS dataset with a 'label' feature."
            )
        if self.num_classes is None or self.num_classes < 2 or self.num_classes > MAX_CLASSES:
            raise DataError(
                f"{self.spec.name!r}: the labels must be class indices in [0, K) with "
                f"2 <= K <= {MAX_CLASSES}; found labels from 0 to {(self.num_classes or 1) - 1}."
            )
        return self.num_classes

    def __repr__(self) -> str:
        spec = repr(self.spec)
        spec = spec[: spec.index(",")] + ", ...)" if "," in spec else spec
        return (
            f"Splits(spec={spec}, train={self.train.shape}, "
            f"validation={self.validation.shape}, test={self.test.shape})"
        )
