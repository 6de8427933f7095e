"""tfp_nice.distributed in one process: cluster resolution, the chief, inputs, state, ``fit``.

Multi-worker runs with real processes are in ``test_distributed_multiworker.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import run_on_two_cpus

import tfp_nice as tn
from tfp_nice import distributed
from tfp_nice.distributed import inputs

tfb = tfp.bijectors
SLURM_2_NODES = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
                 "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
TF_CONFIG = json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                        "task": {"type": "worker", "index": 1}})


# --- cluster ------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, kind", [
    ({}, None),
    ({"TF_CONFIG": TF_CONFIG}, "tf_config"),
    (SLURM_2_NODES, "slurm"),
    ({**SLURM_2_NODES, "TF_CONFIG": TF_CONFIG}, "tf_config"),
    ({**SLURM_2_NODES, "SLURM_STEP_NUM_TASKS": "1"}, None),
    ({k: v for k, v in SLURM_2_NODES.items() if k != "SLURM_STEP_NODELIST"}, None),
])
def test_cluster_kind_prefers_tf_config_then_a_multi_task_slurm_step(env, kind):
    assert distributed.cluster_kind(env) == kind


def test_a_malformed_tf_config_is_refused_by_name():
    with pytest.raises(ValueError, match=r"`TF_CONFIG` must be a JSON object.*Received: "
                                         r"TF_CONFIG='\{oops'"):
        distributed.cluster_kind({"TF_CONFIG": "{oops"})


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SLURM_") or k in ("TF_CONFIG", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_resolve_cluster_reads_tf_config(clean_env):
    clean_env.setenv("TF_CONFIG", TF_CONFIG)
    r = distributed.resolve_cluster()
    assert isinstance(r, tf.distribute.cluster_resolver.TFConfigClusterResolver)
    assert (r.task_type, r.task_id) == ("worker", 1)
    assert r.cluster_spec().as_dict() == {"worker": ["a:1", "b:2"]}


def test_resolve_cluster_reads_a_cpu_slurm_step_without_gpus(clean_env):
    for k, v in SLURM_2_NODES.items():
        clean_env.setenv(k, v)
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    r = distributed.resolve_cluster(port_base=7000)
    assert r.cluster_spec().as_dict() == {"worker": ["node01:7000", "node02:7000"]}
    assert (r.task_type, r.task_id) == ("worker", 1)
    assert r.num_accelerators() == {}
    assert not distributed.is_chief(_FakeStrategy(r))


def test_resolve_cluster_gives_each_slurm_task_of_a_gpu_node_its_own_gpu(clean_env):
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[1,2]",
           "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "CUDA_VISIBLE_DEVICES": "0,1"}
    for k, v in env.items():
        clean_env.setenv(k, v)
    r = distributed.resolve_cluster()
    spec = r.cluster_spec().as_dict()
    assert isinstance(r, tf.distribute.cluster_resolver.SlurmClusterResolver)
    assert spec == {"worker": ["gpu1:8888", "gpu1:8889", "gpu2:8888", "gpu2:8889"]}
    assert (r.task_type, r.task_id) == ("worker", 3)
    assert r.num_accelerators() == {"GPU": 1} and os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_resolve_cluster_is_none_on_a_single_machine(clean_env):
    assert distributed.resolve_cluster() is None
    with pytest.raises(ValueError, match=r"`port_base` must be an int in \[1, 65535\]. "
                                         r"Received: port_base=0"):
        distributed.resolve_cluster(port_base=0)


class _FakeStrategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


def _resolver(jobs: dict, task_type: str, task_id: int):
    spec = tf.train.ClusterSpec({j: [f"h{j}{i}:1" for i in range(n)] for j, n in jobs.items()})
    return tf.distribute.cluster_resolver.SimpleClusterResolver(spec, task_type=task_type,
                                                                task_id=task_id)


@pytest.mark.parametrize("jobs, task, chief", [
    ({"worker": 2}, ("worker", 0), True),
    ({"worker": 2}, ("worker", 1), False),
    ({"chief": 1, "worker": 2}, ("chief", 0), True),
    ({"chief": 1, "worker": 2}, ("worker", 0), False),
    ({"worker": 1, "evaluator": 1}, ("evaluator", 0), False),
])
def test_is_chief_is_chief_0_else_worker_0(jobs, task, chief):
    strategy = _FakeStrategy(_resolver(jobs, *task))
    assert distributed.is_chief(strategy) is chief
    assert distributed.task_info(strategy) == task


def test_the_default_strategy_is_its_own_chief():
    strategy = distributed.make_strategy("none")
    assert strategy is tf.distribute.get_strategy()
    assert distributed.is_chief(strategy) and distributed.task_info(strategy) == (None, None)
    with pytest.raises(ValueError, match=r"`name` must be one of \['none', 'mirrored', "
                                         r"'multiworker'\]. Received: name='tpu'"):
        distributed.make_strategy("tpu")


def test_output_dir_is_the_path_on_the_chief_and_a_removed_temp_dir_elsewhere(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    with distributed.output_dir(tmp_path / "run") as d:
        open(os.path.join(d, "f"), "w").close()
    assert d == str(tmp_path / "run") and os.listdir(d) == ["f"]
    worker = _FakeStrategy(_resolver({"worker": 2}, "worker", 1))
    with pytest.raises(RuntimeError), distributed.output_dir(tmp_path / "run2", worker) as w:
        assert os.path.dirname(w) == str(tmp_path / "tmp") and "worker1" in w
        open(os.path.join(w, "f"), "w").close()
        raise RuntimeError("a failing job still removes its temporary directory")
    assert not os.path.exists(w) and not os.path.exists(tmp_path / "run2")
    assert os.listdir(tmp_path / "tmp") == []


# --- inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, replicas", [(7, 2), (7, 3), (1, 2), (64, 4)])
def test_replica_shares_partition_every_global_batch_in_order(n, replicas):
    batch = tf.data.Dataset.from_tensors(tf.range(n, dtype=tf.float32))
    got = [(s.numpy(), int(m)) for s, m in inputs.replica_shares(batch, replicas, 0, replicas)]
    assert [m for _, m in got] == [n] * replicas
    np.testing.assert_array_equal(np.concatenate([s for s, _ in got]), np.arange(n))
    assert max(len(s) for s, _ in got) - min(len(s) for s, _ in got) <= 1
    # A worker holding replicas 1.. gets exactly those shares.
    tail = [s.numpy() for s, _ in inputs.replica_shares(batch, replicas, 1, replicas - 1)]
    for a, (b, _) in zip(tail, got[1:]):
        np.testing.assert_array_equal(a, b)


def test_array_epochs_are_permuted_by_seed_and_epoch_alone():
    x = np.arange(20, dtype="float32")[:, None]

    def order(seed, epoch):
        ds = inputs.epoch_dataset(x, 8, True, seed, epoch)
        return np.concatenate([b.numpy()[:, 0] for b in ds])

    assert [len(b) for b in inputs.epoch_dataset(x, 8, True, 0, 0)] == [8, 8, 4]
    np.testing.assert_array_equal(order(0, 3), order(0, 3))
    assert sorted(order(0, 3)) == list(range(20))
    assert not np.array_equal(order(0, 3), order(0, 4))
    assert not np.array_equal(order(0, 3), order(1, 3))
    with pytest.raises(TypeError, match=r"`x` must be a NumPy array, a tensor or a "
                                        r"tf.data.Dataset.*Received: x of type dict"):
        inputs.epoch_dataset({"x": x}, 8, True, 0, 0)


# --- state --------------------------------------------------------------------------------------
def _model(lr: float = 1e-2, compile_: bool = True):
    keras.utils.set_random_seed(0)
    model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
    if compile_:
        model.compile(optimizer=keras.optimizers.Adam(lr))
    return model


def test_training_variables_are_the_model_and_optimizer_variables_in_a_fixed_order():
    model = _model()
    variables = distributed.training_variables(model)
    assert model.optimizer.built
    assert [v.path for v in variables] == [v.path for v in model.variables] + [
        v.path for v in model.optimizer.variables]
    # the optimizer's step counter is part of the state (its name depends on how many
    # optimizers this process made before: adam/iteration, adam_3/iteration, ...)
    assert any(v is model.optimizer.iterations for v in variables)
    with pytest.raises(ValueError, match=r"`model` must be compiled.*Received: "
                                         r"model.optimizer=None"):
        distributed.training_variables(_model(compile_=False))


def test_write_state_round_trips_and_names_a_mismatch():
    model, other = _model(), _model()
    values = [v + 1 for v in distributed.read_state(model)]
    distributed.write_state(other, values)
    for a, b in zip(distributed.read_state(other), values):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"`values` must hold one array per training variable "
                                         rf"\({len(values)}: .*Received: 1 arrays"):
        distributed.write_state(other, values[:1])
    bad = list(values)
    bad[0] = np.zeros([3, 3])
    with pytest.raises(ValueError, match=r"`values\[0\]` must have the shape of .*Received: "
                                         r"values\[0\].shape=\(3, 3\)"):
        distributed.write_state(other, bad)


def test_npz_checkpoint_keeps_the_newest_two_and_restores_the_newest(tmp_path):
    ckpt = distributed.NpzCheckpoint(tmp_path / "ckpt")
    assert ckpt.restore() is None
    for epoch in (1, 2, 3):
        ckpt.save(epoch, [np.full([2], epoch, "float32"), np.int64(10 * epoch)])
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["epoch-000002.npz", "epoch-000003.npz"]
    epoch, values = ckpt.restore()
    assert epoch == 3 and values[0].tolist() == [3.0, 3.0] and int(values[1]) == 30
    with pytest.raises(ValueError, match=r"`keep` must be a positive int. Received: keep=0"):
        distributed.NpzCheckpoint(tmp_path, keep=0)


def test_restore_from_chief_without_a_checkpoint_changes_nothing(tmp_path):
    model = _model()
    before = distributed.read_state(model)
    assert distributed.restore_from_chief(model, distributed.NpzCheckpoint(tmp_path)) is None
    for a, b in zip(before, distributed.read_state(model)):
        np.testing.assert_array_equal(a, b)


# --- fit ----------------------------------------------------------------------------------------
X = np.random.default_rng(0).normal(size=(300, 2)).astype("float32") * [1.0, 0.3]
X = X.astype("float32")


class _Recorder(keras.callbacks.Callback):
    """Every hook call with its logs; ``stop_at`` sets ``model.stop_training`` at that batch."""

    def __init__(self, stop_at: tuple[int, int] | None = None):
        super().__init__()
        self.calls, self.stop_at = [], stop_at
        for hook in ("train_begin", "train_end", "test_begin", "test_end"):
            setattr(self, f"on_{hook}", self._hook(hook, None))
        for hook in ("epoch_begin", "epoch_end", "train_batch_begin", "train_batch_end",
                     "test_batch_begin", "test_batch_end"):
            setattr(self, f"on_{hook}", self._hook(hook, 0))

    def _hook(self, name, with_index):
        def call(*args):
            index = args[0] if with_index is not None else None
            logs = args[-1] if args and isinstance(args[-1], dict) else {}
            self.calls.append((name, index, {k: float(v) for k, v in logs.items()}))
            if name == "train_batch_end" and self.stop_at and self.stop_at[1] == index and (
                    sum(c[0] == "epoch_begin" for c in self.calls) - 1 == self.stop_at[0]):
                self.model.stop_training = True

        return lambda *args, **kwargs: call(*args, *kwargs.values())


def _same_calls(a: list, b: list) -> None:
    assert [c[:2] for c in a] == [c[:2] for c in b]
    for (name, i, la), (_, _, lb) in zip(a, b):
        assert sorted(la) == sorted(lb), (name, i)
        for k in la:
            np.testing.assert_allclose(la[k], lb[k], rtol=2e-6, err_msg=f"{name} {i} {k}")


@pytest.mark.parametrize("stop_at", [None, (1, 2)])
def test_fit_makes_kerass_callback_calls_with_the_same_logs_and_weights(stop_at):
    runs = []
    for trainer in ("keras", "distributed"):
        model, rec = _model(), _Recorder(stop_at)
        kwargs = dict(batch_size=64, epochs=3, validation_data=X[:100], shuffle=False,
                      callbacks=[rec], verbose=0)
        if trainer == "keras":
            history = model.fit(X, **kwargs)
        else:
            history = distributed.fit(model, X, **kwargs)
        runs.append((rec.calls, history, model.get_weights()))
    (calls_k, hist_k, w_k), (calls_d, hist_d, w_d) = runs
    _same_calls(calls_d, calls_k)
    assert hist_d.epoch == hist_k.epoch == ([0, 1, 2] if stop_at is None else [0, 1])
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(hist_d.history[key], hist_k.history[key], rtol=2e-6)
    for a, b in zip(w_d, w_k):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_resumes_from_its_checkpoint_as_if_never_interrupted(tmp_path):
    ckpt = distributed.NpzCheckpoint(tmp_path / "ckpt")
    straight = _model()
    h_straight = distributed.fit(straight, X, batch_size=64, epochs=3, verbose=0, seed=5)
    first = _model()
    distributed.fit(first, X, batch_size=64, epochs=2, verbose=0, seed=5, checkpoint=ckpt)
    resumed = _model()  # a fresh process would build the same model
    h = distributed.fit(resumed, X, batch_size=64, epochs=3, verbose=0, seed=5, checkpoint=ckpt)
    assert h.epoch == [2] and ckpt.epochs() == [2, 3]
    np.testing.assert_allclose(h.history["loss"], h_straight.history["loss"][2:], rtol=1e-6)
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy())
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert distributed.fit(resumed, X, epochs=3, verbose=0, checkpoint=ckpt).epoch == []


def test_fit_honours_keras_backup_and_restore_after_a_crash(tmp_path):
    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("crash")

    backup = str(tmp_path / "backup")
    model = _model()
    with pytest.raises(RuntimeError, match="crash"):
        distributed.fit(model, X, batch_size=64, epochs=4, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()])
    again = _model()
    h = distributed.fit(again, X, batch_size=64, epochs=4, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert h.epoch == [2, 3]  # Keras' _initial_epoch, set by the callback, is honoured


def test_fit_initialises_act_norm_on_the_first_batch_like_flow_model_fit():
    def build():
        keras.utils.set_random_seed(0)
        m = tn.FlowModel(tn.priors.standard_normal([2]), [
            tn.ActNorm(channels=2, event_ndims=1),
            tn.AffineCoupling(tn.MLPConditioner(2, (8,)), num_masked=1)])
        m.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
        return m

    a, b = build(), build()
    h_a = a.fit(X + 5.0, batch_size=64, epochs=1, shuffle=False, verbose=0)
    h_b = distributed.fit(b, X + 5.0, batch_size=64, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(h_b.history["loss"], h_a.history["loss"], rtol=1e-5)
    assert b.steps[0].layer.is_initialized  # initialised from the first batch


def test_fit_takes_a_dataset_of_global_batches_with_initial_epoch():
    ds = tf.data.Dataset.from_tensor_slices((X, X)).batch(100)  # (x, y) pairs: x is used
    model = _model()
    h = distributed.fit(model, ds, epochs=3, initial_epoch=1, validation_data=ds, verbose=0)
    assert h.epoch == [1, 2] and int(model.optimizer.iterations.numpy()) == 6
    nll = float(np.mean(model(X)))
    np.testing.assert_allclose(h.history["val_loss"][-1], nll, rtol=1e-5)


def test_fit_xla_compiles_the_step_of_a_model_compiled_with_jit():
    histories = []
    for jit in (False, True):
        model = _model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit)
        histories.append(distributed.fit(model, X, batch_size=64, epochs=2,
                                         validation_data=X[:100], verbose=0).history)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-5)


def test_fit_refuses_an_uncompiled_model_and_one_built_outside_the_strategy():
    with pytest.raises(ValueError, match=r"`model` must be compiled.*Received: "
                                         r"model.optimizer=None"):
        distributed.fit(_model(compile_=False), X, verbose=0)
    with pytest.raises(ValueError, match=r"`epochs` must be an int >= 0. Received: epochs=-1"):
        distributed.fit(_model(), X, epochs=-1)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(ValueError, match=r"`model` must be created under `strategy.scope\(\)`.*"
                                         r"Received: variable .* outside MirroredStrategy"):
        distributed.fit(_model(), X, strategy=strategy, verbose=0)


_MIRRORED = textwrap.dedent(
    """
    import json
    import numpy as np, tensorflow as tf
    import keras
    import tfp_nice as tn
    from tfp_nice import distributed

    class Steps(keras.callbacks.Callback):
        def on_train_begin(self, logs=None): self.losses = []
        def on_train_batch_end(self, batch, logs=None): self.losses.append(logs["loss"])

    x = np.random.default_rng(0).normal(size=(230, 2)).astype("float32")
    out = {}
    for name in ("none", "mirrored"):
        strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "mirrored"
                    else distributed.make_strategy("none"))
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
        steps = Steps()
        h = distributed.fit(model, x, batch_size=33, epochs=2, validation_data=x[:50],
                            callbacks=[steps], verbose=0)
        out[name] = {"steps": steps.losses, "val": h.history["val_loss"],
                     "replicas": strategy.num_replicas_in_sync,
                     "w": [w.tolist() for w in model.get_weights()]}
    print(json.dumps(out))
    """
)


def test_fit_under_mirrored_strategy_on_two_cpus_logs_the_single_device_loss():
    """Batches of 33 split 16/17 across two replicas; the last (32) splits 16/16."""
    result = run_on_two_cpus(_MIRRORED)
    one, two = result["none"], result["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2) and len(two["steps"]) == 14
    np.testing.assert_allclose(two["steps"], one["steps"], rtol=1e-5)
    np.testing.assert_allclose(two["val"], one["val"], rtol=1e-5)
    for a, b in zip(two["w"], one["w"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
