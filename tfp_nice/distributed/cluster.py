"""Which cluster this process belongs to, which strategy trains on it, and who writes files.

A multi-worker job is the same program started once per machine (a *task*). TensorFlow finds
the cluster in one of two standard places, tried in this order by :func:`resolve_cluster`:

1. ``TF_CONFIG`` (JSON: ``{"cluster": {"worker": ["host0:port", "host1:port"]},
   "task": {"type": "worker", "index": 0}}``), read by
   ``tf.distribute.cluster_resolver.TFConfigClusterResolver``;
2. a Slurm job step of several tasks (``srun``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
   ``SLURM_STEP_NODELIST``, ``SLURM_STEP_TASKS_PER_NODE``), read by
   ``tf.distribute.cluster_resolver.SlurmClusterResolver``; task ``k`` of a node listens on
   ``port_base + k``.

Without either, training runs on one machine. The *chief* is task ``chief:0`` if the cluster
has one, else ``worker:0``; it alone writes the run directory, checkpoints and TensorBoard
logs. The other workers run the same callbacks against a private temporary directory
(:func:`output_dir`) that is removed when they finish, so every process executes the same
collective operations in the same order.

Example:
  >>> strategy = make_strategy("none")
  >>> is_chief(strategy), task_info(strategy)
  (True, (None, None))
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping

import tensorflow as tf

from tfp_nice._internal.checks import check_choice, check_int

__all__ = [
    "STRATEGIES",
    "cluster_kind",
    "is_chief",
    "make_strategy",
    "output_dir",
    "resolve_cluster",
    "task_info",
]

#: Names accepted by :func:`make_strategy`.
STRATEGIES = ("none", "mirrored", "multiworker")
_SLURM_VARS = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
               "SLURM_STEP_TASKS_PER_NODE")


def cluster_kind(environ: Mapping[str, str] | None = None) -> str | None:
    """``"tf_config"``, ``"slurm"`` or ``None``: where the cluster of this process is described.

    ``TF_CONFIG`` wins when both are present (an explicit description beats the scheduler's).
    A Slurm step counts only with every variable ``SlurmClusterResolver`` reads and more
    than one task; a one-task step (or a batch script outside ``srun``) is one machine.

    Raises:
      ValueError: if ``TF_CONFIG`` is set but is not a JSON object with a ``cluster``.
    """
    env = os.environ if environ is None else environ
    raw = env.get("TF_CONFIG", "").strip()
    if raw:
        try:
            config = json.loads(raw)
        except ValueError:
            config = None
        if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
            raise ValueError(
                "`TF_CONFIG` must be a JSON object with a \"cluster\" and a \"task\", e.g. "
                '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                f'"task": {{"type": "worker", "index": 0}}}}. Received: TF_CONFIG={raw!r}'
            )
        return "tf_config"
    if all(env.get(k) for k in _SLURM_VARS):
        tasks = env["SLURM_STEP_NUM_TASKS"]
        if not tasks.isdigit():
            raise ValueError(
                "`SLURM_STEP_NUM_TASKS` must be a positive integer. "
                f"Received: SLURM_STEP_NUM_TASKS={tasks!r}"
            )
        return "slurm" if int(tasks) > 1 else None
    return None


def resolve_cluster(port_base: int = 8888):
    """The cluster resolver of this process, or ``None`` when it trains alone.

    Args:
      port_base: first port of the Slurm tasks on each node (``TF_CONFIG`` names its ports).

    Returns:
      ``TFConfigClusterResolver``, a resolver built from ``SlurmClusterResolver`` (on nodes
      without GPUs: a ``SimpleClusterResolver`` with its cluster and task and no
      accelerators, since ``SlurmClusterResolver`` assumes GPUs), or ``None``.

    Example:
      >>> resolve_cluster() is None   # no TF_CONFIG, no Slurm step
      True
    """
    port_base = check_int(port_base, "port_base", minimum=1, maximum=65535)
    kind = cluster_kind()
    if kind == "tf_config":
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if kind != "slurm":
        return None
    gpus = _gpus_on_node()
    tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=gpus or tasks, gpus_per_task=None if gpus else 1,
        auto_set_gpu=bool(gpus))
    if gpus:
        return slurm
    spec = slurm.cluster_spec()  # also resolves task_type / task_id
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={},
        rpc_layer=slurm.rpc_layer)


def _gpus_on_node() -> int:
    """GPUs Slurm gave this node: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi``'s count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def make_strategy(name: str = "none", cluster_resolver=None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name``.

    Create it first thing in the program: ``MultiWorkerMirroredStrategy`` configures the
    runtime and fails once TensorFlow has run an operation.

    Args:
      name: ``"none"`` (the default strategy: one device), ``"mirrored"`` (every local GPU,
        or the CPU) or ``"multiworker"`` (``MultiWorkerMirroredStrategy``: every worker of
        the cluster, each with its local GPUs or its CPU; alone if there is no cluster).
      cluster_resolver: for ``"multiworker"``; default :func:`resolve_cluster`.

    Raises:
      ValueError: if ``name`` is not one of :data:`STRATEGIES`.
    """
    check_choice(name, STRATEGIES, "name")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        resolver = cluster_resolver if cluster_resolver is not None else resolve_cluster()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    return tf.distribute.get_strategy()


def task_info(strategy: tf.distribute.Strategy | None = None) -> tuple[str | None, int | None]:
    """``(task_type, task_id)`` of this process, ``(None, None)`` outside a cluster."""
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, None
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the outputs: ``chief:0``, else ``worker:0``, else alone.

    Args:
      strategy: default: the current one (``tf.distribute.get_strategy()``).
    """
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker" or task_id != 0:
        return False
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in jobs


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, strategy: tf.distribute.Strategy | None = None
               ) -> Iterator[str]:
    """Yields the directory this process writes into: ``path`` on the chief, else a temp dir.

    Workers get a fresh ``tempfile.mkdtemp`` directory, removed (with all it holds) when the
    block ends, also on error. The chief's ``path`` is created if missing and kept.

    Example:
      >>> import tempfile, os
      >>> with output_dir(os.path.join(tempfile.mkdtemp(), "run")) as d:
      ...     os.path.basename(d)
      'run'
    """
    path = os.path.abspath(os.fspath(path))
    if is_chief(strategy):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    task_type, task_id = task_info(strategy)
    tmp = tempfile.mkdtemp(prefix=f"tfp_nice-{task_type}{task_id}-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
