"""The main job in short steps: check everything, then build or resume, fit, write outputs.

A run directory holds::

  run.json          the configuration and data description (the marker of a run)
  run.lock          held while a process trains the run
  checkpoints/      model + optimizer after each epoch (two kept) until the run is finished
  best.weights.npz  the weights with the lowest validation NLL so far (+ best.json)
  history.csv       per-epoch loss / val_loss (rewritten atomically each epoch)
  logs/             TensorBoard events (append-only)
  model.keras       the final model, holding the best weights
  saved_model/1/    the same model for TF Serving (see :mod:`tfp_nice.export`)
  metrics.json      held-out NLL and bits/dim (a ``conditional`` run: also the Bayes
                    classifier's test_accuracy); its presence marks the run finished
  samples.png       samples at temperatures 1.0 and 0.7 (conditional: one row per class)

Nothing is written before the configuration, the data and the model are checked. Every file
but the TensorBoard logs is written under a temporary name and renamed into place, and a
killed run resumes from its last checkpoint when the same command runs again (see the
README's "What a run guarantees").
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import warnings
from collections.abc import Callable
from contextlib import ExitStack

import keras
import tensorflow as tf

from tfp_nice import data as data_lib
from tfp_nice import distributed
from tfp_nice._internal import faults, files
from tfp_nice.data.spec import Splits
from tfp_nice.flow_model import FlowModel
from tfp_nice.training import checkpoints, outputs
from tfp_nice.training import run_dir as run_dir_lib
from tfp_nice.training.build import build_model, load_run
from tfp_nice.training.callbacks import (
    BestWeights,
    BudgetProgress,
    EpochCheckpoint,
    Guard,
    HistoryFile,
    LearningRateDecay,
    read_history,
)
from tfp_nice.training.config import UNBOUNDED_EPOCHS, TrainConfig, default_hparams, started_hparams
from tfp_nice.training.run_dir import RunError, TrainingDiverged

__all__ = ["train"]


@dataclasses.dataclass
class _Run:
    """One training run: its configuration, directories, data and progress."""

    cfg: TrainConfig
    final_dir: str  # where the run lives when it is finished
    work_dir: str  # where it trains (a staging directory when it replaces a run)
    action: str  # new | resume | extend | overwrite
    splits: Splits
    hp: dict
    say: Callable[[str], None]
    warn: Callable[[str], None]
    finished: FlowModel | None = None  # a finished multi-worker run trained further: its model

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.work_dir, "checkpoints")


def train(
    cfg: TrainConfig,
    run_dir: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | str = "auto",
    print_fn: Callable[[str], None] = print,
    warn_fn: Callable[[str], None] | None = None,
    serving_export: bool = True,
    splits: Splits | None = None,
) -> dict:
    """Trains ``cfg`` into ``run_dir`` and returns the metrics written to ``metrics.json``.

    Args:
      cfg: the run configuration.
      run_dir: the output directory. An unfinished run with the same config is resumed
        from its last checkpoint; a finished run is refused unless ``resume`` (train
        further, up to ``cfg.epochs``) or ``overwrite`` (train afresh; the old run is
        replaced only once the new one finished).
      resume: continue a finished run.
      overwrite: replace a finished or unfinished run (never anything else).
      verbose: Keras ``fit`` verbosity.
      print_fn: where progress messages go.
      warn_fn: where one-line warnings go (default: ``warnings.warn``).
      serving_export: also write the TF Serving SavedModel ``saved_model/1/``.
      splits: ``cfg.data`` already loaded (:func:`tfp_nice.data.load`), if it is.

    Raises:
      RunError: ``run_dir`` cannot be used as asked, or a file in it is unreadable.
      TrainingDiverged: the loss became NaN or infinite; the run stays unfinished.
      tfp_nice.data.DataError: the data cannot be loaded or is invalid.
      ValueError: the data does not suit the model.
      OSError: a file cannot be written (no space, no permission); nothing half-written stays.
    """
    warn = warn_fn or (lambda m: warnings.warn(m, stacklevel=3))
    strategy = distributed.make_strategy(cfg.strategy)  # before any TensorFlow op
    chief = distributed.is_chief(strategy)
    run = _prepare(cfg, os.path.abspath(run_dir), resume, overwrite, print_fn, warn, splits,
                   chief)
    # Every worker builds the model the chief restores: the sizes the run started with.
    run.hp = started_hparams(run.hp, distributed.chief_json(run.hp, strategy))
    keras.utils.set_random_seed(cfg.seed)
    # A finished run trained further is loaded, but under MultiWorkerMirroredStrategy every
    # worker builds its model alike and the chief sends it the finished one (_restore).
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker and run.action == "extend":  # outside the scope: no collectives
        run.finished = load_run(run.final_dir)[0]
    with strategy.scope():
        model = (load_run(run.final_dir)[0] if run.action == "extend" and not multi_worker
                 else build_model(cfg, run.splits.spec, run.splits.num_classes, run.hp)
                 )  # checks the model before any write
    with ExitStack() as stack:
        _open_work_dir(run, stack, strategy)
        with strategy.scope():
            done, elapsed, state = _restore(run, model, strategy)
        if not state:
            state = _fit(run, model, done, elapsed, verbose, strategy)
        if not chief:  # the chief alone writes the run's outputs
            return {"chief": False, **state}
        metrics = _outputs(run, model, state, serving_export)
    if run.work_dir != run.final_dir:
        files.replace_directory(run.work_dir, run.final_dir)
    return metrics


def _prepare(cfg, run_dir, resume, overwrite, print_fn, warn, splits, chief=True) -> _Run:
    """Every check that needs no TensorFlow model: the directory, the data, the hparams.

    A worker of a multi-worker run (not the chief) leaves ``run_dir`` to the chief."""
    action = run_dir_lib.plan(run_dir, cfg, resume, overwrite) if chief else "worker"
    if splits is None:
        splits = data_lib.load(cfg.data, seed=cfg.seed, value_range=cfg.value_range,
                               num_levels=cfg.num_levels)
    if cfg.conditional:
        splits.require_labels()
    hp = default_hparams(cfg, splits.spec)
    if action in ("resume", "extend"):  # the sizes and recipe it started with
        hp = _started(hp, run_dir, print_fn)
    if action == "extend":
        done = run_dir_lib.read_metrics(run_dir)["epochs"]
        if done >= hp["epochs"]:
            raise RunError("trained_out", run_dir, str(done))
    work_dir = run_dir_lib.staging_path(run_dir) if action == "overwrite" else run_dir
    return _Run(cfg, run_dir, work_dir, action, splits, hp, print_fn, warn)


def _started(hp: dict, run_dir: str, say: Callable[[str], None]) -> dict:
    """``hp`` with the values ``run_dir`` was started with (:func:`started_hparams`); says
    which of them this version's defaults would set otherwise."""
    kept = started_hparams(hp, run_dir_lib.read_run_json(run_dir)["hparams"])
    changed = [f"{k}={kept[k]!r} (the default now: {hp[k]!r})" for k in hp if kept[k] != hp[k]]
    if changed:
        say("Resuming with the settings the run started with: " + ", ".join(changed))
    return kept


