"""``load``: a source string to checked :class:`~tfp_nice.data.Splits` (NumPy only, no TF)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from tfp_nice._internal.checks import check_int, check_number, check_value_range
from tfp_nice.data import densities, files
from tfp_nice.data.spec import MAX_LEVELS, DataError, DataSpec, Splits

__all__ = ["DENSITIES", "load"]

DENSITIES = densities.NAMES

_DIGITS_LEVELS = 17
_DIGITS_SPLIT_SEED = 0
_DIGITS_FRACTION = 0.15
_SPLITS = ("train", "validation", "test")


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
        ``"tfds:NAME"``. See :mod:`tfp_nice.data`.
      seed: seeds the 2-D densities and the carving of missing splits (not the digits split).
      value_range: declared ``(low, high)`` of the raw values; the data is checked against it
        and it becomes ``spec.low``/``spec.high``. Default: ``(0, num_levels - 1)`` for
        integer data, the data's min/max for continuous data.
      num_levels: number of integer levels of discrete data (values ``0..num_levels - 1``);
        the data is checked against it. Giving it for float arrays declares them integer-valued.
        Default: 17 for digits, 2 for bool, 256 for uint8, ``max + 1`` for other integer
        dtypes, None (continuous) for float arrays and the 2-D densities.
      validation_fraction: fraction of the examples carved out for each missing split, in
        ``(0, 0.5)``.
      num_samples: number of training points of a 2-D density.

    Returns:
      :class:`Splits` of float32 arrays ``[N, *event_shape]``, their :class:`DataSpec`, and
      int64 class labels where the source has them (digits, ``y``/``y_train`` arrays of an
      ``.npz``, TFDS ``label``).

    Raises:
      DataError: unknown name, missing/corrupt file, wrong array names, NaN/Inf, values outside
        the declared range, wrong dimensionality, too few examples, bad labels, or a TFDS
        failure.

    Example:
      >>> s = load("digits")
      >>> s.train.shape, s.spec.num_levels, (s.spec.low, s.spec.high)
      ((1257, 8, 8, 1), 17, (0.0, 16.0))
    """
    source, num_levels, value_range = _check_arguments(
        source, seed, num_samples, validation_fraction, num_levels, value_range)
    key = source.strip().lower()
    if key == "digits" and num_levels is None:
        num_levels = _DIGITS_LEVELS
    name = key if key == "digits" or key in DENSITIES else source
    parts = _read(source, key, seed, validation_fraction, num_samples)
    arrays, spec = _check_values(name, {k: parts[k] for k in _SPLITS}, value_range, num_levels)
    labels, num_classes, dropped = _check_labels(name, parts, arrays)
    return Splits(spec=spec, **arrays, **labels, num_classes=num_classes, labels_dropped=dropped)


def _check_arguments(source, seed, num_samples, validation_fraction, num_levels,
                     value_range) -> tuple:
    """:func:`load`'s arguments checked: ``(source, num_levels, value_range)``."""
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(source, str) or not source:
        raise DataError(f"`source` must be a non-empty string. Received: source={source!r}")
    check_int(seed, "seed", minimum=0, error=DataError)
    check_int(num_samples, "num_samples", minimum=1, error=DataError)
    check_number(validation_fraction, "validation_fraction", 0.0, 0.5, low_inclusive=False,
                 high_inclusive=False, error=DataError, what="a number in (0, 0.5)")
    if num_levels is not None:
        num_levels = check_int(num_levels, "num_levels", minimum=2, maximum=MAX_LEVELS,
                               error=DataError)
    if value_range is not None:
        value_range = check_value_range(value_range, error=DataError)
    return source, num_levels, value_range


def _read(source: str, key: str, seed: int, fraction: float, num_samples: int) -> dict:
    """The raw splits (and labels) of ``source``: ``{"train": x, ..., "train_labels": y}``."""
    if key.startswith("tfds:"):
        from tfp_nice.data import tfds

        return tfds.load_tfds(source.strip()[5:].strip(), seed, fraction)
    if key == "digits":
        return _load_digits()
    if key in DENSITIES:
        return densities.load_density(key, seed, num_samples)
    if os.path.splitext(source)[1].lower() in files.SUFFIXES:
        return files.load_file(source, seed, fraction)
    if os.path.exists(source):
        kind = "a directory" if os.path.isdir(source) else "a file of unsupported type"
        raise DataError(f"Cannot load {source!r}: it is {kind}; expected a .npy or .npz file.")
    if os.sep in source or "/" in source or os.path.splitext(source)[1]:
        raise DataError(f"File not found: {source!r} (supported files: .npy, .npz).")
    raise DataError(
        f"Unknown dataset {source!r}. Valid: 'digits', "
        + ", ".join(repr(d) for d in DENSITIES)
        + ", a path to a .npy/.npz file, or 'tfds:NAME' (e.g. 'tfds:mnist')."
    )


