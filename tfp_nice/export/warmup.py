"""Warm-up records: batched requests TF Serving replays when it loads a version.

TF Serving reads ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
``tensorflow.serving.PredictionLog`` protos) and runs each request before it marks the
version available, so the first real request does not pay for graph initialisation. The
records hold valid requests of :data:`WARMUP_ROWS` rows for every signature, built from the
signature table (so they are batched like real traffic and pass the in-graph checks).

Example:
  >>> import numpy as np
  >>> records = warmup_requests("m", [("encode", {"x": np.zeros([2, 3], np.float32)})])
  >>> len(records)
  1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf

from tfp_nice.export.signatures import TABLE, Layout, Port
from tfp_nice.export.space import DataSpace

__all__ = ["WARMUP_FILE", "WARMUP_ROWS", "encode_prediction_log", "warmup_inputs",
           "warmup_requests", "write_warmup"]

WARMUP_FILE = "tf_serving_warmup_requests"
#: The batch sizes of the warm-up requests (each signature, each size).
WARMUP_ROWS = (1, 8)


def _feed(port: Port, layout: Layout, space: DataSpace, rows: int) -> np.ndarray:
    shape = [rows, *layout.dims(port)[1:]]
    if port.name == "seed":
        return np.stack([np.arange(rows), np.zeros(rows)], axis=1).astype(np.int32)
    if port.name == "temperature":
        return np.ones(shape, np.float32)
    fill = space.low if port.name == "x" and space.low is not None else 0
    return np.full(shape, fill, np.dtype(port.dtype))


def warmup_inputs(layout: Layout, space: DataSpace, rows: Iterable[int] = WARMUP_ROWS
                  ) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``[(signature, {input: array}), ...]``: one valid request per signature and size."""
    out = []
    for sig in TABLE:
        for name in (*sig.aliases, sig.name):
            for n in rows:
                out.append((name, {p.name: _feed(p, layout, space, n)
                                   for p in layout.inputs(sig)}))
    return out


def warmup_requests(model_name: str, inputs) -> list[bytes]:
    """Serialised ``PredictionLog`` records (one ``PredictRequest`` each).

    ``inputs`` is ``[(signature, feeds), ...]`` or a ``{signature: feeds}`` mapping. Uses the
    ``tensorflow-serving-api`` package (``pip install tfp_nice[serving]``) when it is
    installed; otherwise writes the same protobuf bytes by hand (:func:`encode_prediction_log`),
    so exports never need the package.
    """
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        prediction_log_pb2 = None
    records = []
    for signature, feeds in items:
        tensors = {k: tf.make_tensor_proto(v) for k, v in feeds.items()}
        if prediction_log_pb2 is None:
            records.append(encode_prediction_log(model_name, signature, tensors))
            continue
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for k, t in tensors.items():
            request.inputs[k].CopyFrom(t)
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def write_warmup(path: str, model_name: str, inputs) -> None:
    """Writes the records of ``inputs`` (see :func:`warmup_requests`) to ``path``."""
    with tf.io.TFRecordWriter(path) as writer:
        for record in warmup_requests(model_name, inputs):
            writer.write(record)


def encode_prediction_log(model_name: str, signature: str, tensors: Mapping) -> bytes:
    """``PredictionLog{predict_log: PredictLog{request: PredictRequest{...}}}`` wire bytes.

    Field numbers (tensorflow_serving/apis/*.proto): PredictionLog.predict_log = 6,
    PredictLog.request = 1, PredictRequest.model_spec = 1, PredictRequest.inputs = 2
    (map<string, TensorProto>: entries of key = 1, value = 2), ModelSpec.name = 1,
    ModelSpec.signature_name = 3.
    """
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    request = _field(1, spec)
    for key, tensor in tensors.items():
        request += _field(2, _field(1, key.encode()) + _field(2, tensor.SerializeToString()))
    return _field(6, _field(1, request))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