def _open_work_dir(run: _Run, stack: ExitStack, strategy) -> None:
    """Creates and locks the working directory, writes ``run.json``, removes stale temps.

    A multi-worker worker works in a temporary directory instead (removed at the end)."""
    if run.action == "worker":
        run.work_dir = stack.enter_context(distributed.output_dir(run.final_dir, strategy))
        return
    if run.action == "overwrite":
        stack.enter_context(run_dir_lib.lock(run.final_dir))
        _reset_staging(run)
    os.makedirs(run.work_dir, exist_ok=True)
    stack.enter_context(run_dir_lib.lock(run.work_dir))
    files.remove_stale_temps(run.work_dir, recursive=True)
    if run.action in ("new", "overwrite", "extend") and not _resumable(run.work_dir, run.cfg):
        run_dir_lib.write_run_json(run.work_dir, run.cfg, run.splits.spec, run.hp,
                                   run.splits.num_classes)


def _resumable(work_dir: str, cfg: TrainConfig) -> bool:
    try:
        meta = run_dir_lib.read_run_json(work_dir)
    except RunError:
        return False
    return meta["config"] == cfg.to_dict() and not run_dir_lib.is_finished(work_dir)


def _reset_staging(run: _Run) -> None:
    """Keeps an unfinished staging run of the same configuration (a killed ``overwrite``);
    removes any other leftover staging directory."""
    if not os.path.lexists(run.work_dir) or _resumable(run.work_dir, run.cfg):
        return
    if os.path.isfile(os.path.join(run.work_dir, "run.json")):
        run_dir_lib.check_replaceable(run.work_dir)
    shutil.rmtree(run.work_dir)


