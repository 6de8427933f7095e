"""Shared pieces of the export tests: tiny models, what every loader must return, and the
C++ loader that TF Serving links (``tensorflow::LoadSavedModel``), built where g++ exists."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from _cli import ENV, console_script, digest  # noqa: F401 - re-exported for the tests

import tfp_nice as tn
from tfp_nice import export, preprocessing

tfb = tfp.bijectors
ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = {"name": "digits", "event_shape": [8, 8, 1], "num_levels": 17, "low": 0.0,
          "high": 16.0}
SIGNATURE_NAMES = {"serving_default", "log_prob", "sample", "encode", "decode"}


# --- tiny models with random (non-identity) weights -------------------------------------------
def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(0.0, 0.2, v.shape).astype(v.dtype))
    return model


def nice_digits():
    return randomize(tn.NICE([8, 8, 1], hidden_units=(16,), data_scale=17.0))


def realnvp_image():
    return randomize(tn.RealNVP([4, 4, 1], num_couplings=2, hidden_units=(8,),
                                data_scale=1.0, logit_alpha=0.05))


def generic_flow():
    steps = [tn.AffineCoupling(tn.MLPConditioner(4, (8,)), num_masked=1), tfb.Permute([2, 0, 1]),
             tn.AdditiveCoupling(tn.MLPConditioner(1, (8,)), num_masked=2), tfb.Shift(0.5)]
    return randomize(tn.FlowModel(tn.priors.standard_normal([3]), steps))


def glow():
    """A tiny Glow (ActNorm initialised from data, every weight then moved off its start)."""
    model = tn.Glow([8, 8, 1], num_levels=2, num_steps=2, filters=8, data_scale=17.0,
                    logit_alpha=0.05)
    rng = np.random.default_rng(4)
    model.initialize_from_data(rng.integers(0, 17, [64, 8, 8, 1]).astype("float32") + 0.5)
    for v in model.trainable_variables:
        v.assign(v.numpy() + 0.05 * rng.standard_normal(v.shape).astype(v.dtype))
    return model


def conditional_nsf():
    """A class-conditional spline flow (labels in the couplings and the prior): every
    signature takes a ``label`` input."""
    return randomize(tn.NSF([8, 8, 1], num_couplings=2, hidden_units=(8,), num_bins=4,
                            data_scale=17.0, logit_alpha=0.05, num_classes=3), seed=3)


# name -> (factory, data spec, raw-input generator)
CASES = {
    "nice_digits": (nice_digits, DIGITS,
                    lambda rng, n: rng.integers(0, 17, [n, 8, 8, 1]).astype("float32")),
    "realnvp_image": (realnvp_image, {"name": "img", "event_shape": [4, 4, 1],
                                      "num_levels": None, "low": 0.0, "high": 1.0},
                      lambda rng, n: rng.uniform(0, 1, [n, 4, 4, 1]).astype("float32")),
    "glow": (glow, DIGITS, lambda rng, n: rng.integers(0, 17, [n, 8, 8, 1]).astype("float32")),
    "generic": (generic_flow, None, lambda rng, n: rng.normal(0, 1, [n, 3]).astype("float32")),
    "conditional": (conditional_nsf, DIGITS,
                    lambda rng, n: rng.integers(0, 17, [n, 8, 8, 1]).astype("float32")),
}

SEEDS = np.array([[7, 8], [7, 9], [1, 2]], np.int32)
TEMPERATURES = np.array([0.7, 1.0, 0.3], np.float32)


class Export:
    """One exported case: the Keras model, its export and the standard requests."""

    def __init__(self, name, tmp):
        factory, self.data, self.make_x = CASES[name]
        self.model = factory()
        self.path = export.save_for_serving(self.model, tmp / name, data=self.data)
        self.discrete = bool(self.data and self.data["num_levels"])
        self.x = self.make_x(np.random.default_rng(1), 5)
        self.event_ndims = len(self.model.event_shape)
        self.num_classes = self.model.num_classes
        self.labels = (None if self.num_classes is None else
                       np.array([0, 2, 1, 2, 0], np.int32)[: len(self.x)])
        self._loaded = None

    def condition(self, n: int, labels=None) -> dict:
        """The ``label`` feed of ``n`` rows for a class-conditional export (``{}`` if not)."""
        if self.num_classes is None:
            return {}
        labels = self.labels if labels is None else labels
        return {"label": np.resize(np.asarray(labels, np.int32), n)}

    def _labels(self, n, labels=None):
        return self.condition(n, labels).get("label")

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = tf.saved_model.load(self.path)
        return self._loaded

    def density_x(self, x):
        """Where log_prob evaluates the model: the held-out estimator's dequantized values."""
        if not self.discrete:
            return x
        return preprocessing.dequantize(x, preprocessing.DEQUANTIZATION_SEED,
                                        self.event_ndims).numpy()

    def expected(self, x=None, seeds=SEEDS, temperatures=TEMPERATURES):
        """What every loader must return for the standard requests, from the Keras model."""
        m, x = self.model, self.x if x is None else x
        c, cs = self._labels(len(x)), self._labels(len(seeds))
        lp = m.log_prob(self.density_x(x), c).numpy()
        rows = [m.sample(1, seed=tf.constant(s), temperature=float(t),
                         context=None if cs is None else cs[i : i + 1]).numpy()[0]
                for i, (s, t) in enumerate(zip(seeds, temperatures))]
        z = m.encode(x + 0.5 if self.discrete else x, c).numpy()
        return {
            "log_prob": {"log_prob": lp, "bits_per_dim": -lp / (x[0].size * np.log(2))},
            "sample": self._from_model(np.stack(rows)),
            "encode": {"z": z},
            "decode": self._from_model(m.decode(z, c).numpy()),
        }

    def _from_model(self, y):
        if not self.discrete:
            return {"x": y}
        return {"x": np.clip(np.floor(y), 0, 16), "x_continuous": y}

    def requests(self, x=None, seeds=SEEDS, temperatures=TEMPERATURES):
        x = self.x if x is None else x
        c, cs = self.condition(len(x)), self.condition(len(seeds))
        z = self.model.encode(x + 0.5 if self.discrete else x, c.get("label")).numpy()
        return {
            "serving_default": {"x": x, **c},
            "log_prob": {"x": x, **c},
            "sample": {"seed": seeds, "temperature": temperatures, **cs},
            "encode": {"x": x, **c},
            "decode": {"z": z, **c},
        }


def compare(got: dict, want: dict, signature: str, exact=False):
    want = want["log_prob" if signature == "serving_default" else signature]
    assert set(got) == set(want), (signature, sorted(got), sorted(want))
    for key, value in want.items():
        if exact:
            np.testing.assert_array_equal(got[key], value, err_msg=f"{signature}/{key}")
        else:
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-4,
                                       err_msg=f"{signature}/{key}")


# --- the C++ loader TF Serving links ----------------------------------------------------------
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

def start_cpp_build(tmp_dir):
    """Starts compiling the C++ runner in the background (about 15 s); ``None`` without g++.

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
    src = pathlib.Path(tmp_dir) / "run_signature.cc"
    src.write_text(CPP_RUNNER)
    tmp_binary = src.with_suffix("")
    # Compile to a private name, then rename: concurrent test runs never see half a binary.
    cmd = (f"g++ -O0 {src} -o {tmp_binary} {' '.join(flags)} && "
           f"mv -f {tmp_binary} {binary}")
    proc = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, binary


def cpp_binary(build):
    """The built runner (waits for the compile); fails with the compiler's output."""
    proc, binary = build
    if proc is not None and proc.returncode is None:
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, log[-3000:]
    return binary


def run_cpp(binary, path, tmp, requests):
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
