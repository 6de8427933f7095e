"""Run directories: what makes a directory a run, what may be done with it, and who holds it.

A run directory is owned by tfp_nice when it holds a valid ``run.json`` (with the format
marker :data:`RUN_FORMAT`). The rules (TensorFlow-free, so the CLI checks them first):

* a missing or empty directory gets a new run;
* an unfinished run with the same configuration is resumed; a finished one (``metrics.json``)
  is refused unless ``resume`` (train further) or ``overwrite`` (train afresh);
* ``overwrite`` replaces only a tfp_nice run that holds nothing but run files, never a
  symbolic link, ``/``, the home directory, the working directory or one of its parents;
  anything else is refused whatever the flags;
* one process at a time: ``run.lock`` is held with ``flock`` while a run trains (released
  by the kernel if the process dies, so a killed run never leaves a stale lock).

Every file a run reads is validated; problems raise :class:`RunError` with a ``reason``
(which the CLI turns into a one-line message naming its flags) and the offending path.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tfp_nice._internal import files
from tfp_nice.data.spec import DataError, DataSpec
from tfp_nice.training.config import TrainConfig

__all__ = [
    "RUN_FORMAT",
    "RunError",
    "TrainingDiverged",
    "check_replaceable",
    "find_unfinished_run",
    "is_finished",
    "lock",
    "new_run_dir",
    "plan",
    "read_metrics",
    "read_run_json",
    "staging_path",
    "write_run_json",
]

#: The marker ``run.json`` carries.
RUN_FORMAT = "tfp_nice run 1"
#: What a run directory may hold (the CLI's ``sample``/``evaluate`` write the last three kinds).
_RUN_ENTRIES = frozenset({
    "run.json", "run.lock", "checkpoints", "best.weights.npz", "best.json", "history.csv",
    "logs", "model.keras", "saved_model", "metrics.json", "samples.png",
    "samples_per_scale.png", "evaluation.json",
    "backup", "best.weights.h5",  # written by tfp_nice before checkpoints/ existed
})
_RUN_PATTERNS = ("samples-T*.png", "samples-T*.npy", f"*{files.TMP_MARK}*")

_MESSAGES = {
    "foreign": "{path!r} exists and is not a tfp_nice run directory{detail}",
    "finished": "{path!r} already holds a finished run; train it further (resume=True) or "
                "replace it (overwrite=True)",
    "different_config": "{path!r} holds a run with a different configuration ({detail}); "
                        "choose another directory or replace it (overwrite=True)",
    "not_replaceable": "refusing to replace {path!r}: {detail}",
    "locked": "{path!r} is in use by another tfp-nice process ({detail})",
    "corrupt": "{path!r} is unreadable: {detail}",
    "no_checkpoint": "no usable checkpoint in {path!r} ({detail}); delete the run directory "
                     "or train afresh (overwrite=True)",
    "trained_out": "{path!r} already trained for {detail} epochs; ask for more epochs to "
                   "train further",
    "no_model": "no model at {path!r}: pass a finished run directory or a .keras file",
    "bad_model": "{path!r} {detail}",
}


class RunError(ValueError):
    """A run directory (or a file in it) cannot be used as asked.

    Attributes:
      reason: one of ``foreign``, ``finished``, ``different_config``, ``not_replaceable``,
        ``locked``, ``corrupt``, ``no_checkpoint``, ``trained_out``, ``no_model``,
        ``bad_model``.
      path: the directory or file concerned.
      detail: what exactly is wrong, when there is more to say.
    """

    def __init__(self, reason: str, path: str, detail: str = ""):
        self.reason, self.path, self.detail = reason, path, detail
        text = _MESSAGES[reason]
        if reason == "foreign" and detail:
            detail = f" ({detail})"
        super().__init__(text.format(path=path, detail=detail))


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss; the run is left unfinished.

    Attributes:
      epoch: the 1-based epoch in which it happened.
      metric: ``"loss"`` or ``"val_loss"``.
      value: the non-finite value.
      best_epoch: the epoch of the best weights kept from before (``None`` if none).
      best_path: where those weights are (``None`` if none).
    """

    def __init__(self, epoch: int, metric: str, value: float, best_epoch: int | None,
                 best_path: str | None):
        self.epoch, self.metric, self.value = epoch, metric, value
        self.best_epoch, self.best_path = best_epoch, best_path
        kept = (f"the best weights (epoch {best_epoch}) are kept in {best_path}"
                if best_path else "no weights were kept")
        super().__init__(f"training diverged at epoch {epoch}: {metric} {value}; {kept}")


