"""Query a tfp_nice model served by TF Serving: draw samples, then score them.

Builds the JSON bodies of TF Serving's REST ``:predict`` API for the ``sample`` and
``log_prob`` signatures written by ``tfp-nice export``::

  POST {url}:predict  {"signature_name": "sample",
                       "inputs": {"n": 4, "seed": [1, 2], "temperature": 0.7}}
  POST {url}:predict  {"signature_name": "log_prob", "instances": [x_1, x_2, ...]}

``sample`` takes scalars, so its body uses the columnar ``"inputs"`` format and the reply is
``{"outputs": {"x": ...}}`` (TF Serving drops the name when a signature has a single
output: ``{"outputs": [...]}``); ``log_prob`` is batched, so its body lists one instance per
example (row format) and the reply is ``{"predictions": [{"log_prob": ..,
"bits_per_dim": ..}, ...]}``.

With ``--url`` (e.g. ``http://localhost:8501/v1/models/nice_digits``) the bodies are POSTed
to a running server. Without it, the same bodies run through the SavedModel on disk
(``tf.saved_model.load``, decoding the JSON the way TF Serving does), so the example works
without a server:

  python examples/serving_client.py saved_models/nice_digits
  python examples/serving_client.py saved_models/nice_digits --url http://localhost:8501/v1/models/nice_digits
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request

import numpy as np


def sample_body(n: int = 4, seed=(1, 2), temperature: float = 1.0) -> dict:
    """The REST body of a ``sample`` request (columnar ``"inputs"`` format)."""
    return {"signature_name": "sample",
            "inputs": {"n": int(n), "seed": [int(s) for s in seed],
                       "temperature": float(temperature)}}


def log_prob_body(x) -> dict:
    """The REST body of a ``log_prob`` request: one instance per example (row format)."""
    return {"signature_name": "log_prob", "instances": np.asarray(x, np.float32).tolist()}


def post(url: str, body: dict, timeout: float = 30.0) -> dict:
    """POSTs ``body`` to ``{url}:predict`` and returns the decoded JSON reply."""
    request = urllib.request.Request(f"{url.rstrip('/')}:predict",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.load(reply)


def latest_version(base_path: str) -> str:
    """``base_path/VERSION`` with the largest VERSION (what TF Serving serves by default)."""
    if os.path.exists(os.path.join(base_path, "saved_model.pb")):
        return base_path
    versions = [int(v) for v in os.listdir(base_path) if re.fullmatch(r"[0-9]+", v)]
    if not versions:
        raise FileNotFoundError(f"No version directory (1/, 2/, ...) in {base_path!r}")
    return os.path.join(base_path, str(max(versions)))


class LocalServer:
    """Answers REST ``:predict`` bodies from a SavedModel on disk, as TF Serving would."""

    def __init__(self, base_path: str):
        import tensorflow as tf

        self._tf = tf
        self.path = latest_version(base_path)
        self._loaded = tf.saved_model.load(self.path)

    def predict(self, body: dict) -> dict:
        tf = self._tf
        fn = self._loaded.signatures[body.get("signature_name", "serving_default")]
        specs = fn.structured_input_signature[1]
        if "instances" in body:  # row format: one entry per example, stacked on axis 0
            rows = body["instances"]
            if len(specs) == 1 and not (rows and isinstance(rows[0], dict)):
                rows = [{next(iter(specs)): r} for r in rows]
            feeds = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in specs}
        else:  # columnar format
            feeds = {k: np.asarray(v) for k, v in body["inputs"].items()}
        feeds = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in feeds.items()}
        out = {k: v.numpy().tolist() for k, v in fn(**feeds).items()}
        single = next(iter(out.values())) if len(out) == 1 else None  # TF Serving drops the name
        if "instances" in body:
            if single is not None:
                return {"predictions": single}
            n = len(next(iter(out.values())))
            return {"predictions": [{k: v[i] for k, v in out.items()} for i in range(n)]}
        return {"outputs": single if single is not None else out}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="saved_models/nice_digits",
                   help="the exported model's base path (used when --url is not given)")
    p.add_argument("--url", default=None,
                   help="TF Serving REST endpoint, e.g. http://localhost:8501/v1/models/NAME")
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--seed", type=int, nargs=2, default=[1, 2])
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args(argv)

    predict = (lambda body: post(args.url, body)) if args.url else LocalServer(args.model).predict
    body = sample_body(args.n, args.seed, args.temperature)
    print("POST :predict", json.dumps(body))
    samples = predict(body)["outputs"]
    if not isinstance(samples, dict):  # a single output comes back without its name
        samples = {"x": samples}
    x = np.asarray(samples["x"], np.float32)
    print(f"  -> outputs: {sorted(samples)}, x of shape {list(x.shape)}")
    body = log_prob_body(x)
    print("POST :predict", json.dumps({**body, "instances": f"<{len(x)} instances>"}))
    scores = predict(body)["predictions"]
    for i, s in enumerate(scores):
        print(f"  -> sample {i}: log_prob {s['log_prob']:.3f} nats, "
              f"{s['bits_per_dim']:.4f} bits/dim")
    return {"samples": samples, "scores": scores}


if __name__ == "__main__":
    main()
    sys.exit(0)
