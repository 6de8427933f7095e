"""Query a tfp_nice model served by TF Serving over REST or gRPC: draw samples, score them.

Every signature input is batched (one row per example), so a client that wants ``n``
samples sends ``n`` rows, each with its own seed and temperature, and TF Serving may merge
its request with others (``--enable_batching``):

  POST {url}:predict  {"signature_name": "sample",
                       "instances": [{"seed": [1, 2], "temperature": 0.7},
                                     {"seed": [1, 3], "temperature": 0.7}, ...]}
  POST {url}:predict  {"signature_name": "log_prob", "instances": [x_1, x_2, ...]}

REST replies ``{"predictions": [{"x": .., "x_continuous": ..}, ...]}`` (one entry per row).
gRPC (``tensorflow-serving-api``: ``pip install "tfp_nice[serving]"``) sends a
``PredictRequest`` with one ``TensorProto`` per input to ``PredictionService/Predict``.

With ``--url`` (REST, e.g. ``http://localhost:8501/v1/models/nice_digits``) or ``--grpc``
(e.g. ``localhost:8500``) the requests go to a running server. Without either, the same
requests run through the SavedModel on disk (``tf.saved_model.load``, decoding them the way
TF Serving does), so the example works without a server; there the ``sample`` request goes
the REST way and the ``log_prob`` request the gRPC way, so both paths run:

  python examples/serving_client.py saved_models/nice_digits
  python examples/serving_client.py --url http://localhost:8501/v1/models/nice_digits
  python examples/serving_client.py --grpc localhost:8500 --model-name nice_digits
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request

import numpy as np


# --- REST ---------------------------------------------------------------------------------------
def sample_rows(n: int = 4, seed=(1, 2), temperature: float = 1.0) -> dict:
    """Inputs of a ``sample`` request of ``n`` rows: seeds ``(s0, s1 + i)``, one temperature."""
    seeds = np.array([[seed[0], seed[1] + i] for i in range(n)], np.int32)
    return {"seed": seeds, "temperature": np.full([n], temperature, np.float32)}


def rest_body(signature: str, inputs: dict) -> dict:
    """The REST ``:predict`` body of ``inputs`` (row format: one instance per row)."""
    names = list(inputs)
    rows = len(np.asarray(inputs[names[0]]))
    if len(names) == 1:
        instances = np.asarray(inputs[names[0]]).tolist()
    else:
        instances = [{k: np.asarray(inputs[k])[i].tolist() for k in names} for i in range(rows)]
    return {"signature_name": signature, "instances": instances}


def post(url: str, body: dict, timeout: float = 30.0) -> dict:
    """POSTs ``body`` to ``{url}:predict`` and returns the decoded JSON reply."""
    request = urllib.request.Request(f"{url.rstrip('/')}:predict",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.load(reply)


def rest_outputs(reply: dict, names) -> dict:
    """``{output: array}`` from a row-format reply (a single output comes without its name)."""
    rows = reply["predictions"]
    if rows and not isinstance(rows[0], dict):
        rows = [{names[0]: r} for r in rows]
    return {k: np.asarray([r[k] for r in rows], np.float32) for k in (rows[0] if rows else {})}


# --- gRPC ---------------------------------------------------------------------------------------
def grpc_request(model_name: str, signature: str, inputs: dict):
    """A ``tensorflow.serving.PredictRequest`` of ``inputs`` (numpy arrays)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request


