"""What a finished run leaves: held-out metrics, ``model.keras``, sample figures, the export.

Every writer is atomic and idempotent, so after a kill the same command writes them again.
"""

from __future__ import annotations

import errno
import os
import shutil
import weakref

import numpy as np
import tensorflow as tf

from tfp_nice import data as data_lib
from tfp_nice import preprocessing
from tfp_nice._internal import faults, files
from tfp_nice.data.spec import DataSpec
from tfp_nice.flow_model import FlowModel

__all__ = [
    "SAMPLE_TEMPERATURES",
    "evaluate_classifier",
    "evaluate_nll",
    "export_for_serving",
    "sample_temperatures",
    "save_model",
    "write_samples_png",
    "write_scale_samples_png",
]

SAMPLE_TEMPERATURES = (1.0, 0.7)


def evaluate_nll(model: FlowModel, x: np.ndarray, spec: DataSpec,
                 batch_size: int = 256, labels: np.ndarray | None = None) -> tuple[float, float]:
    """Mean held-out NLL (nats per example) and bits/dim, exactly over every example
    (``-log p(x | label)`` at the true ``labels`` for a class-conditional model)."""
    ds = data_lib.as_dataset(x, spec, batch_size, training=False, labels=labels)
    nll_fn = _nll_sum(model)
    total = sum(float(nll_fn(b)) for b in ds)
    nll = total / len(x)
    return nll, float(preprocessing.bits_per_dim(nll, spec.num_dims))


_NLL_SUMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _nll_sum(model: FlowModel):
    """``sum(model(batch))`` traced once per model for every batch size (the test set, then the
    validation set, each with a last, smaller batch), not once per call and size."""
    fn = _NLL_SUMS.get(model)
    if fn is None:
        ref = weakref.ref(model)  # the function must not keep the model alive
        fn = _NLL_SUMS[model] = tf.function(lambda b: tf.reduce_sum(ref()(b)),
                                            reduce_retracing=True)
    return fn


def evaluate_classifier(model: FlowModel, x: np.ndarray, labels: np.ndarray, spec: DataSpec,
                        batch_size: int = 128) -> dict:
    """A class-conditional flow as the Bayes classifier ``argmax_c log p(x | c) + log p(c)``
    on held-out data (the evaluation dequantization of :func:`evaluate_nll`).

    Returns ``test_accuracy`` and ``test_marginal_bits_per_dim``: the bits/dim of
    ``p(x) = sum_c p(x | c) p(c)``, comparable with an unconditional model's.
    """
    ds = data_lib.as_dataset(x, spec, batch_size, training=False)
    prior = tf.convert_to_tensor(model.class_log_prior)
    scores_fn = tf.function(lambda b: model.log_prob_per_class(b) + tf.cast(prior, b.dtype))
    scores = np.concatenate([scores_fn(b).numpy() for b in ds])
    marginal = np.logaddexp.reduce(scores.astype(np.float64), axis=-1)
    accuracy = float(np.mean(np.argmax(scores, axis=-1) == np.asarray(labels)))
    return {"test_accuracy": accuracy,
            "test_marginal_bits_per_dim": float(preprocessing.bits_per_dim(
                -float(np.mean(marginal)), spec.num_dims))}


def sample_temperatures(model: FlowModel, n: int, seed: int,
                        temperatures=SAMPLE_TEMPERATURES, labels=None) -> dict[float, np.ndarray]:
    """``{T: samples}`` with a stateless seed per temperature (at ``labels`` ``[n]`` for a
    class-conditional model)."""
    return {t: model.sample(n, seed=tf.constant([seed, i], tf.int32), temperature=t,
                            context=labels).numpy()
            for i, t in enumerate(temperatures)}


