"""Export a flow as a SavedModel that TF Serving loads, with named serving signatures.

:func:`save_for_serving` writes TF Serving's layout ``export_dir/VERSION/``::

  saved_models/NAME/1/saved_model.pb
                     /variables/...
                     /assets.extra/tf_serving_warmup_requests   one request per signature
                     /assets.extra/tfp_nice_export.json         what the signatures expect

Signatures (each returns a dict of named float32 outputs):

==================  ====================================  ===================================
name                inputs                                outputs
==================  ====================================  ===================================
``serving_default`` ``x`` float32 ``[batch, *event]``     ``log_prob`` ``[batch]`` (nats),
 = ``log_prob``                                           ``bits_per_dim`` ``[batch]``
``sample``          ``n`` int32 ``[]``, ``seed`` int32    ``x`` ``[n, *event]``
                    ``[2]``, ``temperature`` float32 []
``encode``          ``x`` ``[batch, *event]``             ``z`` ``[batch, *latent]``
``decode``          ``z`` ``[batch, *latent]``            ``x`` ``[batch, *event]``
==================  ====================================  ===================================

Data space. ``x`` is always in the space the user's data came in. For continuous data that
is the model's own space. For integer data with ``L`` levels (``data`` given with
``num_levels``; e.g. the 8x8 digits, ``L = 17``) the model was trained on uniformly
dequantized values ``k + u`` in ``[low, low + L)``; the export takes the *raw integer
levels* ``k`` and evaluates the density at the bin centre ``k + 0.5``::

  log_prob(k) = FlowModel.log_prob(k + 0.5)        bits_per_dim = -log_prob / (D ln 2)

(``p(k + 0.5)`` times the bin width 1 approximates ``P(k)``; the held-out bits/dim of
``metrics.json`` averages over random ``u`` instead and is close to, not equal to, this).
``encode`` takes raw levels the same way; ``sample`` and ``decode`` return raw levels
``x = clip(floor(y), low, low + L - 1)`` plus ``x_continuous = y``, the model-space value, so
``decode(encode(k))["x"] == k``.

Bad requests fail inside the graph with ``InvalidArgumentError`` and a message naming the
input: a wrong event shape or rank, NaN/Inf, integer data that is not an integer level in
range, ``n < 0`` or ``n > max_samples``, a seed that is not 2 ints, a temperature that is not
a positive finite number. (The input dtypes are fixed by the signature: loaders refuse a
wrong dtype before the graph runs.)

The graph holds only core TensorFlow ops: it loads with ``tf.saved_model.load``, the TF1
session loader (``saved_model_cli run``, TF Serving) and the C++ ``LoadSavedModel`` in a
process that never imports ``tensorflow_probability`` or ``tfp_nice``.

The inputs are declared with unknown shapes (``saved_model_cli show`` prints
``unknown_rank``) so that every check happens inside the graph, with the same message in
every loader: the C++ session TF Serving runs does not check fed shapes against a
placeholder's declared shape. ``assets.extra/tfp_nice_export.json`` spells out the expected
shapes, the data space and the sample cap.

Example:
  >>> import tempfile, tfp_nice as tn
  >>> model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
  >>> path = save_for_serving(model, tempfile.mkdtemp() + "/moons")
  >>> path.endswith("moons/1")
  True
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "ExportError",
    "METADATA_FILE",
    "SIGNATURES",
    "WARMUP_FILE",
    "next_version",
    "save_for_serving",
    "warmup_requests",
]

DEFAULT_MAX_SAMPLES = 100_000
SIGNATURES = ("serving_default", "log_prob", "sample", "encode", "decode")
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "tfp_nice_export.json"
_VERSION_RE = re.compile(r"^[0-9]+$")
_TMP_PREFIX = ".tmp-export-"


class ExportError(ValueError):
    """An export cannot be written as asked (bad destination, existing version, bad args)."""


# ---------------------------------------------------------------------------------------------
# The data space seen by clients.
# ---------------------------------------------------------------------------------------------
class _DataSpace:
    """Maps client values <-> the model's data space, with the in-graph checks of ``x``."""

    def __init__(self, event_shape, data: Any):
        self.event_shape = tuple(int(d) for d in event_shape)
        self.num_levels = None
        self.low = self.high = None
        if data is None:
            return
        if hasattr(data, "to_config"):
            data = data.to_config()
        if not isinstance(data, Mapping):
            raise ExportError(
                "`data` must be None, a tfp_nice.data.DataSpec or its config dict (run.json's "
                f"'data'). Received: data={data!r}"
            )
        shape = data.get("event_shape")
        if shape is not None and tuple(int(d) for d in shape) != self.event_shape:
            raise ExportError(
                f"`data` has event shape {list(shape)} but the model's is "
                f"{list(self.event_shape)}"
            )
        levels = data.get("num_levels")
        low = float(data.get("low", 0.0))
        if levels is not None:
            levels = int(levels)
            if levels < 2 or not math.isfinite(low) or low != math.floor(low):
                raise ExportError(
                    "`data` must have num_levels >= 2 and an integer low. "
                    f"Received: num_levels={levels!r}, low={low!r}"
                )
            self.num_levels, self.low, self.high = levels, low, low + levels - 1
        elif len(self.event_shape) == 3 and "high" in data:
            # Continuous images: the model rescales [low, high] to [0, 1]; outside is garbage.
            self.low, self.high = low, float(data["high"])

    def describe(self) -> dict:
        if self.num_levels is not None:
            return {
                "kind": "integer levels",
                "num_levels": self.num_levels, "low": self.low, "high": self.high,
                "x_in": f"raw integer levels in [{self.low:g}, {self.high:g}] as float32; the "
                        "density is evaluated at the bin centre x + 0.5",
                "x_out": "x: raw levels clip(floor(y), low, high); x_continuous: y",
            }
        if self.low is not None:
            return {"kind": "bounded continuous", "low": self.low, "high": self.high,
                    "x_in": f"float32 values in [{self.low:g}, {self.high:g}]",
                    "x_out": "x"}
        return {"kind": "continuous", "x_in": "float32 values", "x_out": "x"}

    def to_model(self, x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """Checked ``x`` in the model's data space (bin centres for integer data)."""
        x = _check_event(x, self.event_shape, "x")
        checks = []
        if self.low is not None:
            in_range = tf.reduce_all((x >= self.low) & (x <= self.high))
            what = "integer levels" if self.num_levels is not None else "values"
            checks.append(tf.debugging.Assert(in_range, [
                f"tfp_nice serving: `x` must hold {what} in [{self.low:g}, {self.high:g}] "
                f"(the data range the model was trained on). Received min/max:",
                tf.reduce_min(x), tf.reduce_max(x)]))
        if self.num_levels is not None:
            checks.append(tf.debugging.Assert(tf.reduce_all(tf.equal(x, tf.round(x))), [
                "tfp_nice serving: `x` must hold integer levels (raw pixel values such as "
                f"0, 1, ..., {self.high:g}), not dequantized or rescaled values"]))
        with tf.control_dependencies(checks):
            x = tf.identity(x)
        if self.num_levels is not None:
            x = x + 0.5
        return tf.cast(x, dtype)

    def from_model(self, y: tf.Tensor) -> dict[str, tf.Tensor]:
        y = tf.cast(y, tf.float32)
        if self.num_levels is None:
            return {"x": y}
        x = tf.clip_by_value(tf.floor(y), self.low, self.high)
        return {"x": x, "x_continuous": y}


def _check_event(x: tf.Tensor, event_shape: tuple[int, ...], arg: str) -> tf.Tensor:
    """``x`` behind in-graph checks: shape ``[batch, *event_shape]`` and finite values."""
    want = len(event_shape) + 1
    shape = tf.shape(x, out_type=tf.int32)
    padded = tf.concat([shape, tf.zeros([want], tf.int32)], 0)[1:want]
    ok = tf.logical_and(tf.equal(tf.size(shape), want),
                        tf.reduce_all(tf.equal(padded, tf.constant(event_shape, tf.int32))))
    dims = ", ".join(str(d) for d in event_shape)
    shape_check = tf.debugging.Assert(ok, [
        f"tfp_nice serving: `{arg}` must have shape [batch, {dims}]. Received shape:", shape],
        summarize=16)
    with tf.control_dependencies([shape_check]):
        x = tf.ensure_shape(tf.identity(x), (None,) + event_shape)
    finite = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(x)), [
        f"tfp_nice serving: `{arg}` must be finite, but it holds NaN or Inf values"])
    with tf.control_dependencies([finite]):
        return tf.identity(x)