def _load_digits() -> dict:
    """scikit-learn's 1797 8x8 digits and their labels with the fixed 70/15/15 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(
            f"The 'digits' dataset needs scikit-learn (pip install scikit-learn): {e}"
        ) from None
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], values 0..16
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
    n_test = n_val = round(_DIGITS_FRACTION * len(images))
    cuts = [n_test, n_test + n_val]
    test, val, train = np.split(images[order], cuts)
    y_test, y_val, y_train = np.split(bunch.target[order], cuts)
    return {"train": train, "validation": val, "test": test, "train_labels": y_train,
            "validation_labels": y_val, "test_labels": y_test}


def _check_values(name: str, arrays: dict, value_range, num_levels) -> tuple[dict, DataSpec]:
    """Checks the values of the three splits and describes them (float32 arrays, a spec)."""
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
    if integer:
        num_levels = _integer_levels(name, dtypes, lo, hi, num_levels)
    if num_levels is not None:
        _check_levels(name, arrays, integer, lo, hi, num_levels, value_range)
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
    spec = DataSpec(name=name, event_shape=tuple(arrays["train"].shape[1:]),
                    num_levels=num_levels, low=low, high=high)
    return {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in arrays.items()}, spec


def _integer_levels(name: str, dtypes: set, lo: float, hi: float, num_levels) -> int:
    """The number of levels of integer data: given, or 2 (bool), 256 (uint8), max + 1."""
    if lo < 0:
        raise DataError(
            f"{name!r}: integer data must take values 0..num_levels-1, but the data has min "
            f"{lo:g} and max {hi:g}; shift it, or store floats for continuous data."
        )
    if hi > MAX_LEVELS - 1:
        raise DataError(
            f"{name!r}: integer data with values up to {hi:.0f} has more than 2**24 levels, "
            "which float32 cannot hold exactly; rescale it, or store floats for continuous data."
        )
    if num_levels is not None:
        return num_levels
    if dtypes == {np.dtype(np.bool_)}:
        return 2
    return 256 if dtypes == {np.dtype(np.uint8)} else max(int(hi) + 1, 2)


def _check_levels(name, arrays, integer, lo, hi, num_levels, value_range) -> None:
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


def _check_labels(name: str, parts: dict, arrays: dict) -> tuple[dict, int | None, str | None]:
    """int64 labels of every split (or none), checked against the examples; and why labels
    given for only some splits were dropped (with a warning: unconditional models need none)."""
    given = {k: parts.get(f"{k}_labels") for k in _SPLITS}
    present = [k for k, v in given.items() if v is not None]
    if not present:
        return {}, None, None
    if len(present) != len(_SPLITS):
        missing = [k for k in _SPLITS if k not in present]
        why = (f"{name!r}: labels are given for the {', '.join(present)} split(s) but not for "
               f"{', '.join(missing)}; give a y array for every x array, or none.")
        warnings.warn(f"{why} Loading without labels.", UserWarning, stacklevel=3)
        return {}, None, why
    out = {}
    for split, y in given.items():
        y = np.asarray(y)
        where = f"{name!r}: the {split} labels"
        if y.ndim != 1 or len(y) != len(arrays[split]):
            raise DataError(
                f"{where} must be one integer per example, shape [{len(arrays[split])}]. "
                f"Received shape {list(y.shape)}."
            )
        if not (np.issubdtype(y.dtype, np.integer) or (
                np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y))
                and np.array_equal(y, np.round(y)))):
            raise DataError(f"{where} must be integers (class indices); got dtype {y.dtype}"
                            + ("" if y.dtype == object else f", e.g. {y.flat[0]!r}") + ".")
        if y.size and y.min() < 0:
            raise DataError(f"{where} must be class indices >= 0; found {y.min():g}.")
        out[f"{split}_labels"] = y.astype(np.int64)
    num_classes = int(max(int(y.max()) for y in out.values() if y.size)) + 1
    return out, num_classes, None
