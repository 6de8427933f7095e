"""Serving exports: TF Serving layout, signatures in every loader, warm-up, bad requests."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_nice as tn
from tfp_nice import cli, export

tfb = tfp.bijectors
ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
DIGITS = {"name": "digits", "event_shape": [8, 8, 1], "num_levels": 17, "low": 0.0,
          "high": 16.0}
SIGNATURE_NAMES = {"serving_default", "log_prob", "sample", "encode", "decode"}


# ---------------------------------------------------------------------------------------------
# Tiny models with random (non-identity) weights, exported once per module.
# ---------------------------------------------------------------------------------------------
def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(0.0, 0.2, v.shape).astype(v.dtype))
    return model


def _nice_digits():
    return _randomize(tn.NICE([8, 8, 1], hidden_units=(16,), data_scale=17.0))


def _realnvp_image():
    return _randomize(tn.RealNVP([4, 4, 1], num_couplings=2, hidden_units=(8,),
                                 data_scale=1.0, logit_alpha=0.05))


def _generic_flow():
    steps = [tn.AffineCoupling(tn.MLPConditioner(4, (8,)), num_masked=1), tfb.Permute([2, 0, 1]),
             tn.AdditiveCoupling(tn.MLPConditioner(1, (8,)), num_masked=2), tfb.Shift(0.5)]
    return _randomize(tn.FlowModel(tn.priors.standard_normal([3]), steps))


# name -> (factory, data spec, raw-input generator)
CASES = {
    "nice_digits": (_nice_digits, DIGITS,
                    lambda rng, n: rng.integers(0, 17, [n, 8, 8, 1]).astype("float32")),
    "realnvp_image": (_realnvp_image, {"name": "img", "event_shape": [4, 4, 1],
                                       "num_levels": None, "low": 0.0, "high": 1.0},
                      lambda rng, n: rng.uniform(0, 1, [n, 4, 4, 1]).astype("float32")),
    "generic": (_generic_flow, None, lambda rng, n: rng.normal(0, 1, [n, 3]).astype("float32")),
}


class Export:
    def __init__(self, name, tmp):
        factory, self.data, self.make_x = CASES[name]
        self.model = factory()
        self.path = export.save_for_serving(self.model, tmp / name, data=self.data)
        self.discrete = bool(self.data and self.data["num_levels"])
        self.x = self.make_x(np.random.default_rng(1), 5)
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = tf.saved_model.load(self.path)
        return self._loaded

    def model_x(self, x):
        return x + 0.5 if self.discrete else x

    def expected(self):
        """What every loader must return for the standard requests, from the Keras model."""
        m, x = self.model, self.x
        lp = m.log_prob(self.model_x(x)).numpy()
        y = m.sample(3, seed=tf.constant([7, 8]), temperature=0.7).numpy()
        z = m.encode(self.model_x(x)).numpy()
        return {
            "log_prob": {"log_prob": lp, "bits_per_dim": -lp / (x[0].size * np.log(2))},
            "sample": self._from_model(y),
            "encode": {"z": z},
            # (not m.decode: FlowModel.decode checks z against the data event shape)
            "decode": self._from_model(m.bijector.forward(z).numpy()),
        }

    def _from_model(self, y):
        if not self.discrete:
            return {"x": y}
        return {"x": np.clip(np.floor(y), 0, 16), "x_continuous": y}

    def requests(self):
        z = self.model.encode(self.model_x(self.x)).numpy()
        return {
            "serving_default": {"x": self.x},
            "log_prob": {"x": self.x},
            "sample": {"n": np.int32(3), "seed": np.array([7, 8], np.int32),
                       "temperature": np.float32(0.7)},
            "encode": {"x": self.x},
            "decode": {"z": z},
        }


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports")
    return {name: Export(name, tmp) for name in CASES}


@pytest.fixture(scope="module")
def digits(exports):
    return exports["nice_digits"]


def _compare(got: dict, want: dict, signature: str, exact_sample=False):
    want = want["log_prob" if signature == "serving_default" else signature]
    assert set(got) == set(want), signature
    for key, value in want.items():
        if exact_sample:
            np.testing.assert_array_equal(got[key], value, err_msg=f"{signature}/{key}")
        else:
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-4,
                                       err_msg=f"{signature}/{key}")


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
    meta = json.loads((pathlib.Path(digits.path) / "assets.extra/tfp_nice_export.json")
                      .read_text())
    assert meta["event_shape"] == [8, 8, 1] and meta["data_space"]["num_levels"] == 17
    assert meta["max_samples"] == export.DEFAULT_MAX_SAMPLES

    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    out = tmp_path / "m"
    assert export.save_for_serving(model, out, warmup=False).endswith(os.sep + "1")
    assert export.save_for_serving(model, out, warmup=False).endswith(os.sep + "2")
    assert export.save_for_serving(model, out, version=7, warmup=False).endswith(os.sep + "7")
    assert export.next_version(out) == 8
    before = _digest(out)
    with pytest.raises(export.ExportError, match=r"Version 2 already exists.*never overwritten"):
        export.save_for_serving(model, out, version=2)
    assert _digest(out) == before


def test_export_to_a_bad_destination_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(export.ExportError, match="exists and is not a directory"):
        export.save_for_serving(model, blocker)
    with pytest.raises(OSError, match="Not a directory"):
        export.save_for_serving(model, blocker / "name")
    with pytest.raises(export.ExportError, match=r"`version` must be a positive int.*0"):
        export.save_for_serving(model, tmp_path / "v", version=0)
    with pytest.raises(export.ExportError, match="`model` must be a tfp_nice.FlowModel"):
        export.save_for_serving(keras.Sequential([keras.layers.Dense(1)]), tmp_path / "k")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.save_for_serving(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # the base it created is gone again
    existing = tmp_path / "existing"
    (existing / "1").mkdir(parents=True)
    with pytest.raises(OSError, match="No space left"):
        export.save_for_serving(model, existing)
    assert [p.name for p in existing.iterdir()] == ["1"]  # no half-written version 2
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
        _compare(got, want, signature)
    again = e.loaded.signatures["sample"](n=tf.constant(3), seed=tf.constant([7, 8]),
                                          temperature=tf.constant(0.7))
    first = e.loaded.signatures["sample"](n=tf.constant(3), seed=tf.constant([7, 8]),
                                          temperature=tf.constant(0.7))
    for key in first:  # the same seed gives the same samples, bit for bit
        np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
    other = e.loaded.signatures["sample"](n=tf.constant(3), seed=tf.constant([7, 9]),
                                          temperature=tf.constant(0.7))
    assert not np.array_equal(other["x"].numpy(), first["x"].numpy())


def test_integer_levels_map_to_bin_centres_and_decode_inverts_encode(digits):
    sig = digits.loaded.signatures
    x = digits.x
    out = sig["log_prob"](x=tf.constant(x))
    np.testing.assert_allclose(out["log_prob"], digits.model.log_prob(x + 0.5), rtol=1e-5)
    np.testing.assert_allclose(out["bits_per_dim"], -out["log_prob"] / (64 * np.log(2)),
                               rtol=1e-6)
    z = sig["encode"](x=tf.constant(x))["z"]
    np.testing.assert_array_equal(sig["decode"](z=z)["x"], x)
    s = sig["sample"](n=tf.constant(50), seed=tf.constant([1, 2]),
                      temperature=tf.constant(1.0))["x"].numpy()
    assert s.min() >= 0 and s.max() <= 16 and np.array_equal(s, np.round(s))
    assert sig["sample"](n=tf.constant(0), seed=tf.constant([1, 2]),
                         temperature=tf.constant(1.0))["x"].shape == (0, 8, 8, 1)
    assert sig["log_prob"](x=tf.zeros([0, 8, 8, 1]))["log_prob"].shape == (0,)


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
                _compare(got, want, signature)
            sig = meta_graph.signature_def["serving_default"]
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be finite"):
                sess.run(sig.outputs["log_prob"].name,
                         {sig.inputs["x"].name: np.full_like(e.x, np.nan)})


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
for k, v in sig["sample"](n=tf.constant(3), seed=tf.constant([7, 8]),
                          temperature=tf.constant(0.7)).items(): out["sample/" + k] = v
out["encode/z"] = sig["encode"](x=tf.constant(d["x"]))["z"]
for k, v in sig["decode"](z=tf.constant(d["z"])).items(): out["decode/" + k] = v
np.savez(os.path.join(tmp, "tf2.npz"), **{k: v.numpy() for k, v in out.items()})
# TF1 session loader, through saved_model_cli's run (one process for every signature).
x_npy, z_npy = os.path.join(tmp, "x.npy"), os.path.join(tmp, "z.npy")
inputs = {"serving_default": ("x=" + x_npy, ""), "log_prob": ("x=" + x_npy, ""),
          "encode": ("x=" + x_npy, ""), "decode": ("z=" + z_npy, ""),
          "sample": ("", "n=3;seed=[7,8];temperature=0.7")}
for name, (files, exprs) in inputs.items():
    feeds = saved_model_cli.load_inputs_from_input_arg_string(files, exprs, "")
    saved_model_cli.run_saved_model_with_feed_dict(path, "serve", name, feeds,
                                                   os.path.join(tmp, "cli", name), True)
try:
    feeds = saved_model_cli.load_inputs_from_input_arg_string(
        "", "n=-1;seed=[7,8];temperature=0.7", "")
    saved_model_cli.run_saved_model_with_feed_dict(path, "serve", "sample", feeds, None, True)
    bad_n = "no error"
except tf.errors.InvalidArgumentError as e:
    bad_n = "InvalidArgumentError: " + e.message
print(json.dumps({"imported": {m: m in sys.modules for m in ("tensorflow_probability",
                                                              "tfp_nice")},
                  "bad_n": bad_n}))
"""


