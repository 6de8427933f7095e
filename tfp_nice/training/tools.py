"""What to do with a trained run: evaluate it, sample from it, export it for TF Serving."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfp_nice import data as data_lib
from tfp_nice._internal import files
from tfp_nice._internal.checks import check_int, check_number
from tfp_nice.training.build import load_run
from tfp_nice.training.outputs import evaluate_classifier, evaluate_nll
from tfp_nice.training.run_dir import is_finished, read_metrics

__all__ = ["MAX_SAMPLES", "MAX_TEMPERATURE", "evaluate_run", "export_run", "run_directory",
           "sample_run"]

#: The most samples :func:`sample_run` draws at once.
MAX_SAMPLES = 100_000
#: The highest sampling temperature (the latent's standard deviation is multiplied by it).
MAX_TEMPERATURE = 10.0


def run_directory(path: str) -> str:
    """The run directory of ``path`` (a run directory or a ``.keras`` file in one)."""
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def evaluate_run(path: str, source: str | None = None, seed: int = 0) -> dict:
    """Held-out NLL and bits/dim of a trained model on its own test split (or ``source``'s);
    also written to ``evaluation.json`` beside the model.

    A class-conditional model is evaluated at the test labels (``-log p(x | label)``) and
    as the Bayes classifier: ``test_accuracy`` and ``test_marginal_bits_per_dim``."""
    model, meta = load_run(path)
    if source is None and not meta:
        raise ValueError(f"{path!r} has no run.json next to it; pass the data to evaluate on")
    cfg = meta.get("config", {})
    own = source is None
    source = source or cfg.get("data")
    vr = cfg.get("value_range") if own else None
    splits = data_lib.load(source, seed=cfg.get("seed", seed) if own else seed,
                           value_range=tuple(vr) if vr else None,
                           num_levels=cfg.get("num_levels") if own else None)
    if tuple(splits.spec.event_shape) != tuple(model.event_shape):
        raise ValueError(
            f"data {source!r} has event shape {list(splits.spec.event_shape)} but the model "
            f"expects {list(model.event_shape)}"
        )
    labels = _test_labels(model, splits)
    nll, bpd = evaluate_nll(model, splits.test, splits.spec, labels=labels)
    result = {"data": source, "test_nll_nats": nll, "test_bits_per_dim": bpd,
              "num_examples": int(len(splits.test))}
    if labels is not None:
        result.update(evaluate_classifier(model, splits.test, labels, splits.spec))
    result["path"] = os.path.join(run_directory(path), "evaluation.json")
    files.atomic_write_json(result["path"], {k: v for k, v in result.items() if k != "path"})
    return result


def _test_labels(model, splits) -> np.ndarray | None:
    """The test labels a class-conditional model is evaluated at (``None`` if it is not one);
    a one-line ``DataError`` if the data has none or labels beyond the model's classes."""
    if model.num_classes is None:
        return None
    splits.require_labels("evaluating a class-conditional model")
    top = max(int(y.max()) for y in (splits.train_labels, splits.test_labels) if y.size)
    if top >= model.num_classes:
        raise data_lib.DataError(
            f"{splits.spec.name!r}: labels must lie in [0, {model.num_classes}) for this model "
            f"(num_classes={model.num_classes}); found a label {top}.")
    return splits.test_labels


def _sample_labels(model, num_samples: int, label: int | None) -> np.ndarray | None:
    """``label`` for every sample, or every class in turn (``i mod K``) when none is given."""
    if model.num_classes is None:
        if label is not None:
            raise ValueError(f"`label` needs a class-conditional run (trained with "
                             f"--conditional); this one is not. Received: label={label}")
        return None
    if label is None:
        return np.arange(num_samples) % model.num_classes
    check_int(label, "label", minimum=0, maximum=model.num_classes - 1)
    return np.full([num_samples], label)


def sample_run(path: str, num_samples: int, temperature: float = 1.0, seed: int = 0,
               out: str | None = None, label: int | None = None) -> str:
    """Draws ``num_samples`` samples at ``temperature`` into ``out`` (``.png`` or ``.npy``;
    default ``RUN/samples-T<temperature>.png``); returns the file written.

    A class-conditional run samples at ``label`` (default: every class in turn,
    ``i mod K``); ``label`` on a run that is not conditional is a ``ValueError``."""
    check_int(num_samples, "num_samples", maximum=MAX_SAMPLES)
    check_number(temperature, "temperature", 0.0, MAX_TEMPERATURE, low_inclusive=False,
                 what=f"in (0, {MAX_TEMPERATURE:g}]")
    out = out or os.path.join(run_directory(path), f"samples-T{temperature:g}.png")
    if not out.endswith((".png", ".npy")):
        raise ValueError(f"`out` must end in .png or .npy. Received: out={out!r}")
    model, meta = load_run(path)
    labels = _sample_labels(model, num_samples, label)
    x = model.sample(num_samples, seed=tf.constant([seed, 0], tf.int32),
                     temperature=temperature, context=labels).numpy()
    if out.endswith(".npy"):
        with files.atomic_path(out, suffix=".npy") as tmp:
            np.save(tmp, x)
    else:
        from tfp_nice import plotting

        spec = meta.get("data", {})
        low = spec.get("low", float(x.min()))
        high = spec.get("num_levels") or spec.get("high", float(x.max()))
        plotting.save_samples_figure(out, {temperature: x}, low, high)
    return os.path.abspath(out)


def export_run(path: str, out: str, version: int | None = None,
               max_samples: int | None = None) -> str:
    """Writes the model of ``path`` as a TF Serving SavedModel ``out/VERSION``; returns it."""
    from tfp_nice import export

    model, meta = load_run(path)
    run_dir = run_directory(path)
    extra = {"source": path}
    if is_finished(run_dir):
        metrics = read_metrics(run_dir)
        extra["metrics"] = {k: metrics[k] for k in ("test_nll_nats", "test_bits_per_dim")}
    kwargs = {} if max_samples is None else {"max_samples": max_samples}
    return export.save_for_serving(model, out, version=version, data=meta.get("data"),
                                   extra_metadata=extra, **kwargs)
