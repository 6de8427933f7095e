"""Two MultiWorkerMirroredStrategy workers on loopback ports train, write, die and resume.

Each cluster is two processes of ``tests/multiworker_job.py`` on 127.0.0.1 (free ports from a
bind to port 0), each with its own ``TMPDIR`` under the test's directory; every process is
killed at the end of its test, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfp_nice  # noqa: F401 - registers the classes model.keras holds
from tfp_nice.checkpoints import read_arrays

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "multiworker_job.py")
REPO = os.path.dirname(HERE)
EPOCHS = 3
TIMEOUT = 150  # seconds a cluster may take (two TensorFlow imports on 2 shared cores)


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class _Cluster:
    """Two worker processes; :meth:`close` kills whatever still runs."""

    def __init__(self, root, out: str, epochs: int, kill_after: int = 0):
        self.root, self.procs, self.results, self.logs = root, [], [], []
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
        for i in range(2):
            tmp = root / f"tmp{i}"
            tmp.mkdir(exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
            env.update(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(tmp),
                PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
            self.results.append(str(root / f"result{i}.npz"))
            self.logs.append(root / f"worker{i}.log")
            with open(self.logs[-1], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, JOB, out, str(epochs), str(kill_after), self.results[-1]],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait(self, proc: subprocess.Popen, deadline: float) -> int:
        try:
            return proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"worker timed out; logs:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.logs)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@contextlib.contextmanager
def _cluster(root, out: str, epochs: int, kill_after: int = 0):
    c = _Cluster(root, out, epochs, kill_after)
    try:
        yield c
    finally:
        c.close()


def _finish(c: _Cluster) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    codes = [c.wait(p, deadline) for p in c.procs]
    assert codes == [0, 0], c.tail()
    out = []
    for path in c.results:
        with np.load(path) as z:
            out.append({k: z[k] for k in z.files})
    return out


def _weights(result: dict) -> list[np.ndarray]:
    return [result[f"w{i}"] for i in range(len([k for k in result if k[0] == "w"]))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A full two-worker run: (chief's output directory, results of both workers, root)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    out = str(root / "run")
    with _cluster(root, out, EPOCHS) as c:
        results = _finish(c)
    return out, results, root


def test_two_workers_end_with_identical_weights_and_only_the_chief_writes(uninterrupted):
    out, (chief, worker), root = uninterrupted
    assert bool(chief["chief"]) and not bool(worker["chief"])
    for a, b in zip(_weights(chief), _weights(worker)):
        np.testing.assert_array_equal(a, b)
    assert list(chief["epochs"]) == list(worker["epochs"]) == [0, 1, 2]
    np.testing.assert_array_equal(chief["loss"], worker["loss"])
    assert chief["loss"][-1] < chief["loss"][0]
    # The chief's directory is complete; the worker's temporary one is gone.
    assert str(chief["run_dir"]) == out and str(worker["run_dir"]) != out
    assert not os.path.exists(str(worker["run_dir"])) and not os.listdir(root / "tmp1")
    assert sorted(os.listdir(out)) == ["checkpoints", "history.csv", "logs", "model.keras"]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "epoch-000002.npz", "epoch-000003.npz"]
    for split in ("train", "validation"):
        assert any(n.startswith("events.") for n in os.listdir(os.path.join(out, "logs", split)))
    rows = open(os.path.join(out, "history.csv")).read().split()
    assert rows[0] == "epoch,loss,val_loss" and [r.split(",")[0] for r in rows[1:]] == [
        "0", "1", "2"]
    model = keras.models.load_model(os.path.join(out, "model.keras"))
    for a, b in zip(model.get_weights(), _weights(chief)):
        np.testing.assert_array_equal(a, b)
    values, meta = read_arrays(os.path.join(out, "checkpoints", "epoch-000003.npz"))
    assert meta["epoch"] == EPOCHS
    np.testing.assert_array_equal(values[0], model.variables[0].numpy())


def test_a_killed_worker_and_a_restart_of_both_resume_from_the_chiefs_checkpoint(
        uninterrupted, tmp_path):
    out = str(tmp_path / "run")
    ckpt = os.path.join(out, "checkpoints", "epoch-000001.npz")
    with _cluster(tmp_path, out, EPOCHS, kill_after=1) as c:
        deadline = time.monotonic() + TIMEOUT
        assert c.wait(c.procs[1], deadline) == -signal.SIGKILL, c.tail()
        while not os.path.exists(ckpt) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.path.exists(ckpt), c.tail()
        # The chief is stuck in a collective with a dead peer: kill it too, as a scheduler would.
    assert not os.path.exists(os.path.join(out, "model.keras"))

    with _cluster(tmp_path, out, EPOCHS) as c:
        chief, worker = _finish(c)
    assert list(chief["epochs"]) == list(worker["epochs"]) == [1, 2]
    for a, b in zip(_weights(chief), _weights(worker)):
        np.testing.assert_array_equal(a, b)
    # Same batches (per-epoch permutation), same optimizer state: as if never interrupted.
    _, (full, _), _ = uninterrupted
    np.testing.assert_allclose(chief["loss"], full["loss"][1:], rtol=1e-6)
    for a, b in zip(_weights(chief), _weights(full)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rows = open(os.path.join(out, "history.csv")).read().split()
    assert [r.split(",")[0] for r in rows if r[0].isdigit()] == ["0", "1", "2"]
    assert keras.models.load_model(os.path.join(out, "model.keras")).count_params() > 0


# A later version with another default (hidden_units, when --hidden-units is not given): run on
# every worker in place of ``python -m tfp_nice.cli``.
_NEW_DEFAULTS = (
    "import sys; from tfp_nice.training import config; old = config._vector_hparams; "
    "config._vector_hparams = lambda cfg, spec: {**old(cfg, spec), **({} if cfg.hidden_units "
    "else {'hidden_units': (4, 4)})}; from tfp_nice import cli; sys.exit(cli.main(sys.argv[1:]))")


def _cli_cluster(out, *args: str, prelude: str | None = None) -> list[str]:
    """Both workers' output of ``tfp-nice train --strategy multiworker ... --out out``."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    command = ["-c", prelude] if prelude else ["-m", "tfp_nice.cli"]
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                      "index": i}}),
                   TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen(
            [sys.executable, *command, "train", "--strategy", "multiworker", "--model",
             "realnvp", "--data", "moons", "--num-couplings", "2", "--batch-size", "512",
             "--out", str(out), "--no-export", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True))
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    return logs


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A two-epoch CLI run on two workers at the default hidden units: (directory, logs)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    return out, _cli_cluster(out, "--epochs", "2")


def test_the_cli_trains_on_two_loopback_workers_and_the_chief_writes_the_run(cli_run):
    out, logs = cli_run
    assert "held-out NLL" in logs[0] and "worker done after 2 epochs" in logs[1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["config"]["strategy"] == "multiworker"
    assert isinstance(keras.models.load_model(out / "model.keras"), tfp_nice.FlowModel)


def test_workers_resuming_after_the_defaults_changed_build_the_model_the_run_started_with(
        cli_run, tmp_path):
    """Only the chief reads run.json: the other workers take the sizes from it (a collective),
    or they would build another model than the one the chief restores."""
    started, _ = cli_run
    out = tmp_path / "run"
    shutil.copytree(started, out)
    logs = _cli_cluster(out, "--epochs", "3", "--resume", prelude=_NEW_DEFAULTS)
    assert ("Resuming with the settings the run started with: hidden_units=(64, 64) "
            "(the default now: (4, 4))") in logs[0], logs[0][-2000:]
    assert "held-out NLL" in logs[0] and "worker done after 3 epochs" in logs[1], logs[1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["hparams"]["hidden_units"] == [64, 64]
    assert keras.models.load_model(out / "model.keras").count_params() == keras.models.load_model(
        started / "model.keras").count_params()