# ---------------------------------------------------------------------------------------------
# The exported module.
# ---------------------------------------------------------------------------------------------
class _ServingFunctions:
    """The signature functions (``tf.function`` with loose input specs, checked in-graph).

    Only the concrete functions go into the SavedModel, as signatures: the saved object
    graph is a bare ``tf.Module`` holding the variables (see :meth:`root`), which keeps the
    Keras model out of it and stores each function once.
    """

    def __init__(self, model, space: _DataSpace, max_samples: int):
        self.model = model
        self._space = space
        self._max_samples = int(max_samples)
        self._dtype = tf.as_dtype(model.base_distribution.dtype)
        event = space.event_shape
        self._latent_shape = tuple(int(d) for d in model.base_distribution.event_shape)
        self._num_dims = int(np.prod(event))
        self.log_prob = tf.function(self._log_prob, input_signature=[
            tf.TensorSpec(None, tf.float32, name="x")])
        self.sample = tf.function(self._sample, input_signature=[
            tf.TensorSpec(None, tf.int32, name="n"), tf.TensorSpec(None, tf.int32, name="seed"),
            tf.TensorSpec(None, tf.float32, name="temperature")])
        self.encode = tf.function(self._encode, input_signature=[
            tf.TensorSpec(None, tf.float32, name="x")])
        self.decode = tf.function(self._decode, input_signature=[
            tf.TensorSpec(None, tf.float32, name="z")])
        # The flow itself is traced twice, not four times: log_prob and encode share the
        # inverse, sample and decode share the forward (halves export time and graph size).
        self._inverse = tf.function(self._inverse_and_ildj, input_signature=[
            tf.TensorSpec((None,) + event, self._dtype)])
        self._forward = tf.function(self.model.bijector.forward, input_signature=[
            tf.TensorSpec((None,) + self._latent_shape, self._dtype)])

    def _inverse_and_ildj(self, y):
        bijector = self.model.bijector
        z = bijector.inverse(y)
        return z, bijector.inverse_log_det_jacobian(y, event_ndims=len(self._space.event_shape))

    def root(self) -> tf.Module:
        """The object to save. The TF1 session loader (saved_model_cli, TF Serving) restores
        only variables the object graph reaches directly: track the tf.Variables behind the
        Keras variables, not the Keras model."""
        root = tf.Module(name="tfp_nice_serving")
        root.flow_variables = [_raw_variable(v) for v in self.model.variables]
        return root

    def _log_prob(self, x):
        # = TransformedDistribution.log_prob: log p_z(f^-1(y)) + log|det d f^-1(y) / dy|
        z, ildj = self._inverse(self._space.to_model(x, self._dtype))
        lp = tf.cast(self.model.base_distribution.log_prob(z) + ildj, tf.float32)
        return {"log_prob": lp, "bits_per_dim": -lp / (self._num_dims * math.log(2.0))}

    def _sample(self, n, seed, temperature):
        n = _scalar(n, "n")
        temperature = _scalar(temperature, "temperature")
        checks = [
            tf.debugging.Assert((n >= 0) & (n <= self._max_samples), [
                f"tfp_nice serving: `n` must be in [0, {self._max_samples}] (the export's "
                "max_samples). Received: n =", n]),
            tf.debugging.Assert(tf.equal(tf.size(seed), 2), [
                "tfp_nice serving: `seed` must be 2 int32 values, e.g. [1, 2]. Received shape:",
                tf.shape(seed)]),
            tf.debugging.Assert(tf.math.is_finite(temperature) & (temperature > 0.0), [
                "tfp_nice serving: `temperature` must be a positive finite number. Received:",
                temperature]),
        ]
        with tf.control_dependencies(checks):
            n = tf.identity(n)
            seed = tf.reshape(seed, [2])
            temperature = tf.identity(temperature)
        z = self.model.base_distribution.sample(n, seed=seed)
        return self._space.from_model(self._forward(z * tf.cast(temperature, z.dtype)))

    def _encode(self, x):
        z, _ = self._inverse(self._space.to_model(x, self._dtype))
        return {"z": tf.cast(z, tf.float32)}

    def _decode(self, z):
        z = tf.cast(_check_event(z, self._latent_shape, "z"), self._dtype)
        return self._space.from_model(self._forward(z))

    def signatures(self) -> dict:
        log_prob = self.log_prob.get_concrete_function()
        return {
            "serving_default": log_prob,
            "log_prob": log_prob,
            "sample": self.sample.get_concrete_function(),
            "encode": self.encode.get_concrete_function(),
            "decode": self.decode.get_concrete_function(),
        }


