"""The data space clients see, and its mapping to and from the model's space.

``x`` is always in the space the user's data came in. For continuous data that is the
model's own space. For integer data with ``L`` levels (``data`` given with ``num_levels``,
e.g. the 8x8 digits, ``L = 17``) the model was trained on dequantized values ``k + u`` in
``[low, low + L)``; the export takes the *raw integer levels* ``k`` and

* ``log_prob`` evaluates the held-out estimator of ``metrics.json``:
  ``log p(k + u(k))`` with :func:`tfp_nice.preprocessing.dequantize` (noise that is a fixed
  function of the row and :data:`~tfp_nice.preprocessing.DEQUANTIZATION_SEED`), so the
  served bits/dim of a test split equals ``test_bits_per_dim``;
* ``encode`` maps ``k`` to its bin centre ``k + 0.5`` (so ``decode(encode(k)).x == k``);
* ``sample``/``decode`` return the levels ``x = clip(floor(y), low, low + L - 1)`` and the
  model-space value ``x_continuous = y``.

Example:
  >>> space = DataSpace((2,), {"num_levels": 4, "low": 0.0})
  >>> space.describe()["kind"]
  'integer levels'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfp_nice import preprocessing
from tfp_nice.export import graph_checks
from tfp_nice.export.errors import ExportError

__all__ = ["DataSpace"]


class DataSpace:
    """Maps client values to the model's data space and back, with the in-graph checks of ``x``.

    Args:
      event_shape: the model's event shape.
      data: ``None`` (``x`` is the model's space), a :class:`tfp_nice.data.DataSpec` or its
        config dict (``run.json``'s ``"data"``).
    """

    def __init__(self, event_shape, data: Any = None):
        self.event_shape = tuple(int(d) for d in event_shape)
        self.num_levels: int | None = None
        self.low: float | None = None
        self.high: float | None = None
        if data is None:
            return
        data = data.to_config() if hasattr(data, "to_config") else data
        if not isinstance(data, Mapping):
            raise ExportError(
                "`data` must be None, a tfp_nice.data.DataSpec or its config dict (run.json's "
                f"'data'). Received: data={data!r}", argument="data")
        shape = data.get("event_shape")
        if shape is not None and tuple(int(d) for d in shape) != self.event_shape:
            raise ExportError(f"`data` has event shape {list(shape)} but the model's is "
                              f"{list(self.event_shape)}", argument="data")
        levels, low = data.get("num_levels"), float(data.get("low", 0.0))
        if levels is not None:
            levels = int(levels)
            if levels < 2 or not math.isfinite(low) or low != math.floor(low):
                raise ExportError(
                    "`data` must have num_levels >= 2 and an integer low. "
                    f"Received: num_levels={levels!r}, low={low!r}", argument="data")
            self.num_levels, self.low, self.high = levels, low, low + levels - 1
        elif len(self.event_shape) == 3 and "high" in data:
            # Continuous images: the model rescales [low, high] to [0, 1]; outside is garbage.
            self.low, self.high = low, float(data["high"])

    @property
    def discrete(self) -> bool:
        return self.num_levels is not None

    def describe(self) -> dict:
        """The data space for the export metadata."""
        if self.discrete:
            return {
                "kind": "integer levels",
                "num_levels": self.num_levels, "low": self.low, "high": self.high,
                "x_in": f"raw integer levels in [{self.low:g}, {self.high:g}] as float32",
                "log_prob": "log p(x + u(x)): preprocessing.dequantize with seed "
                            f"{preprocessing.DEQUANTIZATION_SEED}, the estimator of "
                            "metrics.json's test_bits_per_dim",
                "encode": "the bin centre x + 0.5",
                "x_out": "x: raw levels clip(floor(y), low, high); x_continuous: y",
            }
        if self.low is not None:
            return {"kind": "bounded continuous", "low": self.low, "high": self.high,
                    "x_in": f"float32 values in [{self.low:g}, {self.high:g}]", "x_out": "x"}
        return {"kind": "continuous", "x_in": "float32 values", "x_out": "x"}

    def checked(self, x: tf.Tensor) -> tf.Tensor:
        """``x`` behind the shape, finiteness, range and integer-level checks."""
        x = graph_checks.rows(x, "x", self.event_shape)
        if self.low is not None:
            what = "integer levels" if self.discrete else "values"
            x = graph_checks.in_range(x, "x", self.low, self.high, what)
        if self.discrete:
            x = graph_checks.integer_levels(x, "x", self.high)
        return x

    def for_density(self, x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """Checked ``x`` in the model's space for ``log_prob`` (dequantized if discrete)."""
        x = self.checked(x)
        if self.discrete:
            x = preprocessing.dequantize(x, preprocessing.DEQUANTIZATION_SEED,
                                         event_ndims=len(self.event_shape))
        return tf.cast(x, dtype)

    def for_encode(self, x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """Checked ``x`` in the model's space for ``encode`` (bin centres if discrete)."""
        x = self.checked(x)
        return tf.cast(x + 0.5 if self.discrete else x, dtype)

    def from_model(self, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """Model-space rows ``y`` as the outputs ``x`` (and ``x_continuous``)."""
        y = tf.cast(y, tf.float32)
        if not self.discrete:
            return {"x": y}
        return {"x": tf.clip_by_value(tf.floor(y), self.low, self.high), "x_continuous": y}