# --- reading the run's files -------------------------------------------------------------------
def _json(path: str) -> Any:
    return files.read_json(path, lambda why: RunError("corrupt", path, why))


def read_run_json(run_dir: str) -> dict:
    """``run.json`` of ``run_dir``, checked: ``config``, ``data`` and ``hparams`` entries.

    Raises:
      RunError: ``corrupt`` naming the file and what is wrong.
    """
    path = os.path.join(run_dir, "run.json")
    meta = _json(path)
    if not isinstance(meta, dict):
        raise RunError("corrupt", path, f"expected a JSON object, found {type(meta).__name__}")
    if meta.get("format", RUN_FORMAT) != RUN_FORMAT:
        raise RunError("corrupt", path, f"unknown format {meta.get('format')!r} (this tfp_nice "
                                        f"reads {RUN_FORMAT!r})")
    for key in ("config", "data", "hparams"):
        if not isinstance(meta.get(key), dict):
            raise RunError("corrupt", path, f"{key!r} must be a JSON object, found "
                                            f"{meta.get(key)!r}")
    try:
        TrainConfig.from_dict(meta["config"], strict=True)
    except ValueError as e:
        raise RunError("corrupt", path, f"bad 'config': {e}") from None
    try:
        DataSpec.from_config(meta["data"])
    except (DataError, TypeError, ValueError) as e:
        raise RunError("corrupt", path, f"bad 'data': {e}") from None
    return meta


def read_metrics(run_dir: str) -> dict:
    """``metrics.json`` of a finished run, checked (finite NLL and bits/dim, epoch count)."""
    path = os.path.join(run_dir, "metrics.json")
    metrics = _json(path)
    if not isinstance(metrics, dict):
        raise RunError("corrupt", path, f"expected a JSON object, found {type(metrics).__name__}")
    for key in ("test_nll_nats", "test_bits_per_dim", "train_seconds"):
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise RunError("corrupt", path, f"{key!r} must be a finite number, found {value!r}")
    epochs = metrics.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise RunError("corrupt", path, f"'epochs' must be an int >= 0, found {epochs!r}")
    return metrics


def is_finished(run_dir: str) -> bool:
    """Whether ``run_dir`` holds ``metrics.json`` (a finished run)."""
    return os.path.isfile(os.path.join(run_dir, "metrics.json"))


# --- what may be done --------------------------------------------------------------------------
def plan(run_dir: str, cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> str:
    """What training ``cfg`` into ``run_dir`` means: ``"new"``, ``"resume"`` (an unfinished run
    of the same configuration), ``"extend"`` (``resume`` a finished one) or ``"overwrite"``.

    Raises:
      RunError: ``foreign``, ``corrupt``, ``finished``, ``different_config`` or
        ``not_replaceable``.
    """
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise RunError("foreign", run_dir, "it is a file")
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return "new"
    if not os.path.exists(os.path.join(run_dir, "run.json")):
        raise RunError("foreign", run_dir, "it has no run.json")
    if overwrite:  # before reading run.json: a run with unreadable files can be replaced
        check_replaceable(run_dir)
        return "overwrite"
    meta = read_run_json(run_dir)
    finished = is_finished(run_dir)
    if finished:
        read_metrics(run_dir)
    old = TrainConfig.from_dict(meta["config"])
    if finished and not resume:
        raise RunError("finished", run_dir)
    if finished and cfg.same_except(old, "epochs", "time_limit"):
        return "extend"
    if not finished and old.to_dict() == cfg.to_dict():
        return "resume"
    raise RunError("different_config", run_dir, _difference(old, cfg))


def _difference(old: TrainConfig, new: TrainConfig) -> str:
    a, b = old.to_dict(), new.to_dict()
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} asked" for k in keys[:3])


