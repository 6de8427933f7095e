"""The run's Keras callbacks: history, best weights with early stopping, checkpoints, and a
guard that stops on divergence or when the time budget is spent.

Each epoch ends in this order (the order of :func:`run_callbacks`): the guard judges the
epoch, the history row is written, the best weights are kept, then the checkpoint is
written. A kill between any two leaves at most the epoch in progress to redo, and resuming
drops history rows past the checkpoint, so no row is ever duplicated.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time

import keras

from tfp_nice._internal import faults, files
from tfp_nice.training import checkpoints
from tfp_nice.training.run_dir import RunError

__all__ = ["BestWeights", "BudgetProgress", "Guard", "HistoryFile", "EpochCheckpoint",
           "LearningRateDecay", "decay_factor", "read_history"]


def _finite(logs: dict | None) -> bool:
    return all(math.isfinite(v) for v in (logs or {}).values() if isinstance(v, (int, float)))


def read_history(path: str, before_epoch: int) -> list[dict]:
    """The rows of ``history.csv`` for epochs ``< before_epoch`` (unreadable rows are dropped)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    out = []
    for row in rows:
        try:
            epoch = int(row.get("epoch", ""))
        except ValueError:
            continue
        if 0 <= epoch < before_epoch:
            out.append(row)
    return out


