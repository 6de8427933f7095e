"""Datasets for the training CLI: offline digits, 2-D toy densities, user ``.npy``/``.npz``, TFDS.

:func:`load` turns a ``source`` string into :class:`Splits` (train / validation / test arrays of
raw float32 values, ``[N, *event_shape]``) plus a :class:`DataSpec` describing them;
:func:`as_dataset` turns one split into a batched ``tf.data`` pipeline.

Sources:

* ``"digits"`` (the default, needs no download): the 1797 real 8x8 handwritten digits bundled
  with scikit-learn, integer values ``0..16`` -> ``[N, 8, 8, 1]``, ``num_levels=17``, and their
  labels 0..9. The split
  is FIXED (a permutation from ``np.random.default_rng(0)``; ``seed`` and
  ``validation_fraction`` do not change it): 1257 train / 270 validation / 270 test.
* ``"moons"``, ``"rings"``, ``"checkerboard"``, ``"8gaussians"``: the 2-D toy densities of
  FFJORD [1] and nflows, drawn with numpy: ``num_samples`` training points from ``seed`` and
  ``num_samples // 4`` validation and test points each from independent streams.
* a path to a ``.npy`` file (one array) or a ``.npz`` archive (``x`` or ``x_train``, optional
  ``x_test`` and ``x_val``/``x_validation``, and class labels ``y``/``y_train``, ``y_val``,
  ``y_test``): images ``[N, H, W, C]`` (``[N, H, W]`` gets ``C = 1``) or vectors ``[N, D]``;
  integer arrays are discrete data (``num_levels`` = 2 for bool, 256 for uint8, ``max + 1``
  for other integer dtypes, unless given; at most 2**24 levels, which float32 holds exactly),
  float arrays are continuous.
  Missing splits are carved from the training array (seeded by ``seed``): the test split
  first, then the validation split, each ``validation_fraction`` of the examples.
* ``"tfds:NAME"`` (e.g. ``"tfds:mnist"``, ``"tfds:cifar10"``): the ``"image"`` (and
  ``"label"``) features of a TensorFlow Datasets dataset (``train`` and ``test`` splits;
  validation carved from train), uint8 with ``num_levels=256``. Data comes from
  ``TFDS_DATA_DIR`` or is downloaded.

Data space. Integer-valued data (``num_levels`` not None) is made continuous by **uniform
dequantization** in :func:`as_dataset`: ``y = x + u``, ``u ~ U[0, 1)``, so the model's data
space is ``[0, num_levels)`` per dimension and a density there lower-bounds the discrete
likelihood (RealNVP [2] §4.1). Bits/dim is then simply ``NLL / (D * ln 2)`` with
``D = spec.num_dims`` and no further correction: it equals the usual figure of models that
rescale to ``[0, 1)`` and add ``D * ln(num_levels)`` to their NLL.
Training pipelines draw fresh noise every epoch; evaluation pipelines use one fixed, seeded
draw, so evaluation is deterministic. Continuous data passes through unchanged.

Every problem with the input raises :class:`DataError` (a ``ValueError``) with a one-line
message naming the file, array or value.

Example:
  >>> splits = load("moons", seed=0, num_samples=400)
  >>> splits.train.shape, splits.validation.shape, splits.spec.num_levels
  ((400, 2), (100, 2), None)
  >>> from tfp_nice.data import as_dataset  # (imports TensorFlow on first use)
  >>> ds = as_dataset(splits.train, splits.spec, batch_size=128, training=True)
  >>> next(iter(ds)).shape
  TensorShape([128, 2])

References:
  [1] Grathwohl et al., FFJORD, arXiv:1810.01367 (toy densities).
  [2] Dinh, Sohl-Dickstein, Bengio, Density estimation using Real NVP, arXiv:1605.08803.
"""

from __future__ import annotations

from typing import Any

from tfp_nice.data.load import DENSITIES, load
from tfp_nice.data.spec import DataError, DataSpec, Splits

__all__ = ["DataError", "DataSpec", "Splits", "DENSITIES", "load", "as_dataset"]


def __getattr__(name: str) -> Any:
    # The tf.data pipeline needs TensorFlow; loading and checking data does not.
    if name == "as_dataset":
        from tfp_nice.data.pipeline import as_dataset

        return as_dataset
    raise AttributeError(f"module 'tfp_nice.data' has no attribute {name!r}")

