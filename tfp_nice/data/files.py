"""Reading the user's ``.npy`` / ``.npz`` files, and carving missing splits."""

from __future__ import annotations

import os

import numpy as np

from tfp_nice.data.spec import DataError

__all__ = ["SUFFIXES", "as_examples", "carve", "load_file", "one_line"]

SUFFIXES = (".npy", ".npz")
_TRAIN_KEYS = ("x", "x_train")
_VAL_KEYS = ("x_val", "x_validation")
_TEST_KEYS = ("x_test",)
_LABEL_KEYS = {"train": ("y", "y_train"), "validation": ("y_val", "y_validation"),
               "test": ("y_test",)}


def load_file(path: str, seed: int, fraction: float) -> dict[str, np.ndarray]:
    """Reads a .npy array or a .npz archive; returns the three splits and any labels.

    An ``.npz`` may hold labels beside its examples: ``y`` or ``y_train`` for the training
    array, ``y_val``/``y_validation`` and ``y_test`` for the others.
    """
    named, single = _read_arrays(path)
    keys = {split: _pick(named, options, path, required=split == "train")
            for split, options in (("train", _TRAIN_KEYS), ("validation", _VAL_KEYS),
                                   ("test", _TEST_KEYS))}
    arrays = {
        split: as_examples(named[k], repr(path) if single else f"{path!r} array {k!r}")
        for split, k in keys.items() if k is not None
    }
    shapes = {keys[s]: a.shape[1:] for s, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(
            f"The arrays in {path!r} have different example shapes: "
            + ", ".join(f"{k}: {list(s)}" for k, s in shapes.items())
        )
    labels = {split: named[k] for split, options in _LABEL_KEYS.items() if split in arrays
              for k in [_pick(named, options, path, required=False)] if k is not None}
    return carve(arrays["train"], arrays.get("validation"), arrays.get("test"), seed, fraction,
                 where=repr(path), labels=labels)


def _read_arrays(path: str) -> tuple[dict[str, np.ndarray], bool]:
    """Every array of the file by name (``x`` for a .npy), and whether it is a single .npy."""
    if not os.path.exists(path):
        raise DataError(f"File not found: {path!r}.")
    if os.path.isdir(path):
        raise DataError(f"Cannot load {path!r}: it is a directory, not a .npy/.npz file.")
    try:
        with open(path, "rb") as f:
            header = f.read(6)
    except OSError as e:
        raise DataError(f"Cannot open {path!r}: {one_line(e)}") from None
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
            f"{one_line(e)}"
        ) from None
    if isinstance(loaded, np.ndarray):
        return {"x": loaded}, True
    with loaded:
        try:
            return {k: loaded[k] for k in loaded.files}, False
        except Exception as e:  # noqa: BLE001 - corrupt member
            raise DataError(f"Cannot read the arrays in {path!r}: {one_line(e)}") from None


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


def as_examples(a: np.ndarray, where: str) -> np.ndarray:
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
    if 0 in a.shape[1:]:
        raise DataError(f"{where}: examples must not be empty, got shape {list(a.shape)}.")
    return a


def carve(
    train: np.ndarray,
    validation: np.ndarray | None,
    test: np.ndarray | None,
    seed: int,
    fraction: float,
    where: str,
    labels: dict | None = None,
) -> dict[str, np.ndarray]:
    """Carves missing test then validation splits from ``train`` with a seeded permutation.

    ``labels`` (``{"train": y, ...}``, any subset) are carved with their examples; the
    result holds ``"<split>_labels"`` entries for the labels there are.
    """
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
    labels = dict(labels or {})
    y = labels.pop("train", None)
    if y is not None and len(y) != n:
        raise DataError(f"{where}: {len(y)} training labels for {n} training examples.")
    if missing:
        order = np.random.default_rng(seed).permutation(n)
        train, y = train[order], (None if y is None else y[order])
    for split, given in (("test", test), ("validation", validation)):
        if given is None:
            given, train = train[:n_cut], train[n_cut:]
            if y is not None:
                labels[split], y = y[:n_cut], y[n_cut:]
            test, validation = (given, validation) if split == "test" else (test, given)
    out = {"train": train, "validation": validation, "test": test}
    if y is not None:
        labels["train"] = y
    out.update({f"{k}_labels": v for k, v in labels.items()})
    return out


def one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
