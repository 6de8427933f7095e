"""The ``image`` (and ``label``) features of a TensorFlow Datasets dataset."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tfp_nice.data.files import as_examples, carve, one_line
from tfp_nice.data.spec import DataError

__all__ = ["load_tfds"]


def load_tfds(name: str, seed: int, fraction: float) -> dict[str, np.ndarray]:
    """The ``image`` (and ``label``, if any) features of TFDS ``train``/``test`` splits;
    validation is carved from train."""
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
        arrays, labels = {}, {}
        for split, ds in zip(wanted, loaded):
            arrays[split], y = _read_split(tfds, ds, f"{where} split {split!r}", where)
            if y is not None:
                labels[split] = y
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS raises many types (network, not found, ...)
        hint = "" if type(e).__name__ == "DatasetNotFoundError" else (
            " (offline? download it once, or set TFDS_DATA_DIR to a directory that holds it)"
        )
        raise DataError(
            f"Could not load TFDS dataset {name!r} ({type(e).__name__}): {one_line(e)}{hint}"
        ) from None
    return carve(arrays["train"], None, arrays.get("test"), seed, fraction, where=where,
                 labels=labels)


def _read_split(tfds, ds, what: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """All images (and labels) of one TFDS split as NumPy arrays."""
    spec = ds.element_spec
    if not isinstance(spec, Mapping) or "image" not in spec:
        keys = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
        raise DataError(f"{where} has no 'image' feature; its features are {keys}.")
    keys = ["image"] + (["label"] if "label" in spec else [])
    images, labels = [], []
    for batch in tfds.as_numpy(ds.map(lambda ex: {k: ex[k] for k in keys}).batch(4096)):
        images.append(batch["image"])
        if "label" in batch:
            labels.append(batch["label"])
    if not images:
        raise DataError(f"{what} is empty.")
    y = np.concatenate(labels) if labels else None
    return as_examples(np.concatenate(images), what), y