def _scalar(v: tf.Tensor, arg: str) -> tf.Tensor:
    check = tf.debugging.Assert(tf.equal(tf.size(v), 1), [
        f"tfp_nice serving: `{arg}` must be a scalar. Received shape:", tf.shape(v)])
    with tf.control_dependencies([check]):
        return tf.reshape(v, [])


def _raw_variable(v) -> tf.Variable:
    raw = getattr(v, "value", v)
    if not isinstance(raw, tf.Variable):
        raw = getattr(v, "_value", raw)
    if not isinstance(raw, tf.Variable):
        raise ExportError(f"Cannot export variable {getattr(v, 'path', v)!r}: not a tf.Variable")
    return raw


# ---------------------------------------------------------------------------------------------
# Warm-up requests.
# ---------------------------------------------------------------------------------------------
def _warmup_inputs(space: _DataSpace, latent_shape) -> dict[str, dict[str, np.ndarray]]:
    """One small valid request per signature (batch 1 / n = 1)."""
    x = np.zeros((1,) + space.event_shape, np.float32)
    if space.low is not None:
        x += np.float32(space.low)
    return {
        "serving_default": {"x": x},
        "log_prob": {"x": x},
        "sample": {"n": np.array(1, np.int32), "seed": np.array([0, 0], np.int32),
                   "temperature": np.array(1.0, np.float32)},
        "encode": {"x": x},
        "decode": {"z": np.zeros((1,) + tuple(latent_shape), np.float32)},
    }