class HistoryFile(keras.callbacks.Callback):
    """``history.csv`` (``epoch`` then the logged metrics), rewritten atomically each epoch."""

    def __init__(self, path: str, rows: list[dict]):
        super().__init__()
        self.path, self.rows = path, list(rows)

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        self.write()

    def write(self) -> None:
        keys = ["epoch"] + sorted({k for r in self.rows for k in r} - {"epoch"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        files.atomic_write_text(self.path, buffer.getvalue())


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights with the lowest ``val_loss`` (``best.weights.npz`` + ``best.json``)
    and stops training after ``patience`` epochs without improvement; both survive resumption
    because the best epoch is read back from ``best.json``."""

    def __init__(self, run_dir: str, patience: int, guard: Guard):
        super().__init__()
        self.guard = guard
        self.weights_path = os.path.join(run_dir, "best.weights.npz")
        self.info_path = os.path.join(run_dir, "best.json")
        self.patience = patience
        self.best, self.best_epoch = math.inf, None
        if os.path.exists(self.info_path) and os.path.exists(self.weights_path):
            info = files.read_json(self.info_path,
                                   lambda why: RunError("corrupt", self.info_path, why))
            if (not isinstance(info, dict) or not isinstance(info.get("epoch"), int)
                    or not isinstance(info.get("val_loss"), (int, float))):
                raise RunError("corrupt", self.info_path, f"unexpected content {info!r}")
            self.best, self.best_epoch = float(info["val_loss"]), info["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        val = (logs or {}).get("val_loss")
        if val is not None and _finite(logs) and not self.guard.diverged and val < self.best:
            checkpoints.save_weights(self.weights_path, self.model, {"epoch": epoch + 1})
            self.best, self.best_epoch = float(val), epoch + 1
            files.atomic_write_json(self.info_path,
                                    {"val_loss": self.best, "epoch": self.best_epoch})
        if self.best_epoch is not None and epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True


class Guard(keras.callbacks.Callback):
    """Stops training on a non-finite loss (recording where) or when ``time_limit`` seconds of
    training (``elapsed_before`` of them spent in earlier sessions) are used up."""

    def __init__(self, elapsed_before: float = 0.0, time_limit: float | None = None):
        super().__init__()
        self.elapsed_before, self.time_limit = elapsed_before, time_limit
        self.diverged: tuple[int, str, float] | None = None
        self.time_limit_reached = False
        self._start = time.perf_counter()
        self._epoch = 0

    @property
    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions included."""
        return self.elapsed_before + time.perf_counter() - self._start

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if faults.point("nan_loss", epoch=self._epoch + 1):
            loss = math.nan
        if loss is not None and not math.isfinite(loss):
            self.diverged = self.diverged or (self._epoch + 1, "loss", float(loss))
            self.model.stop_training = True
        elif self.time_limit is not None and self.elapsed >= self.time_limit:
            self.time_limit_reached = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value) and self.diverged is None:
                self.diverged = (epoch + 1, key, float(value))
        if self.diverged:
            self.model.stop_training = True


class BudgetProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar; when the time limit alone bounds the run (``epochs`` of at least
    ``unbounded``), each epoch's line reads ``Epoch 3 (4.2 of 15 minutes used)`` where Keras
    would print ``Epoch 3/1000000``."""

    def __init__(self, guard: Guard, unbounded: int):
        super().__init__()
        self._guard, self._unbounded = guard, unbounded

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.epochs
        budgeted = epochs >= self._unbounded and self._guard.time_limit is not None
        if budgeted:
            self.epochs = 1  # Keras prints its "Epoch n/N" line only for N > 1
        super().on_epoch_begin(epoch, logs)
        self.epochs = epochs
        if budgeted and self.verbose:
            print(f"Epoch {epoch + 1} ({self._guard.elapsed / 60:.1f} of "
                  f"{self._guard.time_limit / 60:g} minutes used)", flush=True)


#: The last fraction of the run over which ``"cooldown"`` takes the rate to 0.
COOLDOWN_FRACTION = 0.2


def decay_factor(shape: str, progress: float) -> float:
    """The learning rate's fraction of its starting value at ``progress`` in ``[0, 1]`` of the
    run: ``"none"`` 1; ``"linear"`` ``1 - p``; ``"cosine"`` ``(1 + cos(pi p)) / 2``;
    ``"cooldown"`` 1, then linear to 0 over the last :data:`COOLDOWN_FRACTION` of the run
    (constant rate with a cooldown: Hägele et al. 2024, *Scaling laws and compute-optimal
    training beyond fixed training durations*)."""
    p = min(max(float(progress), 0.0), 1.0)
    if shape == "cooldown":
        return min(1.0, (1.0 - p) / COOLDOWN_FRACTION)
    if shape == "linear":
        return 1.0 - p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0


class LearningRateDecay(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every batch to ``base_lr *``
    :func:`decay_factor` ``(shape, progress)``: with a time budget ``progress`` is the
    ``guard``'s training seconds (earlier sessions included, so a resumed run continues the
    same schedule) over the budget; without one it is the batches done over ``epochs`` of
    ``params["steps"]`` batches. The rate in use ends each epoch's logs (``learning_rate``,
    a column of ``history.csv``)."""

    def __init__(self, base_lr: float, shape: str, guard: Guard):
        super().__init__()
        self.base_lr, self.shape, self.guard = float(base_lr), shape, guard
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def progress(self, batch: int) -> float:
        """The run's progress in ``[0, 1]`` before ``batch`` of the current epoch."""
        if self.guard.time_limit is not None:
            return self.guard.elapsed / self.guard.time_limit
        steps, epochs = (self.params or {}).get("steps"), (self.params or {}).get("epochs")
        if not steps or not epochs:
            return 0.0
        return (self._epoch * steps + batch) / (epochs * steps)

    def on_train_batch_begin(self, batch, logs=None):
        lr = self.base_lr * decay_factor(self.shape, self.progress(batch))
        self.model.optimizer.learning_rate.assign(lr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a checkpoint after every finite epoch (see :mod:`tfp_nice.training.checkpoints`)."""

    def __init__(self, directory: str, guard: Guard, best: BestWeights):
        super().__init__()
        self.directory, self.guard, self.best = directory, guard, best

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.diverged:
            return
        checkpoints.save(self.directory, epoch + 1, self.model,
                         {"train_seconds": self.guard.elapsed, "best_epoch": self.best.best_epoch})
        faults.point("epoch_end", epoch=epoch + 1)