def _restore(run: _Run, model: FlowModel, strategy) -> tuple[int, float, dict]:
    """Compiles ``model`` and restores its progress: ``(epochs done, training seconds so far,
    state)``; a non-empty ``state`` means training is over and only the outputs remain.

    Multi-worker runs restore the chief's newest checkpoint on every worker (a collective)."""
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.Adam(run.hp["learning_rate"]),
                      jit_compile=run.cfg.strategy == "none" and run.hp.get("jit_compile", True))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        store = checkpoints.run_checkpoint(run.checkpoints, model, run.warn)
        if run.action == "extend":
            store = _FinishedRunState(store, run)
        epoch = distributed.restore_from_chief(model, store, strategy)
        if epoch and run.action == "worker":
            run.say(f"Continuing from the chief's state after epoch {epoch}")
        elif epoch and not getattr(store, "finished", False):
            run.say(f"Resuming the unfinished run in {run.final_dir} after epoch {epoch}")
        return epoch or 0, float(store.last_meta.get("train_seconds", 0.0)), {}
    done, elapsed = 0, 0.0
    if run.action == "extend":  # a finished run trained further: its model.keras is loaded
        previous = run_dir_lib.read_metrics(run.final_dir)
        done, elapsed = previous["epochs"], float(previous["train_seconds"])
    state = checkpoints.read_state_file(run.checkpoints)
    meta = checkpoints.restore(run.checkpoints, model, run.warn)
    if meta is not None:  # a killed run (or a killed extension of a finished one)
        run.say(f"Resuming the unfinished run in {run.final_dir} after epoch {meta['epoch']}")
        return meta["epoch"], float(meta.get("train_seconds", 0.0)), state
    if run.action == "extend":
        return done, elapsed, {}
    if hasattr(model, "initialize_scale"):
        labels = run.splits.train_labels[:1024] if run.cfg.conditional else None
        first = data_lib.as_dataset(run.splits.train[:1024], run.splits.spec, 1024,
                                    training=False, labels=labels)
        batch = next(iter(first))
        if labels is None:
            model.initialize_scale(batch)
        else:
            model.initialize_scale(batch[0], context=batch[1])
    return 0, 0.0, {}  # a recorded end of training without a checkpoint: train again


class _FinishedRunState:
    """The chief's state when it trains a finished multi-worker run further: the newest
    checkpoint (an extension killed before), else the finished ``model.keras`` (its weights
    and optimizer) after its recorded epochs. Every worker builds the model (its variables are
    created by collectives on all of them), so the finished model reaches them as values."""

    def __init__(self, store, run: _Run):
        self.store, self.run, self.last_meta, self.finished = store, run, {}, False

    def restore(self):
        found = self.store.restore()
        if found is not None:
            self.last_meta = self.store.last_meta
            return found
        finished = self.run.finished
        if not finished.compiled:
            finished.compile(optimizer=keras.optimizers.Adam(self.run.hp["learning_rate"]))
        metrics = run_dir_lib.read_metrics(self.run.final_dir)
        self.last_meta, self.finished = {"train_seconds": metrics["train_seconds"]}, True
        return metrics["epochs"], distributed.read_state(finished)


