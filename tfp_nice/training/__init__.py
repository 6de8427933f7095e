"""The main job: train a flow preset on a dataset with Keras ``fit`` into a run directory.

* :mod:`~tfp_nice.training.config` — :class:`TrainConfig` and default hyper-parameters;
* :mod:`~tfp_nice.training.run_dir` — what a run directory is and may be used for, locking,
  the errors (:class:`RunError`, :class:`TrainingDiverged`);
* :mod:`~tfp_nice.training.checkpoints` — atomic model + optimizer checkpoints;
* :mod:`~tfp_nice.training.callbacks` — history, best weights, early stopping, divergence
  and time-budget guard;
* :mod:`~tfp_nice.training.build` — the model of a configuration, loading a trained one;
* :mod:`~tfp_nice.training.outputs` — metrics, ``model.keras``, figures, the export;
* :mod:`~tfp_nice.training.loop` — :func:`train`, the whole job in short steps.

The configuration and run-directory modules need no TensorFlow; the names that do are
imported on first use, so the CLI checks its arguments without importing TensorFlow.

Example:
  >>> cfg = TrainConfig(model="realnvp", data="moons", epochs=2)   # doctest: +SKIP
  >>> metrics = train(cfg, "runs/demo")                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from tfp_nice.training.config import TrainConfig, default_hparams
from tfp_nice.training.run_dir import (
    RunError,
    TrainingDiverged,
    find_unfinished_run,
    is_finished,
)

_LAZY = {
    "MODELS": "tfp_nice.training.build",
    "build_model": "tfp_nice.training.build",
    "load_run": "tfp_nice.training.build",
    "SAMPLE_TEMPERATURES": "tfp_nice.training.outputs",
    "evaluate_nll": "tfp_nice.training.outputs",
    "sample_temperatures": "tfp_nice.training.outputs",
    "write_samples_png": "tfp_nice.training.outputs",
    "write_scale_samples_png": "tfp_nice.training.outputs",
    "train": "tfp_nice.training.loop",
}

__all__ = [
    "RunError",
    "TrainConfig",
    "TrainingDiverged",
    "default_hparams",
    "find_unfinished_run",
    "is_finished",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tfp_nice.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