def grpc_outputs(response) -> dict:
    """``{output: array}`` of a ``PredictResponse``."""
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def grpc_predict(target: str, request, timeout: float = 30.0):
    """Sends ``request`` to TF Serving's gRPC ``PredictionService`` at ``target``."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout)


# --- a local stand-in for the server ------------------------------------------------------------
def latest_version(base_path: str) -> str:
    """``base_path/VERSION`` with the largest VERSION (what TF Serving serves by default)."""
    if os.path.exists(os.path.join(base_path, "saved_model.pb")):
        return base_path
    versions = [int(v) for v in os.listdir(base_path) if re.fullmatch(r"[0-9]+", v)]
    if not versions:
        raise FileNotFoundError(f"No version directory (1/, 2/, ...) in {base_path!r}")
    return os.path.join(base_path, str(max(versions)))


class LocalServer:
    """Answers REST bodies and gRPC ``PredictRequest`` protos from a SavedModel on disk."""

    def __init__(self, base_path: str):
        import tensorflow as tf

        self._tf = tf
        self.path = latest_version(base_path)
        self._loaded = tf.saved_model.load(self.path)

    def _run(self, signature: str, feeds: dict) -> dict:
        fn = self._loaded.signatures[signature]
        specs = fn.structured_input_signature[1]
        feeds = {k: self._tf.constant(np.asarray(v), dtype=specs[k].dtype)
                 for k, v in feeds.items()}
        return {k: v.numpy() for k, v in fn(**feeds).items()}

    def rest(self, body: dict) -> dict:
        """A REST ``:predict`` reply in row format."""
        signature = body.get("signature_name", "serving_default")
        specs = self._loaded.signatures[signature].structured_input_signature[1]
        rows = body["instances"]
        if len(specs) == 1 and not (rows and isinstance(rows[0], dict)):
            rows = [{next(iter(specs)): r} for r in rows]
        out = self._run(signature, {k: np.stack([np.asarray(r[k]) for r in rows])
                                    for k in specs})
        n = len(next(iter(out.values())))
        if len(out) == 1:  # TF Serving drops the name of a single output
            return {"predictions": next(iter(out.values())).tolist()}
        return {"predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(n)]}

    def grpc(self, request):
        """A ``PredictResponse`` for a ``PredictRequest``."""
        from tensorflow_serving.apis import predict_pb2

        feeds = {k: self._tf.make_ndarray(v) for k, v in request.inputs.items()}
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for k, v in self._run(request.model_spec.signature_name, feeds).items():
            response.outputs[k].CopyFrom(self._tf.make_tensor_proto(v))
        return response


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="saved_models/nice_digits",
                   help="the exported model's base path (used without --url / --grpc)")
    p.add_argument("--url", default=None,
                   help="TF Serving REST endpoint, e.g. http://localhost:8501/v1/models/NAME")
    p.add_argument("--grpc", default=None, help="TF Serving gRPC target, e.g. localhost:8500")
    p.add_argument("--model-name", default="nice_digits", help="the served model's name (gRPC)")
    p.add_argument("-n", type=int, default=4, help="samples to draw (rows of the request)")
    p.add_argument("--seed", type=int, nargs=2, default=[1, 2])
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args(argv)
    local = None if (args.url or args.grpc) else LocalServer(args.model)

    def predict(signature: str, inputs: dict, names) -> dict:
        if args.grpc or (local is not None and signature == "log_prob"):
            request = grpc_request(args.model_name, signature, inputs)
            print(f"gRPC Predict {signature}: inputs {sorted(inputs)}, {len(request.inputs)} "
                  "tensors")
            reply = grpc_predict(args.grpc, request) if args.grpc else local.grpc(request)
            return grpc_outputs(reply)
        body = rest_body(signature, inputs)
        print("POST :predict", json.dumps({**body, "instances": f"<{len(body['instances'])} "
                                                                "instances>"}))
        return rest_outputs(post(args.url, body) if args.url else local.rest(body), names)

    samples = predict("sample", sample_rows(args.n, args.seed, args.temperature), ["x"])
    x = samples["x"]
    print(f"  -> outputs: {sorted(samples)}, x of shape {list(x.shape)}")
    scores = predict("log_prob", {"x": x}, ["log_prob"])
    for i, (lp, bpd) in enumerate(zip(scores["log_prob"], scores["bits_per_dim"])):
        print(f"  -> sample {i}: log_prob {lp:.3f} nats, {bpd:.4f} bits/dim")
    return {"samples": samples, "scores": scores}


if __name__ == "__main__":
    main()
    sys.exit(0)