def _fit(run: _Run, model: FlowModel, done: int, elapsed: float, verbose, strategy) -> dict:
    """Trains from epoch ``done``; returns the state that ends training (or raises)."""
    cfg, spec = run.cfg, run.splits.spec
    guard = Guard(elapsed, None if cfg.time_limit is None else 60.0 * cfg.time_limit)
    best = BestWeights(run.work_dir, run.hp["patience"], guard)
    history = HistoryFile(os.path.join(run.work_dir, "history.csv"),
                          read_history(os.path.join(run.work_dir, "history.csv"), done))
    decay = ([] if run.hp["lr_decay"] == "none" else
             [LearningRateDecay(run.hp["learning_rate"], run.hp["lr_decay"], guard)])
    callbacks = [guard, *decay, history, best, EpochCheckpoint(run.checkpoints, guard, best),
                 keras.callbacks.TensorBoard(os.path.join(run.work_dir, "logs"))]
    run.say(f"Training {cfg.model} ({model.count_params():,} parameters) on {spec.name} "
            f"{list(spec.event_shape)}: {len(run.splits.train)} train / "
            f"{len(run.splits.validation)} validation / {len(run.splits.test)} test examples, "
            + (f"until the {cfg.time_limit:g}-minute time limit" if cfg.epochs is None
               and cfg.time_limit is not None else f"up to {run.hp['epochs']} epochs"))
    # A conditional run trains p(x | label) on (x, label) pairs.
    train_labels, val_labels = ((run.splits.train_labels, run.splits.validation_labels)
                                if cfg.conditional else (None, None))
    train_ds = data_lib.as_dataset(run.splits.train, spec, cfg.batch_size, training=True,
                                   seed=cfg.seed, labels=train_labels)
    val_ds = data_lib.as_dataset(run.splits.validation, spec, 256, training=False, seed=cfg.seed,
                                 labels=val_labels)
    fit = model.fit
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # Keras fit cannot
        fit = functools.partial(distributed.fit, model, strategy=strategy)
    elif verbose:  # Keras' bar, its epoch line saying how much of a time limit is used
        callbacks.append(BudgetProgress(guard, UNBOUNDED_EPOCHS))
    fit(train_ds, validation_data=val_ds, epochs=run.hp["epochs"], initial_epoch=done,
        callbacks=callbacks, verbose=verbose, shuffle=False)
    if guard.diverged:
        epoch, metric, value = guard.diverged
        kept = best.weights_path if best.best_epoch is not None else None
        raise TrainingDiverged(epoch, metric, value, best.best_epoch, kept)
    state = {"epochs": max((int(r["epoch"]) for r in history.rows), default=done - 1) + 1,
             "train_seconds": guard.elapsed, "time_limit_reached": guard.time_limit_reached,
             "best_epoch": best.best_epoch}
    checkpoints.write_state_file(run.checkpoints, **state)
    faults.point("fit_done")
    return state


def _outputs(run: _Run, model: FlowModel, state: dict, serving_export: bool) -> dict:
    """Evaluates the best weights and writes the run's outputs; ``metrics.json`` last."""
    best = os.path.join(run.work_dir, "best.weights.npz")
    if os.path.exists(best):
        checkpoints.load_weights(best, model)
    spec, splits = run.splits.spec, run.splits
    conditional = run.cfg.conditional
    if conditional:  # log p(c) of the Bayes classifier: the training frequencies
        model.set_class_prior(labels=splits.train_labels)
    test_nll, test_bpd = outputs.evaluate_nll(
        model, splits.test, spec, labels=splits.test_labels if conditional else None)
    val_nll, val_bpd = outputs.evaluate_nll(
        model, splits.validation, spec, labels=splits.validation_labels if conditional else None)
    metrics = {
        "test_nll_nats": test_nll, "test_bits_per_dim": test_bpd,
        "validation_nll_nats": val_nll, "validation_bits_per_dim": val_bpd,
        "epochs": int(state["epochs"]), "best_epoch": state.get("best_epoch"),
        "train_seconds": float(state["train_seconds"]),
        "time_limit_reached": bool(state.get("time_limit_reached")),
        "num_params": int(model.count_params()), "data": spec.to_config(),
        "model": model.get_config(), "config": run.cfg.to_dict(),
        "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in run.hp.items()},
        "bits_per_dim_formula": "NLL / (D ln 2) in the dequantized data space (see README)",
    }
    if conditional:
        metrics.update(outputs.evaluate_classifier(model, splits.test, splits.test_labels, spec))
        metrics["num_classes"] = int(model.num_classes)
    outputs.save_model(model, os.path.join(run.work_dir, "model.keras"))
    outputs.write_samples_png(model, spec, os.path.join(run.work_dir, "samples.png"),
                              run.cfg.seed, data=splits.train if not spec.is_image else None)
    if hasattr(model, "latent_scales") and hasattr(model, "resample_scale"):
        outputs.write_scale_samples_png(
            model, spec, os.path.join(run.work_dir, "samples_per_scale.png"), run.cfg.seed)
    if serving_export:
        path = outputs.export_for_serving(model, run.work_dir, spec, metrics)
        metrics["saved_model"] = os.path.relpath(path, run.work_dir)
    faults.point("before_metrics")
    files.atomic_write_json(os.path.join(run.work_dir, "metrics.json"), metrics)
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    return metrics