@pytest.fixture(scope="module")
def background(cpp_build, exports, tmp_path_factory):
    """Starts the subprocess checks (and the C++ build), so they overlap the in-process tests.

    The first test of the module requests it, so a full run starts them at once.
    """
    digits = exports["nice_digits"]
    tmp = tmp_path_factory.mktemp("subprocess")
    z = digits.requests()["decode"]["z"]
    np.savez(tmp / "in.npz", x=digits.x, z=z)
    np.save(tmp / "x.npy", digits.x)
    np.save(tmp / "z.npy", z)
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
            ["saved_model_cli", "run", "--dir", digits.path, "--tag_set", "serve",
             "--signature_def", "sample", "--input_exprs", "n=3;seed=[7,8];temperature=0.7",
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


def test_fresh_process_with_only_tensorflow_loads_and_runs_the_export(background, digits):
    tmp = background.tmp
    report = background.report()
    assert report["imported"] == {"tensorflow_probability": False, "tfp_nice": False}
    out = np.load(tmp / "tf2.npz")
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
        _compare(got, want, name)
    assert report["bad_n"].startswith("InvalidArgumentError")
    assert "`n` must be in [0, 100000]" in report["bad_n"]
    background.stdout("cli")  # and the console script itself
    got = {f.stem: np.load(f) for f in (tmp / "real_cli").glob("*.npy")}
    _compare(got, want, "sample")


# ---------------------------------------------------------------------------------------------
# The C++ loader TF Serving links (tensorflow::LoadSavedModel), when g++ is present.
# ---------------------------------------------------------------------------------------------
CPP_RUNNER = r"""
// Loads a SavedModel as TF Serving does (LoadSavedModel, tag "serve") and runs requests.
// usage: run_signature DIR OUT_DIR REQUEST...
//   REQUEST = SIGNATURE[;NAME:float|int32:D0,D1,...:FILE]...  (raw little-endian values)
// prints "OUTPUT i KEY D0 D1 ..." (values in OUT_DIR/i_KEY.bin) or "ERROR i STATUS" per request
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  tensorflow::SavedModelBundle bundle;
  auto status = tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(),
                                           argv[1], {"serve"}, &bundle);
  if (!status.ok()) { std::cout << "LOAD_ERROR " << status.ToString() << "\n"; return 3; }
  for (int r = 3; r < argc; ++r) {
    std::stringstream request(argv[r]);
    std::string signature, feed;
    std::getline(request, signature, ';');
    const auto& sig = bundle.meta_graph_def.signature_def().at(signature);
    std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
    while (std::getline(request, feed, ';')) {
      std::stringstream arg(feed);
      std::string name, dtype, dims, path, d;
      std::getline(arg, name, ':'); std::getline(arg, dtype, ':');
      std::getline(arg, dims, ':'); std::getline(arg, path);
      tensorflow::TensorShape shape;
      std::stringstream ds(dims);
      while (std::getline(ds, d, ',')) shape.AddDim(std::stoll(d));
      tensorflow::Tensor t(dtype == "int32" ? tensorflow::DT_INT32 : tensorflow::DT_FLOAT, shape);
      std::ifstream in(path, std::ios::binary);
      std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
      std::memcpy(const_cast<char*>(t.tensor_data().data()), bytes.data(),
                  std::min(bytes.size(), t.tensor_data().size()));
      feeds.emplace_back(sig.inputs().at(name).name(), t);
    }
    std::vector<std::string> keys, fetches;
    for (const auto& kv : sig.outputs()) {
      keys.push_back(kv.first);
      fetches.push_back(kv.second.name());
    }
    std::vector<tensorflow::Tensor> outputs;
    status = bundle.session->Run(feeds, fetches, {}, &outputs);
    if (!status.ok()) {
      std::string message = status.ToString();
      for (char& c : message) if (c == '\n') c = ' ';
      std::cout << "ERROR " << r - 3 << " " << message << "\n";
      continue;
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      std::string file = std::string(argv[2]) + "/" + std::to_string(r - 3) + "_" + keys[i];
      std::ofstream out(file + ".bin", std::ios::binary);
      out.write(outputs[i].tensor_data().data(), outputs[i].tensor_data().size());
      std::cout << "OUTPUT " << r - 3 << " " << keys[i];
      for (int k = 0; k < outputs[i].dims(); ++k) std::cout << " " << outputs[i].dim_size(k);
      std::cout << "\n";
    }
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory):
    """Starts compiling the C++ runner in the background (about 15 s), so tests overlap it.

    The binary is cached in the temp dir under a hash of its source and the TF build, so
    later runs on the same machine skip the compile. Returns ``(process or None, binary)``.
    """
    if shutil.which("g++") is None:
        return None
    lib = tf.sysconfig.get_lib()
    flags = [*tf.sysconfig.get_compile_flags(), f"-L{lib}", "-Wl,--no-as-needed",
             "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{lib}"]
    key = hashlib.sha256("\n".join([CPP_RUNNER, tf.__version__, *flags]).encode()).hexdigest()
    binary = pathlib.Path(tempfile.gettempdir()) / f"tfp_nice_run_signature_{key[:16]}"
    if binary.exists():
        return None, binary
    src = tmp_path_factory.mktemp("cpp") / "run_signature.cc"
    src.write_text(CPP_RUNNER)
    tmp_binary = src.with_suffix("")
    # Compile to a private name, then rename: concurrent test runs never see half a binary.
    cmd = (f"g++ -O0 {src} -o {tmp_binary} {' '.join(flags)} && "
           f"mv -f {tmp_binary} {binary}")
    proc = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, binary


def _run_cpp(binary, path, tmp, requests):
    """Runs ``[(signature, feeds), ...]`` in one C++ process; a dict of outputs or an error
    string per request."""
    args = []
    for i, (signature, feeds) in enumerate(requests):
        arg = [signature]
        for name, value in feeds.items():
            value = np.asarray(value)
            f = tmp / f"{i}-{name}.bin"
            f.write_bytes(value.tobytes())
            dtype = "int32" if value.dtype == np.int32 else "float"
            arg.append(f"{name}:{dtype}:{','.join(map(str, value.shape))}:{f}")
        args.append(";".join(arg))
    proc = subprocess.run([str(binary), path, str(tmp), *args], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = [{} for _ in requests]
    for line in proc.stdout.splitlines():
        kind, i, rest = (line.split(" ", 2) + [""])[:3]
        if kind == "ERROR":
            results[int(i)] = rest
        elif kind == "OUTPUT":
            key, *shape = rest.split()
            results[int(i)][key] = np.fromfile(tmp / f"{i}_{key}.bin", np.float32).reshape(
                [int(s) for s in shape])
    return results


def test_cpp_loader_of_tf_serving_runs_every_signature_and_rejects_bad_requests(
        cpp_build, digits, tmp_path):
    if cpp_build is None:
        pytest.skip("g++ is not installed")
    proc, binary = cpp_build
    if proc is not None:
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, log[-3000:]
    good = [(s, {k: np.asarray(v) for k, v in f.items()}) for s, f in digits.requests().items()]
    bad = [
        ("serving_default", {"x": digits.x.astype(np.int32)}),
        ("serving_default", {"x": digits.x.reshape(5, 64)}),
        ("sample", {"n": np.int32(10**6), "seed": np.array([1, 2], np.int32),
                    "temperature": np.float32(1)}),
        ("encode", {"x": np.full_like(digits.x, np.nan)}),
    ]
    results = _run_cpp(binary, digits.path, tmp_path, good + bad)
    want = digits.expected()
    for (signature, _), got in zip(good, results):
        assert isinstance(got, dict), got
        _compare(got, want, signature)
    errors = results[len(good):]
    assert all(e.startswith("INVALID_ARGUMENT") for e in errors), errors
    assert "to be float but int32 is provided" in errors[0]  # the signature's dtype
    assert "must have shape [batch, 8, 8, 1]" in errors[1]
    assert "`n` must be in [0, 100000]" in errors[2]
    assert "`x` must be finite" in errors[3]


def test_multi_scale_image_model_exports_with_batch_norm_in_inference_mode(tmp_path):
    from tfp_nice.models import RealNVPImage

    model = _randomize(RealNVPImage([4, 4, 1], num_scales=1, num_blocks=1, filters=2,
                                    data_scale=17.0, logit_alpha=0.05))
    rng = np.random.default_rng(5)
    for v in model.non_trainable_variables:  # BatchNorm moving statistics: not the identity
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))
    path = export.save_for_serving(model, tmp_path / "img", data={**DIGITS,
                                   "event_shape": [4, 4, 1]}, warmup=False)
    sig = tf.saved_model.load(path).signatures
    x = rng.integers(0, 17, [3, 4, 4, 1]).astype("float32")
    np.testing.assert_allclose(sig["log_prob"](x=tf.constant(x))["log_prob"],
                               model.log_prob(x + 0.5), rtol=1e-5)
    s = sig["sample"](**_sample_args(n=2, seed=(4, 5), temperature=0.7))["x_continuous"]
    np.testing.assert_allclose(s, model.sample(2, seed=tf.constant([4, 5]), temperature=0.7),
                               rtol=1e-5, atol=1e-5)
    z = sig["encode"](x=tf.constant(x))["z"]
    np.testing.assert_array_equal(sig["decode"](z=z)["x"], x)


# ---------------------------------------------------------------------------------------------
# Bad requests fail inside the graph with a clear InvalidArgumentError.
# ---------------------------------------------------------------------------------------------
def _sample_args(n=3, seed=(1, 2), temperature=1.0):
    return dict(n=tf.constant(n, tf.int32), seed=tf.constant(seed, tf.int32),
                temperature=tf.constant(temperature, tf.float32))


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
    ("sample", lambda: _sample_args(n=-1), r"`n` must be in \[0, 100000\].*\[-1\]"),
    ("sample", lambda: _sample_args(n=100_001), r"`n` must be in \[0, 100000\]"),
    ("sample", lambda: _sample_args(n=2**31 - 1), r"`n` must be in \[0, 100000\]"),
    ("sample", lambda: _sample_args(n=[2, 3]), r"`n` must be a scalar"),
    ("sample", lambda: _sample_args(seed=[1, 2, 3]), r"`seed` must be 2 int32 values"),
    ("sample", lambda: _sample_args(temperature=0.0), r"`temperature` must be a positive"),
    ("sample", lambda: _sample_args(temperature=np.nan), r"`temperature` must be a positive"),
    ("log_prob", lambda: dict(x=tf.zeros([1, 8, 8, 1], tf.int32)),
     r"expected to be a float tensor but is a int32 tensor"),
]


@pytest.mark.parametrize("signature, feeds, message", BAD_REQUESTS,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(BAD_REQUESTS)])
def test_bad_requests_raise_a_clear_invalid_argument_error(digits, signature, feeds, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        digits.loaded.signatures[signature](**feeds())


def test_bounded_continuous_data_is_range_checked(exports):
    sig = exports["realnvp_image"].loaded.signatures["log_prob"]
    assert np.isfinite(sig(x=tf.fill([1, 4, 4, 1], 1.0))["log_prob"].numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values in \[0, 1\]"):
        sig(x=tf.fill([1, 4, 4, 1], 1.5))


def test_max_samples_is_configurable(tmp_path):
    model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    path = export.save_for_serving(model, tmp_path / "m", max_samples=10, warmup=False)
    sig = tf.saved_model.load(path).signatures["sample"]
    assert sig(**_sample_args(n=10))["x"].shape == (10, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`n` must be in \[0, 10\]"):
        sig(**_sample_args(n=11))
    with pytest.raises(export.ExportError, match="max_samples"):
        export.save_for_serving(model, tmp_path / "m", max_samples=0)


# ---------------------------------------------------------------------------------------------
# Warm-up requests.
# ---------------------------------------------------------------------------------------------
def test_warmup_file_holds_one_valid_prediction_log_per_signature(digits):
    prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    path = os.path.join(digits.path, "assets.extra", export.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]
    requests = [log.predict_log.request for log in logs]
    assert sorted(r.model_spec.signature_name for r in requests) == sorted(SIGNATURE_NAMES)
    for r in requests:
        assert r.model_spec.name == "nice_digits"
        fn = digits.loaded.signatures[r.model_spec.signature_name]
        out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in r.inputs.items()})
        assert all(np.isfinite(v.numpy()).all() for v in out.values())


def test_hand_encoded_warmup_records_equal_the_serving_api_protos():
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    feeds = {"n": np.array(1, np.int32), "seed": np.array([0, 0], np.int32),
             "x": np.zeros([1, 8, 8, 1], np.float32)}
    with_package = export.warmup_requests("m", {"sample": feeds})[0]
    by_hand = export._encode_prediction_log(
        "m", "sample", {k: tf.make_tensor_proto(v) for k, v in feeds.items()})
    assert (apis.PredictionLog.FromString(by_hand)
            == apis.PredictionLog.FromString(with_package))


# ---------------------------------------------------------------------------------------------
# The CLI: `tfp-nice train` writes saved_model/1/, `tfp-nice export` writes NAME/VERSION/.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(background):
    """A finished `tfp-nice train` run on the digits (trained in the background)."""
    background.stdout("train")
    return background.run_dir


def test_train_writes_the_serving_export_too(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["saved_model"] == os.path.join("saved_model", "1")
    path = str(digits_run / "saved_model" / "1")
    meta = json.loads((digits_run / "saved_model/1/assets.extra/tfp_nice_export.json")
                      .read_text())
    assert meta["data_space"]["num_levels"] == 17
    assert meta["metrics"]["test_bits_per_dim"] == metrics["test_bits_per_dim"]
    model = keras.models.load_model(digits_run / "model.keras")
    x = np.random.default_rng(3).integers(0, 17, [4, 8, 8, 1]).astype("float32")
    got = tf.saved_model.load(path).signatures["log_prob"](x=tf.constant(x))["log_prob"]
    np.testing.assert_allclose(got, model.log_prob(x + 0.5), rtol=1e-5)


def test_cli_export_writes_versions_and_refuses_to_overwrite(digits_run, tmp_path, capsys):
    out = tmp_path / "saved_models" / "digits"
    assert cli.main(["export", str(digits_run), "--out", str(out)]) == 0
    assert cli.main(["export", str(digits_run / "model.keras"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1", "2"]
    assert f"--model_base_path={out}" in capsys.readouterr().out
    meta = json.loads((out / "2/assets.extra/tfp_nice_export.json").read_text())
    assert "test_bits_per_dim" in meta["metrics"]
    before = _digest(out)
    assert cli.main(["export", str(digits_run), "--out", str(out), "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfp-nice: error: Version 1 already exists") and err.count("\n") == 1
    assert _digest(out) == before
    assert cli.main(["export", str(tmp_path / "missing")]) == 2
    assert "No model at" in capsys.readouterr().err


def test_cli_export_default_out_is_saved_models_run_name(digits_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", str(digits_run), "--version", "3", "--max-samples", "5"]) == 0
    meta = json.loads((tmp_path / "saved_models/nice-digits/3/assets.extra/"
                       "tfp_nice_export.json").read_text())
    assert meta["max_samples"] == 5


# ---------------------------------------------------------------------------------------------
# The committed example export and the serving client example.
# ---------------------------------------------------------------------------------------------
EXAMPLE = ROOT / "saved_models" / "nice_digits"


def test_committed_example_export_loads_and_scores_held_out_digits():
    if not EXAMPLE.is_dir():
        pytest.skip("saved_models/nice_digits is not in this checkout")
    version = max((p for p in EXAMPLE.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    size = sum(f.stat().st_size for f in version.rglob("*") if f.is_file())
    assert size <= 2 * 1024 * 1024
    sig = tf.saved_model.load(str(version)).signatures
    assert set(sig) == SIGNATURE_NAMES
    meta = json.loads((version / "assets.extra" / export.METADATA_FILE).read_text())
    from tfp_nice import data as data_lib

    test = data_lib.load("digits").test
    bpd = sig["log_prob"](x=tf.constant(test))["bits_per_dim"].numpy()
    assert np.isfinite(bpd).all()
    # Bin centres vs random dequantization: close to the held-out figure of metrics.json.
    assert abs(bpd.mean() - meta["metrics"]["test_bits_per_dim"]) < 0.3
    assert bpd.mean() < np.log2(17)  # better than uniform over the 17 levels
    x = sig["sample"](**_sample_args(n=4))["x"].numpy()
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0 and x.max() <= 16


def test_serving_client_example_runs_against_the_local_export(digits, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("serving_client",
                                                  ROOT / "examples" / "serving_client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    body = client.sample_body(4, (1, 2), 0.7)
    assert body == {"signature_name": "sample",
                    "inputs": {"n": 4, "seed": [1, 2], "temperature": 0.7}}
    json.dumps(client.log_prob_body(digits.x))  # JSON-serialisable as is
    result = client.main([str(pathlib.Path(digits.path).parent), "--seed", "7", "8"])
    x = np.asarray(result["samples"]["x"], np.float32)
    assert x.shape == (4, 8, 8, 1)
    want = digits.loaded.signatures["log_prob"](x=tf.constant(x))["log_prob"].numpy()
    np.testing.assert_allclose([s["log_prob"] for s in result["scores"]], want, rtol=1e-6)
    assert "POST :predict" in capsys.readouterr().out


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


def _digest(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out