def warmup_requests(model_name: str, inputs: Mapping[str, Mapping[str, np.ndarray]]) -> list:
    """Serialised ``tensorflow.serving.PredictionLog`` records (one ``PredictRequest`` each).

    Uses the ``tensorflow-serving-api`` package (``pip install tfp_nice[serving]``) when it is
    installed; otherwise writes the same protobuf bytes by hand (the messages are three nested
    wrappers around TensorFlow's own ``TensorProto``), so exports never need the package.
    """
    records = []
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        prediction_log_pb2 = None
    for signature, feeds in inputs.items():
        tensors = {k: tf.make_tensor_proto(v) for k, v in feeds.items()}
        if prediction_log_pb2 is not None:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for k, t in tensors.items():
                request.inputs[k].CopyFrom(t)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            records.append(log.SerializeToString())
        else:
            records.append(_encode_prediction_log(model_name, signature, tensors))
    return records


def _encode_prediction_log(model_name: str, signature: str, tensors: dict) -> bytes:
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


# ---------------------------------------------------------------------------------------------
# Versions and the atomic write.
# ---------------------------------------------------------------------------------------------
def _versions(export_dir: str) -> list[int]:
    try:
        names = os.listdir(export_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if _VERSION_RE.match(n))


def next_version(export_dir: str) -> int:
    """The version :func:`save_for_serving` would write next: 1 + the largest, or 1."""
    versions = _versions(export_dir)
    return versions[-1] + 1 if versions else 1


