"""Where should a class-conditional flow use its label? A short bench on the 8x8 digits.

Run from the repo root (a few minutes on 2 CPU cores):
    python bench/conditioning_digits.py               # 40 epochs per model
    python bench/conditioning_digits.py --epochs 5    # smoke test

Data: scikit-learn's 1797 digits (17 levels), split 70/15/15 with a fixed seed (not the
package's `data.load("digits")` split, which has no labels yet), uniformly dequantized afresh
every epoch. Models: the `RealNVP` preset with the package's digits defaults for vectors
(`rescale(17) -> logit(0.05) -> 6 affine couplings of 2x256 ReLU MLPs -> N(0, I)`), and the
`NSF` preset at the same size (6 spline couplings, 8 bins on [-3, 3]), each

* unconditional,
* `conditioning="couplings"`: every coupling's MLP sees the one-hot label next to x1,
* `conditioning="prior"`: shared couplings, a learned per-class latent mean and log-scale
  (FlowGMM's class-conditional Gaussian, `tn.ContextAffine`),
* `conditioning="both"`.

Protocol: Adam 1e-3, batch 64, `--epochs` epochs, the weights with the best validation NLL
(checked every epoch) kept. Reported on the test split:

* `bits/dim p(x|y)`: `-log p(x | y) / (64 ln 2)` at the true label;
* `bits/dim p(x)`: the marginal `-log sum_c p(x | c) p(c)` (p(c) from the training labels),
  comparable with the unconditional model's (a label is worth at most log2(10)/64 = 0.052
  bits/dim);
* `accuracy`: the Bayes classifier `argmax_c log p(x | c) + log p(c)` (`model.classify`).

Writes bench/conditioning_digits.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

import tfp_nice as tn

HERE = pathlib.Path(__file__).resolve().parent
D = 64


def _split(seed: int = 0):
    digits = load_digits()
    x, y = digits.data.astype("float32"), digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    n = round(0.15 * len(x))
    test, val, train = np.split(order, [n, 2 * n])
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def _dequantized(x, y, batch, seed):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    return ds.batch(batch).map(lambda a, b: (a + tf.random.uniform(tf.shape(a)), b))


def _fixed(x, seed):  # one fixed dequantization for validation and test
    return x + np.random.default_rng(seed).uniform(size=x.shape).astype("float32")


def _build(kind: str, conditioning: str | None):
    common = dict(num_couplings=6, hidden_units=(256, 256), data_scale=17.0, logit_alpha=0.05)
    if conditioning is not None:
        common.update(num_classes=10, conditioning=conditioning)
    if kind == "nsf":
        return tn.NSF([D], num_bins=8, bound=3.0, **common)
    return tn.RealNVP([D], **common)


def _nll(model, x, y, conditional: bool) -> float:
    return float(np.mean(-(model.log_prob(x, y) if conditional else model.log_prob(x))))


def _run(kind: str, conditioning: str | None, data, epochs: int) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = data
    keras.utils.set_random_seed(0)
    model = _build(kind, conditioning)
    conditional = conditioning is not None
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    xva, xte = _fixed(xva, 1), _fixed(xte, 2)
    best, best_weights, start = math.inf, model.get_weights(), time.perf_counter()
    for epoch in range(epochs):
        ds = _dequantized(xtr, ytr, 64, epoch)
        model.fit(ds if conditional else ds.map(lambda a, b: a), epochs=1, verbose=0)
        val = _nll(model, xva, yva, conditional)
        if val < best:
            best, best_weights = val, model.get_weights()
    seconds = time.perf_counter() - start
    model.set_weights(best_weights)
    row = {"model": kind, "conditioning": conditioning or "none",
           "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
           "seconds": round(seconds, 1)}
    scale = D * math.log(2)
    if conditional:
        model.set_class_prior(labels=ytr)
        per_class = model.log_prob_per_class(xte).numpy()
        log_prior = model.class_log_prior.numpy()
        marginal = np.logaddexp.reduce(per_class + log_prior, axis=-1)
        row["bits_per_dim_given_label"] = round(_nll(model, xte, yte, True) / scale, 4)
        row["bits_per_dim"] = round(float(np.mean(-marginal)) / scale, 4)
        row["accuracy"] = round(float(np.mean(model.classify(xte).numpy() == yte)), 4)
    else:
        row["bits_per_dim"] = round(_nll(model, xte, yte, False) / scale, 4)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--models", default="realnvp,nsf")
    args = parser.parse_args()
    data = _split()
    rows = [_run(kind, cond, data, args.epochs) for kind in args.models.split(",")
            for cond in (None, "couplings", "prior", "both")]
    (HERE / "conditioning_digits.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| model | conditioning | params | test bits/dim p(x) | test bits/dim p(x\\|y) | "
             "Bayes accuracy | train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['conditioning']} | {r['params']:,} | "
                     f"{r['bits_per_dim']:.3f} | {r.get('bits_per_dim_given_label', '–')} | "
                     f"{r.get('accuracy', '–')} | {r['seconds']} |")
    (HERE / "conditioning_digits.md").write_text(
        f"{args.epochs} epochs each; see bench/conditioning_digits.py for the protocol. "
        "`train s` is wall time, comparable between rows only on an idle machine.\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
