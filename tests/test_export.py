"""Serving exports: TF Serving layout, batched signatures in every loader, bad requests,
version facts, the signature table, the CLI and the shipped example."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from _cli import exit_code
from _export_cases import (
    CASES,
    DIGITS,
    ENV,
    ROOT,
    SIGNATURE_NAMES,
    Export,
    compare,
    console_script,
    digest,
    randomize,
)

import tfp_nice as tn
from tfp_nice import cli, export, training
from tfp_nice import data as data_lib
from tfp_nice.export import signatures


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports")
    return {name: Export(name, tmp) for name in CASES}


@pytest.fixture(scope="module")
def digits(exports):
    return exports["nice_digits"]


def _meta(path):
    return json.loads((pathlib.Path(path) / "assets.extra" / export.METADATA_FILE).read_text())


# ---------------------------------------------------------------------------------------------
# Layout, versions, atomic writes.
# ---------------------------------------------------------------------------------------------
def test_export_writes_the_tf_serving_layout_with_auto_incremented_versions(
        background, digits, tmp_path):
    base = pathlib.Path(digits.path).parent
    assert pathlib.Path(digits.path).name == "1"
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests",
                 "assets.extra/tfp_nice_export.json"):
        assert (pathlib.Path(digits.path) / name).exists(), name
    assert [p.name for p in base.iterdir()] == ["1"]  # no temporary directory left behind
    meta = _meta(digits.path)
    assert meta["event_shape"] == [8, 8, 1] and meta["data_space"]["num_levels"] == 17
    assert meta["max_samples"] == export.DEFAULT_MAX_SAMPLES

    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    out = tmp_path / "m"
    assert export.save_for_serving(model, out, warmup=False).endswith(os.sep + "1")
    assert export.save_for_serving(model, out, warmup=False).endswith(os.sep + "2")
    assert export.save_for_serving(model, out, version=7, warmup=False).endswith(os.sep + "7")
    assert export.next_version(out) == 8
    before = digest(out)
    with pytest.raises(export.ExportError, match=r"Version 2 already exists.*never overwritten"):
        export.save_for_serving(model, out, version=2)
    assert digest(out) == before


def test_versions_are_bounded_by_int32(tmp_path):
    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    for bad in (0, -3, 2**31, 10**20, True, 1.5):
        with pytest.raises(export.ExportError, match=r"`version` must be an int in \[1, "
                           r"2147483647\]") as info:
            export.save_for_serving(model, tmp_path / "v", version=bad, warmup=False)
        assert info.value.argument == "version"
    assert not (tmp_path / "v").exists()
    path = export.save_for_serving(model, tmp_path / "v", version=2**31 - 1, warmup=False)
    assert path.endswith(str(2**31 - 1))
    with pytest.raises(export.ExportError, match=r"`version` must be <= 2147483647"):
        export.save_for_serving(model, tmp_path / "v", warmup=False)  # next would be 2**31
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [str(2**31 - 1)]


def test_export_to_a_bad_destination_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(export.ExportError, match="exists and is not a directory"):
        export.save_for_serving(model, blocker)
    with pytest.raises(OSError, match="Not a directory"):
        export.save_for_serving(model, blocker / "name")
    with pytest.raises(export.ExportError, match="`model` must be a tfp_nice.FlowModel"):
        export.save_for_serving(keras.Sequential([keras.layers.Dense(1)]), tmp_path / "k")
    stale = tmp_path / "existing" / ".export.tmp-999999999-deadbeef"
    stale.mkdir(parents=True)  # left behind by a killed export (no such process)
    (tmp_path / "existing" / "1").mkdir()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.save_for_serving(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # the base it created is gone again
    with pytest.raises(OSError, match="No space left"):
        export.save_for_serving(model, tmp_path / "existing")
    # no half-written version 2, and the stale temporary directory was cleaned up
    assert [p.name for p in (tmp_path / "existing").iterdir()] == ["1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "file"]


# ---------------------------------------------------------------------------------------------
# The signatures agree with the Keras model in every loader.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_tf2_loaded_signatures_match_the_keras_model(exports, name):
    e = exports[name]
    assert set(e.loaded.signatures) == SIGNATURE_NAMES
    want = e.expected()
    for signature, feeds in e.requests().items():
        fn = e.loaded.signatures[signature]
        got = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()})
               .items()}
        compare(got, want, signature)
    sample = e.loaded.signatures["sample"]
    cond = {k: tf.constant(v) for k, v in e.condition(2, [1, 1]).items()}
    first = sample(seed=tf.constant([[7, 8], [7, 9]]), temperature=tf.constant([0.7, 0.7]),
                   **cond)
    again = sample(seed=tf.constant([[7, 8], [7, 9]]), temperature=tf.constant([0.7, 0.7]),
                   **cond)
    for key in first:  # the same seed gives the same samples, bit for bit
        np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
    x = first["x"].numpy()
    assert not np.array_equal(x[0], x[1])  # another seed, another sample


def test_integer_levels_log_prob_is_the_held_out_estimator_and_decode_inverts_encode(digits):
    sig = digits.loaded.signatures
    x = digits.x
    out = sig["log_prob"](x=tf.constant(x))
    noisy = tn.preprocessing.dequantize(x, 0, event_ndims=3).numpy()
    assert np.all(noisy >= x) and np.all(noisy < x + 1) and not np.allclose(noisy, x + 0.5)
    np.testing.assert_allclose(out["log_prob"], digits.model.log_prob(noisy), rtol=1e-5)
    np.testing.assert_allclose(out["bits_per_dim"],
                               tn.preprocessing.bits_per_dim(-out["log_prob"].numpy(), 64),
                               rtol=1e-6)
    z = sig["encode"](x=tf.constant(x))["z"]
    np.testing.assert_array_equal(sig["decode"](z=z)["x"], x)
    s = sig["sample"](seed=tf.constant(np.stack([np.arange(50), np.ones(50)], 1), tf.int32),
                      temperature=tf.ones([50]))["x"].numpy()
    assert s.min() >= 0 and s.max() <= 16 and np.array_equal(s, np.round(s))
    assert sig["sample"](seed=tf.zeros([0, 2], tf.int32),
                         temperature=tf.zeros([0]))["x"].shape == (0, 8, 8, 1)
    assert sig["log_prob"](x=tf.zeros([0, 8, 8, 1]))["log_prob"].shape == (0,)


def test_served_bits_per_dim_equals_the_training_metric_on_the_digits_test_split(digits):
    test = data_lib.load("digits").test
    spec = data_lib.DataSpec("digits", (8, 8, 1), num_levels=17, low=0.0, high=16.0)
    _, trained_bpd = training.evaluate_nll(digits.model, test, spec)
    served = digits.loaded.signatures["log_prob"](x=tf.constant(test))["bits_per_dim"].numpy()
    assert abs(served.mean() - trained_bpd) < 1e-4  # the same estimator (target: 0.01)
    # Any batching gives the same rows (the noise is a function of the row).
    halves = [digits.loaded.signatures["log_prob"](x=tf.constant(h))["bits_per_dim"].numpy()
              for h in np.array_split(test[::-1], 2)]
    np.testing.assert_allclose(np.concatenate(halves)[::-1], served, rtol=1e-6)


def test_tf1_session_loader_runs_every_signature(exports):
    """The loader TF Serving uses (a TF1 session over the MetaGraph), all exports."""
    for e in exports.values():
        want, requests = e.expected(), e.requests()
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            meta_graph = tf.compat.v1.saved_model.load(sess, ["serve"], e.path)
            assert SIGNATURE_NAMES <= set(meta_graph.signature_def)
            for signature, feeds in requests.items():
                sig = meta_graph.signature_def[signature]
                got = sess.run({k: t.name for k, t in sig.outputs.items()},
                               {sig.inputs[k].name: v for k, v in feeds.items()})
                compare(got, want, signature)
            sig = meta_graph.signature_def["serving_default"]
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be finite"):
                sess.run(sig.outputs["log_prob"].name,
                         {sig.inputs["x"].name: np.full_like(e.x, np.nan),
                          **{sig.inputs[k].name: v for k, v in e.condition(len(e.x)).items()}})


def test_multi_scale_image_model_exports_with_batch_norm_in_inference_mode(tmp_path):
    from tfp_nice.presets import RealNVPImage

    model = randomize(RealNVPImage([4, 4, 1], num_scales=1, num_blocks=1, filters=2,
                                   data_scale=17.0, logit_alpha=0.05))
    rng = np.random.default_rng(5)
    for v in model.non_trainable_variables:  # BatchNorm moving statistics: not the identity
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))
    path = export.save_for_serving(model, tmp_path / "img", data={**DIGITS,
                                   "event_shape": [4, 4, 1]}, warmup=False)
    sig = tf.saved_model.load(path).signatures
    x = rng.integers(0, 17, [3, 4, 4, 1]).astype("float32")
    noisy = tn.preprocessing.dequantize(x, 0, event_ndims=3)
    np.testing.assert_allclose(sig["log_prob"](x=tf.constant(x))["log_prob"],
                               model.log_prob(noisy), rtol=1e-5)
    s = sig["sample"](seed=tf.constant([[4, 5]]), temperature=tf.constant([0.7]))
    np.testing.assert_allclose(s["x_continuous"],
                               model.sample(1, seed=tf.constant([4, 5]), temperature=0.7),
                               rtol=1e-5, atol=1e-5)
    z = sig["encode"](x=tf.constant(x))["z"]
    np.testing.assert_array_equal(sig["decode"](z=z)["x"], x)


# ---------------------------------------------------------------------------------------------
# Bad requests fail inside the graph with a clear InvalidArgumentError.
# ---------------------------------------------------------------------------------------------
def _sample_args(seed=((1, 2),), temperature=(1.0,)):
    return dict(seed=tf.constant(seed, tf.int32), temperature=tf.constant(temperature,
                                                                          tf.float32))


BAD_REQUESTS = [
    ("log_prob", lambda: dict(x=tf.zeros([2, 64])), r"`x` must have shape \[batch, 8, 8, 1\]"),
    ("log_prob", lambda: dict(x=tf.zeros([8, 8, 1])), r"`x` must have shape \[batch, 8, 8, 1\]"),
    ("log_prob", lambda: dict(x=tf.zeros([1, 8, 8, 2])), r"Received shape:\] \[1 8 8 2\]"),
    ("log_prob", lambda: dict(x=tf.fill([2, 8, 8, 1], np.nan)), r"`x` must be finite"),
    ("encode", lambda: dict(x=tf.fill([2, 8, 8, 1], np.inf)), r"`x` must be finite"),
    ("log_prob", lambda: dict(x=tf.fill([1, 8, 8, 1], 0.25)), r"must hold integer levels"),
    ("log_prob", lambda: dict(x=tf.fill([1, 8, 8, 1], 17.0)),
     r"integer levels in \[0, 16\].*\[17\] \[17\]"),
    ("log_prob", lambda: dict(x=tf.fill([1, 8, 8, 1], -1.0)), r"integer levels in \[0, 16\]"),
    ("decode", lambda: dict(z=tf.zeros([2, 8, 8, 1])), r"`z` must have shape \[batch, 64\]"),
    ("decode", lambda: dict(z=tf.fill([2, 64], np.nan)), r"`z` must be finite"),
    ("sample", lambda: _sample_args(seed=[1, 2], temperature=[1.0]),
     r"`seed` must have shape \[batch, 2\]"),
    ("sample", lambda: _sample_args(seed=[[1, 2, 3]]), r"`seed` must have shape \[batch, 2\]"),
    ("sample", lambda: _sample_args(temperature=1.0), r"`temperature` must have shape \[batch\]"),
    ("sample", lambda: _sample_args(temperature=[1.0, 1.0]),
     r"`seed`, `temperature` must have the same number of rows.*\[1 2\]"),
    ("sample", lambda: _sample_args(temperature=[0.0]),
     r"`temperature` must be in \(0, 10\] in every row"),
    ("sample", lambda: _sample_args(temperature=[-1.0]), r"`temperature` must be in \(0, 10\]"),
    ("sample", lambda: _sample_args(temperature=[10.001]), r"`temperature` must be in \(0, 10\]"),
    ("sample", lambda: _sample_args(temperature=[1e38]), r"`temperature` must be in \(0, 10\]"),
    ("sample", lambda: _sample_args(temperature=[np.nan]), r"`temperature` must be finite"),
    ("sample", lambda: _sample_args(temperature=[np.inf]), r"`temperature` must be finite"),
    ("sample", lambda: _sample_args(seed=np.ones([100_001, 2]), temperature=np.ones(100_001)),
     r"`seed` must have at most 100000 rows \(max_samples of this export\)"),
    ("log_prob", lambda: dict(x=tf.zeros([1, 8, 8, 1], tf.int32)),
     r"expected to be a float tensor but is a int32 tensor"),
]


@pytest.mark.parametrize("signature, feeds, message", BAD_REQUESTS,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(BAD_REQUESTS)])
def test_bad_requests_raise_a_clear_invalid_argument_error(digits, signature, feeds, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        digits.loaded.signatures[signature](**feeds())


def test_temperature_bounds_are_inclusive_of_ten_and_samples_stay_finite(digits):
    out = digits.loaded.signatures["sample"](**_sample_args(seed=[[1, 2], [3, 4]],
                                                            temperature=[10.0, 1e-6]))
    assert np.isfinite(out["x_continuous"].numpy()).all()
    assert export.MAX_TEMPERATURE == 10.0


def test_bounded_continuous_data_is_range_checked(exports):
    sig = exports["realnvp_image"].loaded.signatures["log_prob"]
    assert np.isfinite(sig(x=tf.fill([1, 4, 4, 1], 1.0))["log_prob"].numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values in \[0, 1\]"):
        sig(x=tf.fill([1, 4, 4, 1], 1.5))


def test_max_samples_caps_the_rows_of_a_sample_request(tmp_path):
    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    path = export.save_for_serving(model, tmp_path / "m", max_samples=10, warmup=False)
    sig = tf.saved_model.load(path).signatures["sample"]
    assert sig(**_sample_args(seed=np.ones([10, 2]), temperature=np.ones(10)))["x"].shape == (
        10, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`seed` must have at most 10 "):
        sig(**_sample_args(seed=np.ones([11, 2]), temperature=np.ones(11)))
    with pytest.raises(export.ExportError, match="max_samples"):
        export.save_for_serving(model, tmp_path / "m", max_samples=0)


# ---------------------------------------------------------------------------------------------
# One table drives the functions, the metadata and the docs; version facts.
# ---------------------------------------------------------------------------------------------
def test_signature_table_drives_the_saved_signatures_the_metadata_and_the_readme(exports):
    for e in exports.values():
        meta = _meta(e.path)
        for sig in signatures.TABLE:
            saved = e.loaded.signatures[sig.name]
            inputs = saved.structured_input_signature[1]
            assert {k: v.dtype.name for k, v in inputs.items()} == {
                p.name: p.dtype for p in sig.inputs} | (
                {"label": "int32"} if e.num_classes else {})
            outputs = {p.name for p in sig.outputs if e.discrete or not p.discrete_only}
            assert set(saved.structured_outputs) == outputs
            assert set(meta["signatures"][sig.name]["inputs"]) == set(inputs)
            assert set(meta["signatures"][sig.name]["outputs"]) == outputs
        assert meta["signatures"]["serving_default"] == "= log_prob"
    assert export.markdown_table() in (ROOT / "README.md").read_text()


def test_a_conditional_model_gets_its_condition_input_in_every_signature(tmp_path):
    """A model declaring ``serving_condition`` (issue #12) is one table entry: ``label``
    appears in every signature, is checked, and reaches ``conditional_bijector``."""
    import tensorflow_probability as tfp

    class Labelled(tn.FlowModel):
        serving_condition = "label"

        def conditional_bijector(self, label):  # x = f(z) + label
            shift = tf.cast(label, tf.float32)[:, None]
            return tfp.bijectors.Chain([tfp.bijectors.Shift(shift), self.bijector])

    model = Labelled(tn.priors.standard_normal([2]),
                     [tn.AffineCoupling(tn.MLPConditioner(2, (4,)), num_masked=1)])
    path = export.save_for_serving(model, tmp_path / "c")
    sig = tf.saved_model.load(path).signatures
    for name in SIGNATURE_NAMES:
        assert "label" in sig[name].structured_input_signature[1], name
    meta = _meta(path)
    assert meta["condition"] == {"input": "label", "dims": ["batch"]}
    assert all(meta["signatures"][s.name]["inputs"]["label"] == ["int32", ["batch"]]
               for s in signatures.TABLE)
    x = np.array([[0.3, -0.2], [0.3, -0.2]], np.float32)
    lp = sig["log_prob"](x=tf.constant(x), label=tf.constant([0, 2]))["log_prob"].numpy()
    np.testing.assert_allclose(lp, [model.log_prob(x[:1])[0], model.log_prob(x[:1] - 2)[0]],
                               rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`x`, `label` must have the same"):
        sig["log_prob"](x=tf.constant(x), label=tf.constant([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`label` must have shape \[batch\]"):
        sig["encode"](x=tf.constant(x), label=tf.constant([[0], [1]]))


def test_a_class_conditional_flow_serves_its_label_and_refuses_bad_labels_in_tf1(exports):
    """``tn.NSF(num_classes=3)``: every signature takes ``label`` (int32, one per row), the
    rows follow their label, and a label outside [0, 3) or of the wrong shape fails in the
    graph of the TF1 session loader (TF Serving's) with InvalidArgumentError."""
    e = exports["conditional"]
    meta = _meta(e.path)
    assert meta["condition"] == {"input": "label", "dims": ["batch"]}
    assert e.model.serving_condition == "label"
    x = e.x[:2]
    density = e.density_x(x)
    want = {c: e.model.log_prob(density, [c, c]).numpy() for c in range(3)}
    assert not np.allclose(want[0], want[1])  # the label matters
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta_graph = tf.compat.v1.saved_model.load(sess, ["serve"], e.path)
        for name in SIGNATURE_NAMES:
            assert meta_graph.signature_def[name].inputs["label"].dtype == tf.int32.as_datatype_enum
        sig = meta_graph.signature_def["serving_default"]

        def run(label):
            return sess.run(sig.outputs["log_prob"].name,
                            {sig.inputs["x"].name: x, sig.inputs["label"].name: label})

        for c in range(3):
            np.testing.assert_allclose(run(np.int32([c, c])), want[c], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(run(np.int32([2, 0])), [want[2][0], want[0][1]], rtol=1e-5,
                                   atol=1e-4)
        for bad, message in ((np.int32([0, 3]), r"`label` must hold integer class labels in "
                                                r"\[0, 3\)"),
                             (np.int32([-1, 0]), r"`label` must hold integer class labels"),
                             (np.int32([0]), r"`x`, `label` must have the same"),
                             (np.int32([[0], [1]]), r"`label` must have shape \[batch\]")):
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                run(bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`label` must hold integer"):
        e.loaded.signatures["sample"](seed=tf.constant([[1, 2]]), temperature=tf.ones([1]),
                                      label=tf.constant([7]))


def test_conditional_bijector_is_the_flow_at_fixed_labels():
    model = tn.RealNVP([3], num_couplings=2, hidden_units=(8,), num_classes=4)
    randomize(model)
    x = np.random.default_rng(0).normal(size=[5, 3]).astype("float32")
    labels = np.array([0, 3, 1, 2, 3])
    b = model.conditional_bijector(labels)
    z = b.inverse(x)
    np.testing.assert_allclose(z, model.encode(x, labels), rtol=1e-6)
    np.testing.assert_allclose(model.base_distribution.log_prob(z) + b.inverse_log_det_jacobian(x),
                               model.log_prob(x, labels), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.forward(z), x, atol=1e-5)
    with pytest.raises(ValueError, match=r"`label` must hold integer class labels in \[0, 4\)"):
        model.conditional_bijector([0, 4, 1, 1, 1]).inverse(x)
    assert model.conditional_bijector is not None and tn.RealNVP(
        [2], num_couplings=1, hidden_units=(4,), context_shape=[5]).serving_condition == (
        "context", 5)
    with pytest.raises(ValueError, match="needs a conditional flow"):
        tn.RealNVP([2], num_couplings=1, hidden_units=(4,)).conditional_bijector([0])


@pytest.mark.parametrize("name", list(CASES))
def test_export_metadata_holds_the_version_facts(exports, name):
    facts = _meta(exports[name].path)["version_facts"]
    assert facts["written_by_tensorflow"] == tf.__version__
    assert facts["ops"] == export.graph_ops(exports[name].path)
    assert {"MatMul", "StatelessRandomGetKeyCounter", "StatefulPartitionedCall"} <= set(
        facts["ops"])
    assert facts["unknown_ops"] == []  # every op the package emits is in the history table
    assert facts["oldest_tensorflow_serving"] == "2.15"
    assert facts["limited_by_ops"] == ["VarHandleOp.debug_name"]
    assert "within one TensorFlow version" in facts["reproducibility"]


def test_oldest_release_reports_unknown_ops_instead_of_guessing():
    assert export.oldest_release(["MatMul", "Conv2D"]) == {
        "release": "2.0", "newest_ops": ["Conv2D", "MatMul"], "unknown_ops": []}
    assert export.oldest_release(["MatMul", "DisableCopyOnRead"])["release"] == "2.11"
    out = export.oldest_release(["MatMul", "SomeFutureOp"])
    assert out["release"] is None and out["unknown_ops"] == ["SomeFutureOp"]


# ---------------------------------------------------------------------------------------------
# Subprocesses started once per module: a real training run, a fresh TF-only process and the
# saved_model_cli console script (found next to sys.executable first).
# ---------------------------------------------------------------------------------------------
FRESH_PROCESS = """
import json, os, sys
import numpy as np
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli  # the code behind `saved_model_cli run`

path, tmp = sys.argv[1], sys.argv[2]
d = np.load(os.path.join(tmp, "in.npz"))
# TF2 loader.
sig = tf.saved_model.load(path).signatures
out = {}
for k, v in sig["log_prob"](x=tf.constant(d["x"])).items(): out["log_prob/" + k] = v
for k, v in sig["sample"](seed=tf.constant(d["seed"]),
                          temperature=tf.constant(d["temperature"])).items():
    out["sample/" + k] = v
out["encode/z"] = sig["encode"](x=tf.constant(d["x"]))["z"]
for k, v in sig["decode"](z=tf.constant(d["z"])).items(): out["decode/" + k] = v
np.savez(os.path.join(tmp, "tf2.npz"), **{k: v.numpy() for k, v in out.items()})
# TF1 session loader, through saved_model_cli's run (one process for every signature).
npy = {k: os.path.join(tmp, k + ".npy") for k in ("x", "z", "seed", "temperature")}
inputs = {"serving_default": "x=" + npy["x"], "log_prob": "x=" + npy["x"],
          "encode": "x=" + npy["x"], "decode": "z=" + npy["z"],
          "sample": "seed=" + npy["seed"] + ";temperature=" + npy["temperature"]}
for name, files in inputs.items():
    feeds = saved_model_cli.load_inputs_from_input_arg_string(files, "", "")
    saved_model_cli.run_saved_model_with_feed_dict(path, "serve", name, feeds,
                                                   os.path.join(tmp, "cli", name), True)
try:
    feeds = saved_model_cli.load_inputs_from_input_arg_string(
        "", "seed=[[7,8]];temperature=[1e38]", "")
    saved_model_cli.run_saved_model_with_feed_dict(path, "serve", "sample", feeds, None, True)
    bad = "no error"
except tf.errors.InvalidArgumentError as e:
    bad = "InvalidArgumentError: " + e.message
print(json.dumps({"imported": {m: m in sys.modules for m in ("tensorflow_probability",
                                                              "tfp_nice")},
                  "bad_temperature": bad}))
"""


@pytest.fixture(scope="module")
def background(exports, tmp_path_factory):
    """Starts the subprocess checks, so they overlap the in-process tests.

    The first test of the module requests it, so a full run starts them at once.
    """
    digits = exports["nice_digits"]
    tmp = tmp_path_factory.mktemp("subprocess")
    feeds = {**digits.requests()["sample"], "x": digits.x,
             "z": digits.requests()["decode"]["z"]}
    np.savez(tmp / "in.npz", **feeds)
    for k, v in feeds.items():
        np.save(tmp / f"{k}.npy", v)
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    run_dir = tmp_path_factory.mktemp("runs") / "nice-digits"
    procs = {
        "train": subprocess.Popen(
            [sys.executable, "-m", "tfp_nice.cli", "train", "--data", "digits", "--out",
             str(run_dir), "--epochs", "1", "--hidden-units", "8", "--num-couplings", "2",
             "--batch-size", "512"], **popen),
        "fresh": subprocess.Popen([sys.executable, "-c", FRESH_PROCESS, digits.path, str(tmp)],
                                  cwd=tmp, **popen),
        "cli": subprocess.Popen(
            [console_script("saved_model_cli"), "run", "--dir", digits.path, "--tag_set",
             "serve", "--signature_def", "sample", "--inputs",
             f"seed={tmp / 'seed.npy'};temperature={tmp / 'temperature.npy'}",
             "--outdir", str(tmp / "real_cli")], **popen),
    }
    runs = Background(procs, tmp)
    runs.run_dir = run_dir
    yield runs
    for p in procs.values():
        if p.poll() is None:
            p.kill()


class Background:
    def __init__(self, procs, tmp):
        self.procs, self.tmp, self._done = procs, tmp, {}

    def stdout(self, name):
        """Waits for ``name`` and returns its stdout; fails with its output if it failed."""
        if name not in self._done:
            self._done[name] = self.procs[name].communicate(timeout=600)
        out, err = self._done[name]
        assert self.procs[name].returncode == 0, (out + err)[-3000:]
        return out

    def report(self):
        return json.loads(self.stdout("fresh").strip().splitlines()[-1])


def test_console_scripts_are_found_next_to_the_interpreter(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # as with a virtual environment not activated
    script = pathlib.Path(console_script("saved_model_cli"))
    assert script.parent == pathlib.Path(sys.executable).parent


def test_fresh_process_with_only_tensorflow_loads_and_runs_the_export(background, digits):
    report = background.report()
    assert report["imported"] == {"tensorflow_probability": False, "tfp_nice": False}
    out = np.load(background.tmp / "tf2.npz")
    want = digits.expected()
    assert len(out.files) == 7
    for key in out.files:
        signature, name = key.split("/")
        np.testing.assert_allclose(out[key], want[signature][name], rtol=1e-5, atol=1e-4,
                                   err_msg=key)


def test_saved_model_cli_runs_every_signature(background, digits):
    """``saved_model_cli run`` (the TF1 session loader TF Serving uses), every signature."""
    tmp = background.tmp
    report = background.report()
    want = digits.expected()
    for name in SIGNATURE_NAMES:
        got = {f.stem: np.load(f) for f in (tmp / "cli" / name).glob("*.npy")}
        compare(got, want, name)
    assert report["bad_temperature"].startswith("InvalidArgumentError")
    assert "`temperature` must be in (0, 10]" in report["bad_temperature"]
    background.stdout("cli")  # and the console script itself
    got = {f.stem: np.load(f) for f in (tmp / "real_cli").glob("*.npy")}
    compare(got, want, "sample")


# ---------------------------------------------------------------------------------------------
# The CLI: `tfp-nice train` writes saved_model/1/, `tfp-nice export` writes NAME/VERSION/.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(background):
    """A finished `tfp-nice train` run on the digits (trained in the background)."""
    background.stdout("train")
    return background.run_dir


def test_train_writes_the_serving_export_and_serves_its_test_bits_per_dim(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["saved_model"] == os.path.join("saved_model", "1")
    path = str(digits_run / "saved_model" / "1")
    meta = _meta(path)
    assert meta["data_space"]["num_levels"] == 17
    assert meta["metrics"]["test_bits_per_dim"] == metrics["test_bits_per_dim"]
    test = data_lib.load("digits").test
    served = tf.saved_model.load(path).signatures["log_prob"](x=tf.constant(test))
    assert abs(served["bits_per_dim"].numpy().mean() - metrics["test_bits_per_dim"]) < 0.01


def test_cli_export_writes_versions_and_refuses_to_overwrite(digits_run, tmp_path, capsys):
    out = tmp_path / "saved_models" / "digits"
    assert cli.main(["export", str(digits_run), "--out", str(out)]) == 0
    assert cli.main(["export", str(digits_run / "model.keras"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1", "2"]
    printed = capsys.readouterr().out
    assert f"--model_base_path={out}" in printed and "sample(seed, temperature)" in printed
    meta = _meta(out / "2")
    assert "test_bits_per_dim" in meta["metrics"]
    before = digest(out)
    assert cli.main(["export", str(digits_run), "--out", str(out), "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfp-nice: error: Version 1 already exists") and err.count("\n") == 1
    assert digest(out) == before
    assert exit_code(["export", digits_run, "--out", out, "--version", "1" + "0" * 20]) == 2
    err = capsys.readouterr().err  # argparse's usage, then one error line
    assert err.strip().splitlines()[-1] == (
        "tfp-nice: error: argument --version: expected an integer in [1, 2147483647], got "
        "'100000000000000000000'")
    assert digest(out) == before
    assert cli.main(["export", str(tmp_path / "missing")]) == 2
    assert "No model at" in capsys.readouterr().err


def test_cli_export_default_out_is_saved_models_run_name(digits_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", str(digits_run), "--version", "3", "--max-samples", "5"]) == 0
    meta = _meta(tmp_path / "saved_models/nice-digits/3")
    assert meta["max_samples"] == 5


# ---------------------------------------------------------------------------------------------
# Keras round trips: .keras files and Keras' own SavedModel export.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nice_digits", "generic"])  # RealNVP: see test_models.py
def test_keras_file_and_keras_export_round_trips(name, tmp_path):
    factory, _, make_x = CASES[name]
    model = factory()
    x = make_x(np.random.default_rng(2), 6) + (0.5 if name == "nice_digits" else 0.0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.log_prob(x), model.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(5, seed=(3, 4)), model.sample(5, seed=(3, 4)))
    np.testing.assert_array_equal(loaded.sample(5, seed=(3, 4), temperature=0.5),
                                  model.sample(5, seed=(3, 4), temperature=0.5))
    # Keras' SavedModel export (serve = call = per-example NLL); a FlowModel needs the
    # input signature spelled out.
    model.export(str(tmp_path / "keras_export"), format="tf_saved_model", verbose=False,
                 input_signature=[tf.TensorSpec([None, *model.event_shape], tf.float32)])
    served = tf.saved_model.load(str(tmp_path / "keras_export"))
    np.testing.assert_allclose(served.serve(tf.constant(x)), -model.log_prob(x), rtol=1e-5)
