"""Request batching, emulated: TF Serving's ``--enable_batching`` concatenates the inputs of
concurrent requests along dimension 0 and splits the outputs. For every signature, two
requests run separately and concatenated must give the same rows, in the C++ loader TF
Serving links (and the TF1 session loader); the warm-up file holds batched requests."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from _export_cases import (
    CASES,
    SIGNATURE_NAMES,
    Export,
    compare,
    cpp_binary,
    run_cpp,
    start_cpp_build,
)

from tfp_nice import export
from tfp_nice.export import warmup

LOADERS = ["cpp", "tf1_session"]


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory):
    return start_cpp_build(tmp_path_factory.mktemp("cpp"))


@pytest.fixture(scope="module")
def exports(cpp_build, tmp_path_factory):  # starts the C++ build first, so both overlap
    tmp = tmp_path_factory.mktemp("exports")
    return {name: Export(name, tmp) for name in CASES}


def _run(loader, cpp_build, path, tmp, requests):
    """``[(signature, feeds)]`` through one loader: a dict of outputs or an error string each."""
    if loader == "cpp":
        if cpp_build is None:
            pytest.skip("g++ is not installed")
        return run_cpp(cpp_binary(cpp_build), path, tmp, requests)
    out = []
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta_graph = tf.compat.v1.saved_model.load(sess, ["serve"], path)
        for signature, feeds in requests:
            sig = meta_graph.signature_def[signature]
            try:
                out.append(sess.run({k: t.name for k, t in sig.outputs.items()},
                                    {sig.inputs[k].name: v for k, v in feeds.items()}))
            except tf.errors.InvalidArgumentError as e:
                out.append("INVALID_ARGUMENT: " + e.message)
    return out


def _split(feeds: dict, at: int):
    return ({k: np.asarray(v)[:at] for k, v in feeds.items()},
            {k: np.asarray(v)[at:] for k, v in feeds.items()})


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", list(CASES))
def test_two_requests_merged_give_the_same_rows_as_run_separately(
        loader, name, exports, cpp_build, tmp_path):
    e = exports[name]
    requests = []
    for signature, feeds in e.requests().items():
        first, second = _split(feeds, 2)
        requests += [(signature, first), (signature, second), (signature, feeds)]
    results = _run(loader, cpp_build, e.path, tmp_path, requests)
    want = e.expected()
    for i in range(0, len(requests), 3):
        signature = requests[i][0]
        first, second, merged = results[i : i + 3]
        assert all(isinstance(r, dict) for r in (first, second, merged)), (first, second)
        compare(merged, want, signature)  # and the model's answer
        rows = {k: np.concatenate([first[k], second[k]]) for k in merged}
        assert set(rows) == set(merged)
        for key in merged:
            np.testing.assert_allclose(rows[key], merged[key], rtol=1e-6, atol=1e-6,
                                       err_msg=f"{loader} {signature}/{key}")
            if key == "x" and e.discrete:  # integer levels: exactly the same
                np.testing.assert_array_equal(rows[key], merged[key])


def test_cpp_loader_of_tf_serving_runs_every_signature_and_rejects_bad_requests(
        cpp_build, exports, tmp_path):
    digits = exports["nice_digits"]
    good = [(s, {k: np.asarray(v) for k, v in f.items()}) for s, f in digits.requests().items()]
    bad = [
        ("serving_default", {"x": digits.x.astype(np.int32)}),
        ("serving_default", {"x": digits.x.reshape(5, 64)}),
        ("sample", {"seed": np.ones([100_001, 2], np.int32),
                    "temperature": np.ones(100_001, np.float32)}),
        ("sample", {"seed": np.ones([1, 2], np.int32), "temperature": np.float32([1e38])}),
        ("sample", {"seed": np.int32([1, 2]), "temperature": np.float32(1)}),
        ("encode", {"x": np.full_like(digits.x, np.nan)}),
    ]
    results = _run("cpp", cpp_build, digits.path, tmp_path, good + bad)
    want = digits.expected()
    for (signature, _), got in zip(good, results):
        assert isinstance(got, dict), got
        compare(got, want, signature)
    errors = results[len(good):]
    assert all(e.startswith("INVALID_ARGUMENT") for e in errors), errors
    assert "to be float but int32 is provided" in errors[0]  # the signature's dtype
    assert "must have shape [batch, 8, 8, 1]" in errors[1]
    assert "`seed` must have at most 100000 rows" in errors[2]
    assert "`temperature` must be in (0, 10]" in errors[3]
    assert "`seed` must have shape [batch, 2]" in errors[4]
    assert "`x` must be finite" in errors[5]


def _warmup_requests(path):
    prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    records = tf.data.TFRecordDataset(os.path.join(path, "assets.extra", export.WARMUP_FILE))
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request
            for r in records]


@pytest.mark.parametrize("name", list(CASES))
def test_warmup_file_holds_batched_requests_for_every_signature(exports, name, cpp_build,
                                                                tmp_path):
    e = exports[name]
    requests = _warmup_requests(e.path)
    assert sorted((r.model_spec.signature_name, rows) for r in requests
                  for rows in [tf.make_ndarray(next(iter(r.inputs.values()))).shape[0]]) == \
        sorted((s, rows) for s in SIGNATURE_NAMES for rows in warmup.WARMUP_ROWS)
    feeds = []
    for r in requests:
        assert r.model_spec.name == name
        arrays = {k: tf.make_ndarray(v) for k, v in r.inputs.items()}
        assert {a.shape[0] for a in arrays.values()} == {len(next(iter(arrays.values())))}
        assert all(a.ndim >= 1 for a in arrays.values())  # batched: no scalar inputs
        feeds.append((r.model_spec.signature_name, arrays))
    # TF Serving replays them through its C++ session before it serves the version.
    for got in _run("cpp", cpp_build, e.path, tmp_path, feeds):
        assert isinstance(got, dict), got
        assert all(np.isfinite(v).all() for v in got.values())


def test_hand_encoded_warmup_records_equal_the_serving_api_protos():
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    feeds = {"seed": np.zeros([2, 2], np.int32), "temperature": np.ones([2], np.float32),
             "x": np.zeros([1, 8, 8, 1], np.float32)}
    with_package = export.warmup_requests("m", {"sample": feeds})[0]
    by_hand = warmup.encode_prediction_log(
        "m", "sample", {k: tf.make_tensor_proto(v) for k, v in feeds.items()})
    assert (apis.PredictionLog.FromString(by_hand)
            == apis.PredictionLog.FromString(with_package))
