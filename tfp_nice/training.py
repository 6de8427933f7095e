"""The main job: train a flow preset on a dataset with Keras ``fit`` into a run directory.

A run directory holds::

  run.json          the configuration and data description (written first)
  backup/           Keras BackupAndRestore state while the run is unfinished
  best.weights.h5   the weights with the lowest validation NLL so far (+ best.json)
  history.csv       per-epoch loss / val_loss (Keras CSVLogger)
  logs/             TensorBoard events
  model.keras       the final model, holding the best weights
  saved_model/1/    the same model for TF Serving (see :mod:`tfp_nice.export`)
  metrics.json      held-out NLL and bits/dim; its presence marks the run finished
  samples.png       samples at temperatures 1.0 and 0.7

Every file is written under a temporary name and renamed into place, so a killed run never
leaves a half-written file, and rerunning the same command resumes an unfinished run
(losing at most the epoch in progress).

Example:
  >>> cfg = TrainConfig(model="realnvp", data="moons", epochs=2)   # doctest: +SKIP
  >>> metrics = train(cfg, "runs/demo")                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfp_nice import data as data_lib
from tfp_nice import export, preprocessing
from tfp_nice.flow_model import FlowModel
from tfp_nice.presets import NICE, RealNVP, RealNVPImage

__all__ = [
    "MODELS",
    "RunError",
    "TrainConfig",
    "build_model",
    "evaluate_nll",
    "find_unfinished_run",
    "load_run",
    "sample_temperatures",
    "train",
    "write_scale_samples_png",
]

MODELS = {"nice": NICE, "realnvp": RealNVP, "realnvp-image": RealNVPImage}
#: Hyper-parameters only the image model takes (``None`` = default; left out of run.json).
_IMAGE_ONLY = ("num_scales", "num_blocks", "filters")
SAMPLE_TEMPERATURES = (1.0, 0.7)


class RunError(ValueError):
    """A run directory cannot be used as asked (finished, foreign, or a different config)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (``run.json`` stores it).

    ``None`` hyper-parameters take per-model/per-data defaults (see :func:`default_hparams`).
    """

    model: str = "nice"
    data: str = "digits"
    epochs: int | None = None
    batch_size: int = 64
    learning_rate: float | None = None
    num_couplings: int | None = None
    hidden_units: tuple[int, ...] | None = None
    seed: int = 0
    strategy: str = "none"
    patience: int | None = None
    value_range: tuple[float, float] | None = None
    num_levels: int | None = None
    num_scales: int | None = None
    num_blocks: int | None = None
    filters: int | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(
                f"`model` must be one of {sorted(MODELS)}. Received: model={self.model!r}"
            )
        for name in ("epochs", "batch_size", "num_couplings", "patience", "num_levels",
                     *_IMAGE_ONLY):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if self.learning_rate is not None and not (
            isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1
        ):
            raise ValueError(
                f"`learning_rate` must be in (0, 1). Received: learning_rate={self.learning_rate!r}"
            )
        if self.hidden_units is not None:
            self.hidden_units = tuple(self.hidden_units)
            if not self.hidden_units or any(
                isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in self.hidden_units
            ):
                raise ValueError(
                    "`hidden_units` must be positive integers. "
                    f"Received: hidden_units={self.hidden_units!r}"
                )
        image = self.model == "realnvp-image"
        wrong = [n for n in (("num_couplings", "hidden_units") if image else _IMAGE_ONLY)
                 if getattr(self, n) is not None]
        if wrong:
            hint = ("the image model's size is set by num_scales, num_blocks and filters" if image
                    else f"only model 'realnvp-image' takes {', '.join(_IMAGE_ONLY)}")
            raise ValueError(
                f"`{wrong[0]}` does not apply to model {self.model!r} ({hint}). "
                f"Received: {wrong[0]}={getattr(self, wrong[0])!r}"
            )
        if self.strategy not in ("none", "mirrored"):
            raise ValueError(
                f"`strategy` must be 'none' or 'mirrored'. Received: strategy={self.strategy!r}"
            )
        if self.value_range is not None:
            self.value_range = tuple(float(v) for v in self.value_range)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("hidden_units", "value_range"):
            d[key] = list(d[key]) if d[key] is not None else None
        for key in _IMAGE_ONLY:  # unset: keep run.json as before these options existed
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def default_hparams(cfg: TrainConfig, spec: data_lib.DataSpec) -> dict:
    """Resolved hyper-parameters: the user's where given, else defaults for model and data.

    Defaults are sized so ``tfp-nice train`` on the 8×8 digits finishes in a few minutes
    on 2 CPU cores; the NICE paper's MNIST model is ``NICE([784])`` with its defaults.
    """
    small = spec.num_dims <= 16
    if cfg.model == "realnvp-image":
        return _image_hparams(cfg, spec)
    if cfg.model == "nice":
        couplings, hidden = 4, ((64, 64) if small else (256,) * 4)
        lr = 1e-3
    else:
        couplings, hidden = (8, (64, 64)) if small else (6, (256, 256))
        lr = 1e-3
    epochs = 60 if small else 150
    return {
        "num_couplings": cfg.num_couplings or couplings,
        "hidden_units": tuple(cfg.hidden_units or hidden),
        "learning_rate": cfg.learning_rate or lr,
        "epochs": cfg.epochs or epochs,
        "patience": cfg.patience or max(10, (cfg.epochs or epochs) // 4),
    }


def _default_num_scales(height: int, width: int) -> int:
    """The most scales (up to 3) whose smallest image is still at least 4x4 pixels."""
    scales = 1
    while scales < 3:
        f = 2**scales
        if height % f or width % f or min(height, width) // f < 4:
            break
        scales += 1
    return scales


def _image_hparams(cfg: TrainConfig, spec: data_lib.DataSpec) -> dict:
    """Defaults of ``realnvp-image``: 2 residual blocks; 16 base filters for images of at most
    16x16 pixels (the 8x8 digits: 2 scales), else 32."""
    if len(spec.event_shape) != 3:
        raise ValueError(
            "Model 'realnvp-image' needs image data [height, width, channels]. "
            f"Received data {spec.name!r} with event shape {list(spec.event_shape)}"
        )
    epochs = cfg.epochs or 40
    return {
        "num_scales": cfg.num_scales or _default_num_scales(*spec.event_shape[:2]),
        "num_blocks": cfg.num_blocks or 2,
        "filters": cfg.filters or (16 if spec.event_shape[0] * spec.event_shape[1] <= 256
                                   else 32),
        "learning_rate": cfg.learning_rate or 1e-3,
        "epochs": epochs,
        "patience": cfg.patience or max(10, epochs // 4),
    }


def build_model(cfg: TrainConfig, spec: data_lib.DataSpec) -> FlowModel:
    """The preset named by ``cfg.model`` with preprocessing matched to ``spec``.

    Integer data (dequantized to ``[0, L)``) and bounded continuous data are rescaled to
    ``[0, 1)``; RealNVP then applies the logit with ``α = 0.05``. Unbounded 2-D densities
    are modelled as they are.
    """
    hp = default_hparams(cfg, spec)
    if cfg.model == "realnvp-image":
        kwargs: dict[str, Any] = {k: hp[k] for k in _IMAGE_ONLY}
    else:
        kwargs = dict(num_couplings=hp["num_couplings"], hidden_units=hp["hidden_units"])
    if spec.num_levels is not None:
        kwargs.update(data_scale=float(spec.num_levels), data_low=float(spec.low))
    elif spec.is_image:
        kwargs.update(data_scale=float(spec.high - spec.low) or 1.0, data_low=float(spec.low))
    if cfg.model in ("realnvp", "realnvp-image") and "data_scale" in kwargs:
        kwargs["logit_alpha"] = 0.05
    return MODELS[cfg.model](list(spec.event_shape), name=cfg.model, **kwargs)


def evaluate_nll(model: FlowModel, x: np.ndarray, spec: data_lib.DataSpec,
                 batch_size: int = 256) -> tuple[float, float]:
    """Mean held-out NLL (nats per example) and bits/dim, exactly over every example."""
    ds = data_lib.as_dataset(x, spec, batch_size, training=False)
    nll_fn = tf.function(lambda b: tf.reduce_sum(model(b)))
    total = sum(float(nll_fn(b)) for b in ds)
    nll = total / len(x)
    return nll, float(preprocessing.bits_per_dim(nll, spec.num_dims))


def sample_temperatures(model: FlowModel, n: int, seed: int,
                        temperatures=SAMPLE_TEMPERATURES) -> dict[float, np.ndarray]:
    """``{T: samples}`` with a stateless seed per temperature."""
    return {t: model.sample(n, seed=tf.constant([seed, i], tf.int32), temperature=t).numpy()
            for i, t in enumerate(temperatures)}


def write_samples_png(model: FlowModel, spec: data_lib.DataSpec, path: str, seed: int,
                      data: np.ndarray | None = None) -> None:
    from tfp_nice import plotting

    n = 64 if len(spec.event_shape) > 1 else 2000
    samples = sample_temperatures(model, n, seed)
    plotting.save_samples_figure(path, samples, spec.low, spec.high, data=data,
                                 title=f"{model.name} on {spec.name}")


def write_scale_samples_png(model: RealNVPImage, spec: data_lib.DataSpec, path: str, seed: int,
                            temperature: float = 0.7, rows: int = 4, columns: int = 8) -> None:
    """One panel per scale: each row keeps one latent and redraws only that scale's units.

    The first column of every row is the shared starting sample (all scales drawn at
    ``temperature``); across a row only the units of the panel's scale change, which shows
    what each scale of the multi-scale architecture encodes.
    """
    from tfp_nice import plotting

    z = model.base_distribution.sample(rows, seed=tf.constant([seed, 100], tf.int32))
    z = tf.repeat(z * temperature, columns, axis=0)
    panels = {}
    for k in range(model.num_scales):
        x = model.resample_scale(z, k, seed=tf.constant([seed, 101 + k], tf.int32),
                                 temperature=temperature).numpy()
        start = model.decode(z[::columns]).numpy()
        x = x.reshape((rows, columns) + x.shape[1:])
        x[:, 0] = start
        n_units = int((model.latent_scales() == k).sum())
        panels[f"scale {k} redrawn ({n_units} units)"] = x.reshape((-1,) + x.shape[2:])
    plotting.save_image_panels(
        path, panels, spec.low, spec.high, columns=columns,
        title=f"{model.name}: redrawing one scale at a time, temperature {temperature:g}")


# ---------------------------------------------------------------------------------------------
# Run directories.
# ---------------------------------------------------------------------------------------------
def _atomic_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_finished(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "metrics.json"))


def find_unfinished_run(root: str, prefix: str, cfg: TrainConfig) -> str | None:
    """The newest ``root/prefix*`` run with the same config that has not finished."""
    if not os.path.isdir(root):
        return None
    for name in sorted(os.listdir(root), reverse=True):
        run_dir = os.path.join(root, name)
        if not name.startswith(prefix) or is_finished(run_dir):
            continue
        meta = _read_json(os.path.join(run_dir, "run.json"))
        if meta and meta.get("config") == cfg.to_dict():
            return run_dir
    return None


def load_run(path: str) -> tuple[FlowModel, dict]:
    """Loads ``model.keras`` from a run directory (or a ``.keras`` file) and its ``run.json``."""
    model_path = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"No model at {model_path!r}: pass a finished run directory or a .keras file"
        )
    if not model_path.endswith(".keras"):
        raise ValueError(f"Expected a .keras model file. Received: {model_path!r}")
    meta = _read_json(os.path.join(os.path.dirname(os.path.abspath(model_path)), "run.json")) or {}
    try:
        model = keras.models.load_model(model_path)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files
        raise ValueError(f"Could not load {model_path!r}: {type(e).__name__}: {e}") from None
    if not isinstance(model, FlowModel):
        raise ValueError(f"{model_path!r} holds a {type(model).__name__}, not a tfp_nice flow")
    return model, meta


class _KeepBest(keras.callbacks.Callback):
    """Saves the weights with the lowest ``val_loss`` (atomically); survives resumption."""

    def __init__(self, run_dir: str):
        super().__init__()
        self.weights_path = os.path.join(run_dir, "best.weights.h5")
        self.info_path = os.path.join(run_dir, "best.json")
        info = _read_json(self.info_path) or {}
        self.best = info.get("val_loss", math.inf)
        self.best_epoch = info.get("epoch")

    def on_epoch_end(self, epoch, logs=None):
        val = (logs or {}).get("val_loss")
        if val is None or not math.isfinite(val) or val >= self.best:
            return
        tmp = self.weights_path[: -len(".weights.h5")] + f".tmp-{os.getpid()}.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.weights_path)
        self.best, self.best_epoch = float(val), epoch + 1
        _atomic_json(self.info_path, {"val_loss": self.best, "epoch": self.best_epoch})


class _EpochCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.last_epoch = 0
        self.nan = False

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch + 1
        if logs and not all(math.isfinite(v) for v in logs.values() if isinstance(v, float)):
            self.nan = True


def _strategy(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def train(
    cfg: TrainConfig,
    run_dir: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | str = "auto",
    print_fn: Callable[[str], None] = print,
    serving_export: bool = True,
) -> dict:
    """Trains ``cfg`` into ``run_dir`` and returns the metrics written to ``metrics.json``.

    Args:
      cfg: the run configuration.
      run_dir: the output directory. An unfinished run with the same config is resumed;
        a finished run is refused unless ``resume`` (train further, up to ``cfg.epochs``)
        or ``overwrite`` (train afresh; the old run is replaced only once the new one
        finished).
      resume: continue a finished run.
      overwrite: replace a finished run or a run with a different config.
      verbose: Keras ``fit`` verbosity.
      print_fn: where progress messages go.
      serving_export: also write the TF Serving SavedModel ``saved_model/VERSION/``
        (:func:`tfp_nice.export.save_for_serving`; a few seconds of tracing).

    Raises:
      RunError: if ``run_dir`` cannot be used as asked.
      tfp_nice.data.DataError: if the data cannot be loaded.
    """
    run_dir = os.path.abspath(run_dir)
    final_dir = run_dir
    meta = _read_json(os.path.join(run_dir, "run.json"))
    finished = is_finished(run_dir)
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not overwrite:
        if meta is None:
            raise RunError(
                f"--out {run_dir!r} exists and is not a tfp_nice run directory; "
                "choose another --out or pass --overwrite"
            )
        old_cfg = meta.get("config", {})
        if finished and not resume:
            raise RunError(
                f"--out {run_dir!r} already holds a finished run; pass --resume to train it "
                "further or --overwrite to replace it"
            )
        same = old_cfg == cfg.to_dict() or (finished and _same_but_epochs(old_cfg, cfg))
        if not same:
            raise RunError(
                f"--out {run_dir!r} holds a run with a different configuration; "
                "choose another --out or pass --overwrite"
            )
    staging = None
    if overwrite and os.path.isdir(run_dir) and os.listdir(run_dir):
        staging = f"{run_dir}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        run_dir, meta, finished = staging, None, False

    splits = data_lib.load(cfg.data, seed=cfg.seed, value_range=cfg.value_range,
                           num_levels=cfg.num_levels)
    spec = splits.spec
    hp = default_hparams(cfg, spec)
    os.makedirs(run_dir, exist_ok=True)
    if meta is None:
        _atomic_json(os.path.join(run_dir, "run.json"),
                     {"config": cfg.to_dict(), "data": spec.to_config(), "hparams": _jsonable(hp)})
    elif resume and finished:
        meta["config"] = cfg.to_dict()
        _atomic_json(os.path.join(run_dir, "run.json"), meta)

    keras.utils.set_random_seed(cfg.seed)
    strategy = _strategy(cfg.strategy)
    with strategy.scope():
        if resume and finished:
            model, _ = load_run(run_dir)
            done = (_read_json(os.path.join(run_dir, "metrics.json")) or {}).get("epochs", 0)
        else:
            model = build_model(cfg, spec)
            done = 0
            if hasattr(model, "initialize_scale") and not os.path.isdir(
                os.path.join(run_dir, "backup")
            ):
                first = data_lib.as_dataset(splits.train[:1024], spec, 1024, training=False)
                model.initialize_scale(next(iter(first)))
        if not model.compiled:
            model.compile(
                optimizer=keras.optimizers.Adam(hp["learning_rate"]),
                jit_compile=cfg.strategy == "none",
            )
    if done >= hp["epochs"]:
        raise RunError(
            f"--out {run_dir!r} already trained for {done} epochs; pass a larger --epochs "
            "to train further"
        )

    train_ds = data_lib.as_dataset(splits.train, spec, cfg.batch_size, training=True,
                                   seed=cfg.seed)
    val_ds = data_lib.as_dataset(splits.validation, spec, 256, training=False, seed=cfg.seed)
    keep_best = _KeepBest(run_dir)
    counter = _EpochCounter()
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
        keras.callbacks.TerminateOnNaN(),
        keep_best,
        counter,
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        keras.callbacks.EarlyStopping(patience=hp["patience"], monitor="val_loss"),
    ]
    backup_exists = os.path.isdir(os.path.join(run_dir, "backup"))
    if backup_exists:
        print_fn(f"Resuming the unfinished run in {final_dir}")
    print_fn(
        f"Training {cfg.model} ({model.count_params():,} parameters) on {spec.name} "
        f"{list(spec.event_shape)}: {len(splits.train)} train / {len(splits.validation)} "
        f"validation / {len(splits.test)} test examples, up to {hp['epochs']} epochs"
    )
    start = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=hp["epochs"], initial_epoch=done,
              callbacks=callbacks, verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - start
    if os.path.exists(keep_best.weights_path):
        model.load_weights(keep_best.weights_path)

    test_nll, test_bpd = evaluate_nll(model, splits.test, spec)
    val_nll, val_bpd = evaluate_nll(model, splits.validation, spec)
    previous = _read_json(os.path.join(run_dir, "metrics.json")) or {}
    metrics = {
        "test_nll_nats": test_nll,
        "test_bits_per_dim": test_bpd,
        "validation_nll_nats": val_nll,
        "validation_bits_per_dim": val_bpd,
        "epochs": max(counter.last_epoch, done),
        "best_epoch": keep_best.best_epoch,
        "train_seconds": previous.get("train_seconds", 0.0) + seconds,
        "num_params": int(model.count_params()),
        "terminated_on_nan": counter.nan,
        "data": spec.to_config(),
        "model": model.get_config(),
        "config": cfg.to_dict(),
        "hparams": _jsonable(hp),
        "bits_per_dim_formula": "NLL / (D ln 2) in the dequantized data space (see README)",
    }
    tmp_model = os.path.join(run_dir, f"model.tmp-{os.getpid()}.keras")
    model.save(tmp_model)
    os.replace(tmp_model, os.path.join(run_dir, "model.keras"))
    write_samples_png(model, spec, os.path.join(run_dir, "samples.png"), cfg.seed,
                      data=splits.train if not spec.is_image else None)
    if isinstance(model, RealNVPImage):
        write_scale_samples_png(model, spec, os.path.join(run_dir, "samples_per_scale.png"),
                                cfg.seed)
    if serving_export:  # TF Serving layout: saved_model/VERSION/
        serving = export.save_for_serving(
            model, os.path.join(run_dir, "saved_model"), data=spec,
            extra_metadata={"metrics": {"test_nll_nats": test_nll,
                                        "test_bits_per_dim": test_bpd}})
        metrics["saved_model"] = os.path.relpath(serving, run_dir)
    _atomic_json(os.path.join(run_dir, "metrics.json"), metrics)  # marks the run finished
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    if staging is not None:
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
        os.replace(staging, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    return metrics


def _same_but_epochs(old: dict, cfg: TrainConfig) -> bool:
    new = cfg.to_dict()
    return {k: v for k, v in old.items() if k != "epochs"} == {
        k: v for k, v in new.items() if k != "epochs"
    }


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