def save_for_serving(
    model,
    export_dir: str | os.PathLike,
    *,
    version: int | None = None,
    data: Any = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    warmup: bool = True,
    extra_metadata: Mapping[str, Any] | None = None,
) -> str:
    """Writes ``model`` as a TF Serving SavedModel in ``export_dir/VERSION/``.

    Args:
      model: a :class:`tfp_nice.FlowModel` (any preset or a generic flow).
      export_dir: the model's base path, ``saved_models/NAME`` (TF Serving's
        ``--model_base_path``); created if missing.
      version: the version number (a positive int); default: one more than the largest
        version present, or 1. An existing version is never overwritten.
      data: the training data's description (a :class:`tfp_nice.data.DataSpec` or the
        ``"data"`` dict of ``run.json``); with ``num_levels`` the signatures take and return
        raw integer levels (see the module docstring). ``None``: ``x`` is the model's space.
      max_samples: the largest ``n`` the ``sample`` signature accepts.
      warmup: write ``assets.extra/tf_serving_warmup_requests``.
      extra_metadata: more JSON-serialisable entries for ``assets.extra/tfp_nice_export.json``.

    Returns:
      The path of the version directory written.

    Raises:
      ExportError: ``version`` exists or is not a positive int, ``export_dir`` is not a
        directory, bad ``data`` or ``max_samples``, or the model cannot be exported.
      OSError: the destination cannot be written (nothing is left behind).
    """
    from tfp_nice.flow_model import FlowModel

    if not isinstance(model, FlowModel):
        raise ExportError(
            f"`model` must be a tfp_nice.FlowModel. Received: {type(model).__name__}"
        )
    if version is not None and (isinstance(version, bool) or not isinstance(
            version, (int, np.integer)) or version < 1):
        raise ExportError(f"`version` must be a positive int. Received: version={version!r}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or not (
            1 <= max_samples < 2**31):
        raise ExportError(
            f"`max_samples` must be an int in [1, 2**31). Received: max_samples={max_samples!r}"
        )
    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ExportError(f"Export path {export_dir!r} exists and is not a directory")
    space = _DataSpace(model.event_shape, data)
    if version is not None and os.path.exists(os.path.join(export_dir, str(version))):
        raise ExportError(
            f"Version {version} already exists in {export_dir!r}; versions are never "
            f"overwritten. Pass another --version (next free: {next_version(export_dir)})"
        )

    created_base = not os.path.isdir(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    # A sibling of the versions, named so TF Serving (which watches numeric names) ignores it.
    tmp = os.path.join(export_dir, f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(tmp)
        module = _ServingFunctions(model, space, max_samples)
        tf.saved_model.save(module.root(), tmp, signatures=module.signatures())
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        name = os.path.basename(export_dir)
        if warmup:
            inputs = _warmup_inputs(space, module._latent_shape)
            with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as w:
                for record in warmup_requests(name, inputs):
                    w.write(record)
        meta = _metadata(model, space, module, max_samples, extra_metadata)
        with open(os.path.join(extra, METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
        if version is None:
            version = next_version(export_dir)
        final = os.path.join(export_dir, str(int(version)))
        if os.path.exists(final):
            raise ExportError(
                f"Version {version} already exists in {export_dir!r}; versions are never "
                "overwritten"
            )
        os.rename(tmp, final)  # atomic: TF Serving never sees a half-written version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_base:
            try:
                os.rmdir(export_dir)
            except OSError:
                pass
        raise
    return final


def _metadata(model, space: _DataSpace, module: _ServingFunctions, max_samples: int,
              extra: Mapping[str, Any] | None) -> dict:
    from tfp_nice import __version__

    event = list(space.event_shape)
    latent = list(module._latent_shape)
    meta = {
        "format": "tfp_nice serving export 1",
        "tfp_nice_version": __version__,
        "tensorflow_version": tf.__version__,
        "model_class": type(model).__name__,
        "event_shape": event,
        "latent_shape": latent,
        "num_dims": module._num_dims,
        "max_samples": int(max_samples),
        "data_space": space.describe(),
        "signatures": {
            "serving_default": "= log_prob",
            "log_prob": {"inputs": {"x": ["float32", ["batch", *event]]},
                         "outputs": {"log_prob": ["float32", ["batch"]],
                                     "bits_per_dim": ["float32", ["batch"]]}},
            "sample": {"inputs": {"n": ["int32", []], "seed": ["int32", [2]],
                                  "temperature": ["float32", []]},
                       "outputs": {k: ["float32", ["n", *event]]
                                   for k in _out_names(space)}},
            "encode": {"inputs": {"x": ["float32", ["batch", *event]]},
                       "outputs": {"z": ["float32", ["batch", *latent]]}},
            "decode": {"inputs": {"z": ["float32", ["batch", *latent]]},
                       "outputs": {k: ["float32", ["batch", *event]]
                                   for k in _out_names(space)}},
        },
    }
    try:
        meta["model_config"] = json.loads(json.dumps(model.get_config()))
    except (TypeError, ValueError):
        pass
    if extra:
        meta.update(extra)
    return meta


def _out_names(space: _DataSpace) -> list[str]:
    return ["x", "x_continuous"] if space.num_levels is not None else ["x"]
