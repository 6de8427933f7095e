"""The server setup shipped beside the example: ``saved_models/models.config`` and
``saved_models/batching_parameters.txt`` (parsed with TF Serving's protos), the docker command
of the README, the committed export, and the REST and gRPC client example."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from tfp_nice import data as data_lib
from tfp_nice import export

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "saved_models"
EXAMPLE = MODELS / "nice_digits"


def _batching_parameters_message():
    """TF Serving's ``BatchingParameters`` (session_bundle_config.proto, fields 1-7).

    ``tensorflow-serving-api`` ships the API and config protos but not this server-side one,
    so it is rebuilt here from its definition: same package, names, numbers and types.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    msg = fdp.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name in enumerate(("max_batch_size", "batch_timeout_micros",
                                   "max_enqueued_batches", "num_batch_threads"), start=1):
        msg.field.add(name=name, number=number, type=field.TYPE_MESSAGE,
                      type_name=".google.protobuf.Int64Value", label=field.LABEL_OPTIONAL)
    msg.field.add(name="thread_pool_name", number=5, type=field.TYPE_MESSAGE,
                  type_name=".google.protobuf.StringValue", label=field.LABEL_OPTIONAL)
    msg.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64,
                  label=field.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL,
                  label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def _versions():
    return sorted(int(p.name) for p in EXAMPLE.iterdir() if p.name.isdigit())


def _example_meta():
    version = EXAMPLE / str(_versions()[-1])
    return json.loads((version / "assets.extra" / export.METADATA_FILE).read_text())


def _serve_it_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Serve it"): readme.index("## Benchmarks")]


def test_models_config_parses_and_pins_the_shipped_version():
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((MODELS / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "nice_digits" and model.model_platform == "tensorflow"
    assert model.base_path == "/models/nice_digits"  # saved_models/ mounted at /models
    assert (MODELS / model.base_path.removeprefix("/models/")).is_dir()
    assert list(model.model_version_policy.specific.versions) == _versions()  # the shipped one
    assert dict(model.version_labels) == {"stable": _versions()[-1]}


def test_batching_parameters_parse_and_fit_the_example():
    params = text_format.Parse((MODELS / "batching_parameters.txt").read_text(),
                               _batching_parameters_message()())
    assert 64 <= params.max_batch_size.value <= _example_meta()["max_samples"]
    assert 0 < params.batch_timeout_micros.value <= 10_000
    assert params.num_batch_threads.value >= 1 and params.max_enqueued_batches.value >= 1
    sizes = list(params.allowed_batch_sizes)
    assert not sizes or (sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value)


def test_readme_docker_command_serves_both_files_with_a_recent_enough_server():
    section = _serve_it_section()
    command = section[section.index("docker run"): section.index("```", section.index(
        "docker run"))]
    for flag in ("--model_config_file=/models/models.config", "--enable_batching=true",
                 "--batching_parameters_file=/models/batching_parameters.txt",
                 '-v "$PWD/saved_models:/models"'):
        assert flag in command, flag
    tag = re.search(r"tensorflow/serving:(\d+)\.(\d+)", command)
    oldest = _example_meta()["version_facts"]["oldest_tensorflow_serving"]
    assert (int(tag[1]), int(tag[2])) >= tuple(int(p) for p in oldest.split("."))


def test_committed_example_is_batched_small_and_serves_its_test_bits_per_dim():
    assert len(_versions()) == 1  # the old version was removed
    version = EXAMPLE / str(_versions()[-1])
    size = sum(f.stat().st_size for f in version.rglob("*") if f.is_file())
    assert size <= 2 * 1024 * 1024
    meta = _example_meta()
    assert meta["format"] == "tfp_nice serving export 2"
    assert meta["version_facts"]["unknown_ops"] == []
    sig = tf.saved_model.load(str(version)).signatures
    for name in export.SIGNATURES:
        specs = meta["signatures"]["log_prob" if name == "serving_default" else name]["inputs"]
        assert set(sig[name].structured_input_signature[1]) == set(specs)
        assert all(dims[0] == "batch" for _, dims in specs.values()), name  # no scalars
    test = data_lib.load("digits").test
    bpd = sig["log_prob"](x=tf.constant(test))["bits_per_dim"].numpy()
    assert abs(bpd.mean() - meta["metrics"]["test_bits_per_dim"]) < 0.01
    assert bpd.mean() < np.log2(17)  # better than uniform over the 17 levels
    x = sig["sample"](seed=tf.constant([[1, 2], [1, 3]]), temperature=tf.constant([0.7, 0.7]))
    assert x["x"].shape == (2, 8, 8, 1) and x["x"].numpy().min() >= 0


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("serving_client",
                                                  ROOT / "examples" / "serving_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_client_builds_batched_rest_and_grpc_requests(client):
    rows = client.sample_rows(3, (1, 2), 0.7)
    body = client.rest_body("sample", rows)
    assert body["signature_name"] == "sample"
    assert body["instances"] == [{"seed": [1, 2], "temperature": pytest.approx(0.7)},
                                 {"seed": [1, 3], "temperature": pytest.approx(0.7)},
                                 {"seed": [1, 4], "temperature": pytest.approx(0.7)}]
    json.dumps(body)  # JSON-serialisable as is
    request = client.grpc_request("nice_digits", "sample", rows)
    assert request.model_spec.name == "nice_digits"
    assert tf.make_ndarray(request.inputs["seed"]).shape == (3, 2)
    assert tf.make_ndarray(request.inputs["temperature"]).dtype == np.float32


def test_serving_client_runs_rest_and_grpc_against_the_shipped_export(client, capsys):
    result = client.main([str(EXAMPLE), "-n", "4", "--seed", "7", "8"])
    x = result["samples"]["x"]
    assert x.shape == (4, 8, 8, 1)
    sig = tf.saved_model.load(str(EXAMPLE / str(_versions()[-1]))).signatures
    want = sig["sample"](seed=tf.constant([[7, 8], [7, 9], [7, 10], [7, 11]]),
                         temperature=tf.fill([4], 0.7))["x"].numpy()
    np.testing.assert_array_equal(x, want)  # each row from its own seed
    lp = sig["log_prob"](x=tf.constant(x))["log_prob"].numpy()
    np.testing.assert_allclose(result["scores"]["log_prob"], lp, rtol=1e-6)
    out = capsys.readouterr().out
    assert "POST :predict" in out and "gRPC Predict log_prob" in out


def test_serving_bench_merges_requests_and_reports_the_ratio(tmp_path):
    """``bench/serving.py --quick`` on the shipped example: merged rows equal separate ones
    (the script checks), a ratio per signature, no files written."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "serving.py"), "--quick",
                           "--models", "example", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| example | `")]
    assert [r.split("|")[2].strip() for r in rows] == ["`log_prob`", "`sample`", "`encode`",
                                                       "`decode`"]
    assert all(float(r.split("**")[1].rstrip("×")) > 1 for r in rows)
    assert list(tmp_path.iterdir()) == []
