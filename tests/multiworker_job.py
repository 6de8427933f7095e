"""One worker of the loopback multi-worker tests (``tests/test_distributed_multiworker.py``).

Usage: ``python multiworker_job.py OUT EPOCHS KILL_AFTER RESULT`` with ``TF_CONFIG`` set. Trains a
tiny RealNVP on moons with :func:`tfp_nice.distributed.fit`; the chief writes ``OUT`` (history.csv,
logs/, checkpoints/, model.keras), other workers a temporary directory. If ``KILL_AFTER`` > 0 a
non-chief worker SIGKILLs itself at the end of that epoch. ``RESULT`` receives the final weights
and what this process did (``.npz``).
"""

from __future__ import annotations

import os
import signal
import sys

from tfp_nice import distributed

strategy = distributed.make_strategy("multiworker")  # before any TensorFlow operation

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfp_nice as tn  # noqa: E402
from tfp_nice import data  # noqa: E402
from tfp_nice._internal import files  # noqa: E402


class _KillSelf(keras.callbacks.Callback):
    def __init__(self, after: int, chief: bool):
        super().__init__()
        self.after, self.chief = after, chief

    def on_epoch_end(self, epoch, logs=None):
        if not self.chief and epoch + 1 == self.after:
            os.kill(os.getpid(), signal.SIGKILL)


def main(out: str, epochs: int, kill_after: int, result: str) -> None:
    chief = distributed.is_chief(strategy)
    splits = data.load("moons", num_samples=512, seed=0)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    with distributed.output_dir(out, strategy) as run_dir:
        callbacks = [
            _KillSelf(kill_after, chief),
            keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        ]
        history = distributed.fit(
            model, splits.train, batch_size=64, epochs=epochs,
            validation_data=splits.validation, callbacks=callbacks, verbose=0,
            checkpoint=distributed.NpzCheckpoint(os.path.join(run_dir, "checkpoints")))
        if chief:
            with files.atomic_path(os.path.join(run_dir, "model.keras"), ".keras") as tmp:
                model.save(tmp)
    np.savez(result, chief=chief, run_dir=run_dir, epochs=np.asarray(history.epoch),
             loss=np.asarray(history.history.get("loss", [])),
             **{f"w{i}": w for i, w in enumerate(model.get_weights())})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
