"""Datasets for the training CLI: offline digits, 2-D toy densities, user ``.npy``/``.npz``, TFDS.

:func:`load` turns a ``source`` string into :class:`Splits` (train / validation / test arrays of
raw float32 values, ``[N, *event_shape]``) plus a :class:`DataSpec` describing them;
:func:`as_dataset` turns one split into a batched ``tf.data`` pipeline.

Sources:

* ``"digits"`` (the default, needs no download): the 1797 real 8x8 handwritten digits bundled
  with scikit-learn, integer values ``0..16`` -> ``[N, 8, 8, 1]``, ``num_levels=17``. The split
  is FIXED (a permutation from ``np.random.default_rng(0)``; ``seed`` and
  ``validation_fraction`` do not change it): 1257 train / 270 validation / 270 test.
* ``"moons"``, ``"rings"``, ``"checkerboard"``, ``"8gaussians"``: the 2-D toy densities of
  FFJORD [1] and nflows, drawn with numpy: ``num_samples`` training points from ``seed`` and
  ``num_samples // 4`` validation and test points each from independent streams.
* a path to a ``.npy`` file (one array) or a ``.npz`` archive (``x`` or ``x_train``, optional
  ``x_test`` and ``x_val``/``x_validation``): images ``[N, H, W, C]`` (``[N, H, W]`` gets
  ``C = 1``) or vectors ``[N, D]``; integer arrays are discrete data (``num_levels`` = 256 for
  uint8, ``max + 1`` for other integer dtypes, unless given), float arrays are continuous.
  Missing splits are carved from the training array (seeded by ``seed``): the test split
  first, then the validation split, each ``validation_fraction`` of the examples.
* ``"tfds:NAME"`` (e.g. ``"tfds:mnist"``, ``"tfds:cifar10"``): the ``"image"`` feature of a
  TensorFlow Datasets dataset (``train`` and ``test`` splits; validation carved from train),
  uint8 with ``num_levels=256``. Data comes from ``TFDS_DATA_DIR`` or is downloaded.

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
  >>> ds = as_dataset(splits.train, splits.spec, batch_size=128, training=True)
  >>> next(iter(ds)).shape
  TensorShape([128, 2])

References:
  [1] Grathwohl et al., FFJORD, arXiv:1810.01367 (toy densities).
  [2] Dinh, Sohl-Dickstein, Bengio, Density estimation using Real NVP, arXiv:1605.08803.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_nice import preprocessing

__all__ = ["DataError", "DataSpec", "Splits", "DENSITIES", "load", "as_dataset"]

DENSITIES = ("moons", "rings", "checkerboard", "8gaussians")

_DIGITS_LEVELS = 17
_DIGITS_SPLIT_SEED = 0
_DIGITS_FRACTION = 0.15
_NPZ_TRAIN_KEYS = ("x", "x_train")
_NPZ_VAL_KEYS = ("x_val", "x_validation")
_NPZ_TEST_KEYS = ("x_test",)
_FILE_SUFFIXES = (".npy", ".npz")


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
        try:
            shape = tuple(int(d) for d in self.event_shape)
        except (TypeError, ValueError):
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise DataError(
                "`event_shape` must be a non-empty sequence of positive ints. "
                f"Received: event_shape={self.event_shape!r}"
            )
        object.__setattr__(self, "event_shape", shape)
        if self.num_levels is not None:
            if isinstance(self.num_levels, bool) or not isinstance(
                self.num_levels, (int, np.integer)
            ) or self.num_levels < 2:
                raise DataError(
                    "`num_levels` must be None or an int >= 2. "
                    f"Received: num_levels={self.num_levels!r}"
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
    """Train / validation / test arrays of raw float32 values, each ``[N, *spec.event_shape]``.

    Example:
      >>> s = load("8gaussians", num_samples=40)
      >>> s
      Splits(spec=DataSpec(name='8gaussians', ...), train=(40, 2), validation=(10, 2), test=(10, 2))
    """

    spec: DataSpec
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def __repr__(self) -> str:
        spec = repr(self.spec)
        spec = spec[: spec.index(",")] + ", ...)" if "," in spec else spec
        return (
            f"Splits(spec={spec}, train={self.train.shape}, "
            f"validation={self.validation.shape}, test={self.test.shape})"
        )


# --- loading -----------------------------------------------------------------------------------
def load(
    source: str = "digits",
    *,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    num_levels: int | None = None,
    validation_fraction: float = 0.15,
    num_samples: int = 20000,
) -> Splits:
    """Loads a dataset by name or path and splits it into train / validation / test.

    Args:
      source: ``"digits"``, one of :data:`DENSITIES`, a path to a ``.npy``/``.npz`` file, or
        ``"tfds:NAME"``. See the module docstring.
      seed: seeds the 2-D densities and the carving of missing splits (not the digits split).
      value_range: declared ``(low, high)`` of the raw values; the data is checked against it
        and it becomes ``spec.low``/``spec.high``. Default: ``(0, num_levels - 1)`` for
        integer data, the data's min/max for continuous data.
      num_levels: number of integer levels of discrete data (values ``0..num_levels - 1``);
        the data is checked against it. Giving it for float arrays declares them integer-valued.
        Default: 17 for digits, 256 for uint8, ``max + 1`` for other integer dtypes, None
        (continuous) for float arrays and the 2-D densities.
      validation_fraction: fraction of the examples carved out for each missing split, in
        ``(0, 0.5)``.
      num_samples: number of training points of a 2-D density.

    Returns:
      :class:`Splits` of float32 arrays ``[N, *event_shape]`` and their :class:`DataSpec`.

    Raises:
      DataError: unknown name, missing/corrupt file, wrong array names, NaN/Inf, values outside
        the declared range, wrong dimensionality, too few examples, or a TFDS failure.

    Example:
      >>> s = load("digits")
      >>> s.train.shape, s.spec.num_levels, (s.spec.low, s.spec.high)
      ((1257, 8, 8, 1), 17, (0.0, 16.0))
    """
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(source, str) or not source:
        raise DataError(f"`source` must be a non-empty string. Received: source={source!r}")
    _check_int(seed, "seed", minimum=0)
    _check_int(num_samples, "num_samples", minimum=1)
    if isinstance(validation_fraction, bool) or not isinstance(
        validation_fraction, (float, int)
    ) or not 0 < validation_fraction < 0.5:
        raise DataError(
            "`validation_fraction` must be a number in (0, 0.5). "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    if num_levels is not None:
        _check_int(num_levels, "num_levels", minimum=2)
        num_levels = int(num_levels)
    if value_range is not None:
        value_range = _check_value_range(value_range)

    key = source.strip().lower()
    if key.startswith("tfds:"):
        parts = _load_tfds(source.strip()[5:].strip(), seed, validation_fraction)
    elif key == "digits":
        parts = _load_digits()
        source = key
    elif key in DENSITIES:
        parts = _load_density(key, seed, num_samples)
        source = key
    elif os.path.splitext(source)[1].lower() in _FILE_SUFFIXES:
        parts = _load_file(source, seed, validation_fraction)
    elif os.path.exists(source):
        kind = "a directory" if os.path.isdir(source) else "a file of unsupported type"
        raise DataError(
            f"Cannot load {source!r}: it is {kind}; expected a .npy or .npz file."
        )
    elif os.sep in source or "/" in source or os.path.splitext(source)[1]:
        raise DataError(
            f"File not found: {source!r} (supported files: .npy, .npz)."
        )
    else:
        raise DataError(
            f"Unknown dataset {source!r}. Valid: 'digits', "
            + ", ".join(repr(d) for d in DENSITIES)
            + ", a path to a .npy/.npz file, or 'tfds:NAME' (e.g. 'tfds:mnist')."
        )
    if key == "digits" and num_levels is None:
        num_levels = _DIGITS_LEVELS
    return _finalize(source, parts, value_range=value_range, num_levels=num_levels)


def _finalize(
    name: str,
    parts: dict[str, np.ndarray],
    *,
    value_range: tuple[float, float] | None,
    num_levels: int | None,
) -> Splits:
    """Checks values and builds the spec from three raw arrays of the same event shape."""
    arrays = {k: parts[k] for k in ("train", "validation", "test")}
    dtypes = {a.dtype for a in arrays.values()}
    integer = all(np.issubdtype(d, np.integer) or d == np.bool_ for d in dtypes)
    if not integer:  # the spec describes the float32 values the model sees
        with np.errstate(over="ignore"):  # overflow to inf is reported below
            arrays = {k: a.astype(np.float32, copy=False) for k, a in arrays.items()}
        for split, a in arrays.items():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                raise DataError(
                    f"{name!r}: {bad} value(s) of the {split} data exceed the float32 range."
                )
    lo = min(float(a.min()) for a in arrays.values())
    hi = max(float(a.max()) for a in arrays.values())
    if integer and lo < 0:
        raise DataError(
            f"{name!r}: integer data must take values 0..num_levels-1, but the data has min "
            f"{lo:g} and max {hi:g}; shift it, or store floats for continuous data."
        )
    if integer and num_levels is None:
        num_levels = 256 if dtypes == {np.dtype(np.uint8)} else max(int(hi) + 1, 2)
    if num_levels is not None:
        if not integer and not all(np.array_equal(a, np.round(a)) for a in arrays.values()):
            raise DataError(
                f"{name!r}: `num_levels={num_levels}` declares integer data, but the float data "
                f"has non-integer values (min {lo:g}, max {hi:g}); omit num_levels for "
                "continuous data."
            )
        if lo < 0 or hi > num_levels - 1:
            raise DataError(
                f"{name!r}: values must be integers in [0, {num_levels - 1}] for "
                f"num_levels={num_levels}, but the data has min {lo:g} and max {hi:g}."
            )
        if value_range is not None and (value_range[0] < 0 or value_range[1] > num_levels - 1):
            raise DataError(
                f"`value_range` must lie within [0, num_levels - 1] = [0, {num_levels - 1}] "
                f"for integer data. Received: value_range={value_range!r}"
            )
    if value_range is not None:
        if lo < value_range[0] or hi > value_range[1]:
            raise DataError(
                f"{name!r}: values must lie in value_range=[{value_range[0]:g}, "
                f"{value_range[1]:g}], but the data has min {lo:g} and max {hi:g}."
            )
        low, high = value_range
    elif num_levels is not None:
        low, high = 0.0, float(num_levels - 1)
    else:
        if lo == hi:
            raise DataError(f"{name!r}: every value of the data equals {lo:g}; nothing to model.")
        low, high = lo, hi
    spec = DataSpec(
        name=name,
        event_shape=tuple(arrays["train"].shape[1:]),
        num_levels=num_levels,
        low=low,
        high=high,
    )
    out = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in arrays.items()}
    return Splits(spec=spec, **out)


# --- sources -----------------------------------------------------------------------------------
def _load_digits() -> dict[str, np.ndarray]:
    """scikit-learn's 1797 8x8 digits with the fixed 70/15/15 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            f"The 'digits' dataset needs scikit-learn (pip install scikit-learn): {e}"
        ) from None
    images = load_digits().images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], values 0..16
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
    n_test = n_val = round(_DIGITS_FRACTION * len(images))
    test, val, train = np.split(images[order], [n_test, n_test + n_val])
    return {"train": train, "validation": val, "test": test}