def check_replaceable(path: str) -> None:
    """Raises ``RunError("not_replaceable")`` unless ``path`` is a run directory that holds only
    run files and is not a symbolic link, ``/``, home, the working directory or a parent of it."""
    if os.path.islink(path):
        raise RunError("not_replaceable", path, "it is a symbolic link")
    real = os.path.realpath(path)
    cwd = os.path.realpath(os.getcwd())
    home = os.path.realpath(os.path.expanduser("~"))
    if real in (os.sep, home) or cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise RunError("not_replaceable", path, "it is the root, home or working directory or "
                                                "contains the working directory")
    if not os.path.isfile(os.path.join(path, "run.json")):
        raise RunError("not_replaceable", path, "it is not a tfp_nice run directory")
    strangers = sorted(n for n in os.listdir(path) if not _is_run_entry(n))
    if strangers:
        raise RunError("not_replaceable", path,
                       f"it holds files a run does not write: {', '.join(strangers[:3])}")


def _is_run_entry(name: str) -> bool:
    return name in _RUN_ENTRIES or any(fnmatch.fnmatch(name, p) for p in _RUN_PATTERNS)


def staging_path(run_dir: str) -> str:
    """Where an ``overwrite`` run trains until it replaces ``run_dir``."""
    head, tail = os.path.split(os.path.abspath(run_dir))
    return os.path.join(head, f".{tail}.overwrite")


# --- locking, naming ---------------------------------------------------------------------------
@contextmanager
def lock(run_dir: str) -> Iterator[None]:
    """Holds ``run_dir/run.lock`` exclusively; ``RunError("locked")`` if another process does."""
    import fcntl

    path = os.path.join(run_dir, "run.lock")
    f = open(path, "a+")  # noqa: SIM115 - held for the duration of the block
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunError("locked", run_dir, f"pid {holder}") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


def _locked(run_dir: str) -> bool:
    try:
        with lock(run_dir):
            return False
    except RunError:
        return True
    except OSError:
        return False


def find_unfinished_run(root: str, prefix: str, cfg: TrainConfig) -> str | None:
    """The newest ``root/prefix*`` run with the same config that is neither finished nor in
    use by another process (unreadable runs are skipped)."""
    if not os.path.isdir(root):
        return None
    for name in sorted(os.listdir(root), reverse=True):
        run_dir = os.path.join(root, name)
        if not name.startswith(prefix) or is_finished(run_dir) or not os.path.isdir(run_dir):
            continue
        try:
            meta = read_run_json(run_dir)
        except RunError:
            continue
        if meta["config"] == cfg.to_dict() and not _locked(run_dir):
            return run_dir
    return None


def new_run_dir(root: str, prefix: str) -> str:
    """Creates ``root/prefix<timestamp>`` (``-2``, ``-3``... if taken) and returns it."""
    os.makedirs(root, exist_ok=True)
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = os.path.join(root, stamp if i == 1 else f"{stamp}-{i}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RunError("foreign", os.path.join(root, stamp), "no free name")


def write_run_json(run_dir: str, cfg: TrainConfig, spec: DataSpec, hparams: dict,
                   num_classes: int | None = None) -> None:
    """Writes ``run.json`` (the marker that makes ``run_dir`` a run) atomically."""
    meta = {"format": RUN_FORMAT, "config": cfg.to_dict(), "data": spec.to_config(),
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()}}
    if num_classes is not None:
        meta["num_classes"] = int(num_classes)
    files.atomic_write_json(os.path.join(run_dir, "run.json"), json.loads(json.dumps(meta)))
