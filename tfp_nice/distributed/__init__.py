"""Training on ``tf.distribute`` strategies, multi-worker included, with a custom step.

Keras 3 ``fit`` does not run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585);
:func:`fit` here does, with ``fit``'s contract (epochs, validation, callbacks, ``History``)
and the same logged loss as single-device training with the same global batch.

* :mod:`~tfp_nice.distributed.cluster` — the cluster (``TF_CONFIG`` or Slurm), the
  strategy, the chief, and :func:`output_dir` (the chief's directory; temporary elsewhere);
* :mod:`~tfp_nice.distributed.inputs` — global batches split across replicas
  deterministically;
* :mod:`~tfp_nice.distributed.state` — the variables to checkpoint, :class:`NpzCheckpoint`,
  :func:`restore_from_chief` (every worker gets the chief's state) and :func:`chief_json`
  (every worker gets the chief's settings);
* :mod:`~tfp_nice.distributed.loop` — :func:`fit`.

Example (run the same script on every machine, each with its own ``TF_CONFIG``):
  >>> import keras, numpy as np, tfp_nice as tn
  >>> from tfp_nice import distributed
  >>> strategy = distributed.make_strategy("none")   # "multiworker" on a cluster
  >>> with strategy.scope():
  ...     model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
  ...     model.compile(optimizer=keras.optimizers.Adam(1e-3))
  >>> x = np.random.default_rng(0).normal(size=(128, 2)).astype("float32")
  >>> h = distributed.fit(model, x, batch_size=64, epochs=1, verbose=0)
  >>> len(h.history["loss"])
  1
"""

from tfp_nice.distributed.cluster import (
    STRATEGIES,
    cluster_kind,
    is_chief,
    make_strategy,
    output_dir,
    resolve_cluster,
    task_info,
)
from tfp_nice.distributed.loop import fit
from tfp_nice.distributed.state import (
    Checkpointer,
    NpzCheckpoint,
    chief_json,
    read_state,
    restore_from_chief,
    training_variables,
    write_state,
)

__all__ = [
    "STRATEGIES",
    "Checkpointer",
    "NpzCheckpoint",
    "chief_json",
    "cluster_kind",
    "fit",
    "is_chief",
    "make_strategy",
    "output_dir",
    "read_state",
    "resolve_cluster",
    "restore_from_chief",
    "task_info",
    "training_variables",
    "write_state",
]