def _load_density(name: str, seed: int, num_samples: int) -> dict[str, np.ndarray]:
    """Draws train / validation / test sets of a 2-D toy density from independent streams."""
    sample = _DENSITY_SAMPLERS[name]
    n_eval = max(num_samples // 4, 1)
    sizes = {"train": num_samples, "validation": n_eval, "test": n_eval}
    return {
        split: sample(np.random.default_rng([seed, i]), n).astype(np.float32)
        for i, (split, n) in enumerate(sizes.items())
    }


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    # sklearn.datasets.make_moons(noise=0.1) with random angles, scaled as in FFJORD.
    n_outer = n // 2
    t = rng.uniform(0.0, np.pi, n)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where((np.arange(n) < n_outer)[:, None], outer, inner)
    x = x + rng.normal(0.0, 0.1, (n, 2))
    return rng.permutation(x * 2.0 + np.array([-1.0, -0.2]))


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    # Four concentric circles of radii 0.75, 1.5, 2.25, 3 plus N(0, 0.08^2) noise (FFJORD).
    radius = 0.75 * rng.integers(1, 5, n)
    t = rng.uniform(0.0, 2.0 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return x + rng.normal(0.0, 0.08, (n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform on the black squares of a 4x4 board over [-4, 4]^2 (FFJORD).
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    # Eight N(c, 0.5^2) on a circle of radius 4, then divided by 1.414 (FFJORD).
    angles = np.arange(8) * (np.pi / 4)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = centers[rng.integers(0, 8, n)] + rng.normal(0.0, 0.5, (n, 2))
    return x / 1.414


_DENSITY_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "moons": _moons,
    "rings": _rings,
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
}


def _load_file(path: str, seed: int, fraction: float) -> dict[str, np.ndarray]:
    """Reads a .npy array or a .npz archive and returns the three splits."""
    if not os.path.exists(path):
        raise DataError(f"File not found: {path!r}.")
    if os.path.isdir(path):
        raise DataError(f"Cannot load {path!r}: it is a directory, not a .npy/.npz file.")
    try:
        with open(path, "rb") as f:
            header = f.read(6)
    except OSError as e:
        raise DataError(f"Cannot open {path!r}: {_one_line(e)}") from None
    if header != b"\x93NUMPY" and not header.startswith(b"PK"):
        raise DataError(
            f"{path!r} is not a NumPy .npy/.npz file (unrecognised header {header!r}); "
            "it may be corrupt or in another format."
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a valid array
        raise DataError(
            f"Cannot read {path!r} as a NumPy .npy/.npz file (corrupt or unsupported content): "
            f"{_one_line(e)}"
        ) from None
    if isinstance(loaded, np.ndarray):
        single = True
        named = {"x": loaded}
    else:
        single = False
        with loaded:
            try:
                named = {k: loaded[k] for k in loaded.files}
            except Exception as e:  # noqa: BLE001 - corrupt member
                raise DataError(f"Cannot read the arrays in {path!r}: {_one_line(e)}") from None
    train_key = _pick(named, _NPZ_TRAIN_KEYS, path, required=True)
    val_key = _pick(named, _NPZ_VAL_KEYS, path, required=False)
    test_key = _pick(named, _NPZ_TEST_KEYS, path, required=False)
    arrays = {
        k: _as_examples(named[k], repr(path) if single else f"{path!r} array {k!r}")
        for k in (train_key, val_key, test_key)
        if k is not None
    }
    shapes = {k: a.shape[1:] for k, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(
            f"The arrays in {path!r} have different example shapes: "
            + ", ".join(f"{k}: {list(s)}" for k, s in shapes.items())
        )
    return _carve(
        arrays[train_key],
        arrays.get(val_key) if val_key else None,
        arrays.get(test_key) if test_key else None,
        seed,
        fraction,
        where=repr(path),
    )


def _pick(named: dict[str, np.ndarray], keys: tuple[str, ...], path: str,
          required: bool) -> str | None:
    found = [k for k in keys if k in named]
    if len(found) > 1:
        raise DataError(f"{path!r} holds both {found[0]!r} and {found[1]!r}; keep only one.")
    if not found and required:
        raise DataError(
            f"{path!r} holds no training array: expected 'x' or 'x_train' (optional 'x_test', "
            f"'x_val'/'x_validation'), found {sorted(named)}."
        )
    return found[0] if found else None


def _as_examples(a: np.ndarray, where: str) -> np.ndarray:
    """Checks dtype and rank; ``[N, H, W]`` -> ``[N, H, W, 1]``."""
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
            or a.dtype == np.bool_):
        raise DataError(
            f"{where}: expected an integer or float array, got dtype {a.dtype}."
        )
    if a.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: expected [N, D] vectors, [N, H, W] or [N, H, W, C] images "
            f"(ndim 2, 3 or 4), got shape {list(a.shape)} (ndim {a.ndim})."
        )
    if np.issubdtype(a.dtype, np.floating):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise DataError(
                f"{where} contains {bad} NaN/Inf value(s) out of {a.size}; remove or replace them."
            )
    if a.ndim == 3:
        a = a[..., None]
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if 0 in a.shape[1:]:
        raise DataError(f"{where}: examples must not be empty, got shape {list(a.shape)}.")
    return a


def _carve(
    train: np.ndarray,
    validation: np.ndarray | None,
    test: np.ndarray | None,
    seed: int,
    fraction: float,
    where: str,
) -> dict[str, np.ndarray]:
    """Carves missing test then validation splits from ``train`` with a seeded permutation."""
    for split, given in (("validation", validation), ("test", test)):
        if given is not None and len(given) == 0:
            raise DataError(f"{where}: the given {split} array is empty (0 examples).")
    missing = (validation is None) + (test is None)
    n = len(train)
    n_cut = max(1, round(fraction * n))
    if n - missing * n_cut < 1:
        pairs = (("validation", validation), ("test", test))
        carved = " and ".join(k for k, v in pairs if v is None)
        raise DataError(
            f"{where}: too few examples to split: {n} training example(s) cannot also give "
            f"non-empty {carved} splits (validation_fraction={fraction} carves {n_cut} each); "
            f"need at least {missing * n_cut + 1}."
        )
    if missing:
        train = train[np.random.default_rng(seed).permutation(n)]
    if test is None:
        test, train = train[:n_cut], train[n_cut:]
    if validation is None:
        validation, train = train[:n_cut], train[n_cut:]
    return {"train": train, "validation": validation, "test": test}


def _load_tfds(name: str, seed: int, fraction: float) -> dict[str, np.ndarray]:
    """The ``image`` feature of TFDS ``train``/``test`` splits (validation carved from train)."""
    if not name:
        raise DataError("A TFDS source needs a dataset name, e.g. 'tfds:mnist'. Received: 'tfds:'")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"'tfds:{name}' needs tensorflow-datasets (pip install tensorflow-datasets): {e}"
        ) from None
    where = f"'tfds:{name}'"
    try:
        splits = list(tfds.builder(name).info.splits)
        # Known splits come from the dataset's metadata; without metadata try train + test.
        wanted = ["train", "test"] if not splits or "test" in splits else ["train"]
        loaded = tfds.load(name, split=wanted, as_supervised=False)
        arrays = {}
        for split, ds in zip(wanted, loaded):
            spec = ds.element_spec
            if not isinstance(spec, Mapping) or "image" not in spec:
                keys = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
                raise DataError(f"{where} has no 'image' feature; its features are {keys}.")
            batches = ds.map(lambda ex: ex["image"]).batch(4096).prefetch(tf.data.AUTOTUNE)
            chunks = [b for b in tfds.as_numpy(batches)]
            if not chunks:
                raise DataError(f"{where}: the {split!r} split is empty.")
            arrays[split] = _as_examples(np.concatenate(chunks), f"{where} split {split!r}")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS raises many types (network, not found, ...)
        hint = "" if type(e).__name__ == "DatasetNotFoundError" else (
            " (offline? download it once, or set TFDS_DATA_DIR to a directory that holds it)"
        )
        raise DataError(
            f"Could not load TFDS dataset {name!r} ({type(e).__name__}): {_one_line(e)}{hint}"
        ) from None
    return _carve(arrays["train"], None, arrays.get("test"), seed, fraction, where=where)


# --- pipelines ---------------------------------------------------------------------------------
def as_dataset(
    x: np.ndarray,
    spec: DataSpec,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of float32 batches of ``x`` (no labels), dequantized if discrete.

    Training pipelines shuffle (seeded, reshuffled every epoch); all pipelines batch (the last
    batch may be smaller) and prefetch. If ``spec.num_levels`` is not None each value becomes
    ``x + u`` with ``u ~ U[0, 1)`` (uniform dequantization), so batches lie in
    ``[0, num_levels)``: with ``training=True`` the noise is fresh every epoch; with
    ``training=False`` it is one fixed draw per example, a function of the example's values and
    ``seed`` (:func:`tfp_nice.preprocessing.dequantize`, the estimator the serving export uses;
    the same on every iteration, for any ``batch_size`` and order), so evaluation is
    deterministic. In this space
    bits/dim = ``NLL / (spec.num_dims * ln 2)``. Continuous data passes unchanged.

    Args:
      x: ``[N, *spec.event_shape]`` raw values (a split of :func:`load`).
      spec: the dataset's :class:`DataSpec`.
      batch_size: examples per batch.
      training: shuffle and draw fresh noise each epoch (True) or keep order and noise fixed.
      seed: seeds the shuffle and the noise.

    Returns:
      A ``tf.data.Dataset`` of float32 tensors ``[batch, *event_shape]``.

    Example:
      >>> s = load("digits")
      >>> ds = as_dataset(s.test, s.spec, batch_size=100, training=False)
      >>> b = next(iter(ds)).numpy()
      >>> bool((b >= s.test[:100]).all() and (b < s.test[:100] + 1).all())
      True
    """
    if not isinstance(spec, DataSpec):
        raise DataError(f"`spec` must be a DataSpec. Received: spec={spec!r}")
    _check_int(batch_size, "batch_size", minimum=1)
    _check_int(seed, "seed", minimum=0)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != spec.event_shape or len(x) == 0:
        raise DataError(
            f"`x` must have shape [N >= 1, *{list(spec.event_shape)}] to match `spec`. "
            f"Received: x.shape={list(x.shape)}"
        )
    ds = tf.data.Dataset.from_tensor_slices(x)
    dequantize = spec.num_levels is not None
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=False)
        if dequantize:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip((ds, seeds.batch(2)))
            ds = ds.map(_add_uniform_noise, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.batch(batch_size, drop_remainder=False)
        if dequantize:  # the estimator the serving export uses too (one place)
            event_ndims = len(spec.event_shape)
            ds = ds.map(lambda b: preprocessing.dequantize(b, seed, event_ndims),
                        num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _add_uniform_noise(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``x + u``, ``u ~ U[0, 1)`` from a stateless seed, kept strictly below ``x + 1``."""
    u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=tf.float32)
    # float32 rounding can turn x + u into x + 1 for u close to 1; clamp to the float below.
    return tf.minimum(x + u, tf.math.nextafter(x + 1.0, x))


# --- helpers -----------------------------------------------------------------------------------
def _check_int(value: Any, arg: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"`{arg}` must be an int >= {minimum}. Received: {arg}={value!r}")


def _check_value_range(value_range: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise DataError(
            "`value_range` must be a pair of finite numbers (low, high) with low < high. "
            f"Received: value_range={value_range!r}"
        )
    return low, high


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