def write_samples_png(model: FlowModel, spec: DataSpec, path: str, seed: int,
                      data: np.ndarray | None = None) -> None:
    """``samples.png``: samples at each of :data:`SAMPLE_TEMPERATURES` (over the data in 2-D)."""
    from tfp_nice import plotting

    if getattr(model, "num_classes", None) is not None and spec.is_image:
        _write_class_samples_png(model, spec, path, seed)
        return
    n = 64 if len(spec.event_shape) > 1 else 2000
    labels = None
    if getattr(model, "num_classes", None) is not None:  # vectors: every class in turn
        labels = np.arange(n) % model.num_classes
    samples = sample_temperatures(model, n, seed, labels=labels)
    plotting.save_samples_figure(path, samples, spec.low, spec.high, data=data,
                                 title=f"{model.name} on {spec.name}")


def _write_class_samples_png(model: FlowModel, spec: DataSpec, path: str, seed: int,
                             columns: int = 8) -> None:
    """A class-conditional model's ``samples.png``: one row per class, a panel per
    temperature."""
    from tfp_nice import plotting

    labels = np.repeat(np.arange(model.num_classes), columns)
    samples = sample_temperatures(model, len(labels), seed, labels=labels)
    panels = {f"temperature {t:g} (row c: label c)": x for t, x in samples.items()}
    plotting.save_image_panels(path, panels, spec.low, spec.high, columns=columns,
                               title=f"{model.name} on {spec.name}, one row per class")


def write_scale_samples_png(model, spec: DataSpec, path: str, seed: int,
                            temperature: float = 0.7, rows: int = 4, columns: int = 8) -> None:
    """One panel per scale: each row keeps one latent and redraws only that scale's units.

    The first column of every row is the shared starting sample (all scales drawn at
    ``temperature``); across a row only the units of the panel's scale change, which shows
    what each scale of the multi-scale architecture encodes.
    """
    from tfp_nice import plotting

    z = model.base_distribution.sample(rows, seed=tf.constant([seed, 100], tf.int32))
    z = tf.repeat(z * temperature, columns, axis=0)
    labels = None  # a class-conditional model: row r at label r (mod K)
    if getattr(model, "num_classes", None) is not None:
        labels = np.repeat(np.arange(rows) % model.num_classes, columns)
    panels = {}
    for k in range(model.num_scales):
        x = model.resample_scale(z, k, seed=tf.constant([seed, 101 + k], tf.int32),
                                 temperature=temperature, context=labels).numpy()
        start = model.decode(z[::columns],
                             None if labels is None else labels[::columns]).numpy()
        x = x.reshape((rows, columns) + x.shape[1:])
        x[:, 0] = start
        n_units = int((model.latent_scales() == k).sum())
        panels[f"scale {k} redrawn ({n_units} units)"] = x.reshape((-1,) + x.shape[2:])
    plotting.save_image_panels(
        path, panels, spec.low, spec.high, columns=columns,
        title=f"{model.name}: redrawing one scale at a time, temperature {temperature:g}")


def save_model(model: FlowModel, path: str) -> None:
    """``model.save(path)`` atomically, after checking the disk has room for it.

    The ``.keras`` format writes HDF5, which can crash the process on a full disk, so a disk
    without room for about twice the model's variables fails here with ``ENOSPC`` instead.
    """
    directory = os.path.dirname(os.path.abspath(path))
    need = 2 * sum(int(np.prod(v.shape)) * v.dtype.itemsize if hasattr(v.dtype, "itemsize")
                   else int(np.prod(v.shape)) * 4 for v in model.variables) + (1 << 20)
    if shutil.disk_usage(directory).free < need:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    with files.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        faults.point("model_saved")


def export_for_serving(model: FlowModel, run_dir: str, spec: DataSpec, metrics: dict) -> str:
    """``run_dir/saved_model/1``: the TF Serving export, written aside and swapped in whole."""
    from tfp_nice import export

    final = os.path.join(run_dir, "saved_model")
    with files.atomic_directory(final) as tmp:
        path = export.save_for_serving(
            model, tmp, version=1, data=spec,
            extra_metadata={"metrics": {k: metrics[k] for k in ("test_nll_nats",
                                                                "test_bits_per_dim")}})
        faults.point("exported")
    return os.path.join(final, os.path.basename(path))
