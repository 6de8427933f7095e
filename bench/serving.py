"""Serving latency and throughput: in-process Keras model vs the exported SavedModel.

Run from the repo root on an otherwise idle machine:
    python bench/serving.py            # the default digits NICE and NICE([784]); ~3 min
    python bench/serving.py --quick    # smoke test: few calls, no waiting
Models (weights untrained; timing does not depend on them):
  digits: the model `tfp-nice train` builds by default for the 8x8 digits
          (NICE, 4 couplings of 4x256 ReLU MLPs, rescale from 17 levels; 0.86M params);
  mnist:  tfp_nice.NICE([784]), the NICE paper's MNIST model (4 couplings of 5x1000; 19.2M).
Configs, per model:
  (a) in-process: `model.log_prob` / `model.sample` wrapped in a tf.function (traced once);
  (b) the SavedModel of tfp_nice.export.save_for_serving loaded with tf.saved_model.load,
      called through `.signatures["log_prob"]` / `["sample"]` (in-graph checks included);
  (s) the same SavedModel in a TF1 session (the loader TF Serving uses), through a
      `Session.make_callable` of the signature's tensors (no Python conversion per call).
log_prob: latency at batch 1 (median and p99 over `--calls` calls) and throughput at batch 256
(examples/s, median over `--batches` calls); sample: latency at n = 1 and n = 256 (median).
Calls of (a), (b), (s) alternate in `--rounds` rounds so machine noise hits them alike; each
is warmed up first. Before starting, waits (polling every 30 s, at most 20 min) until no
other `bench/` process runs, and records `uptime` before and after.
Writes bench/serving.md (table) and bench/serving.json (everything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--calls", type=int, default=300, help="batch-1 log_prob calls per config")
p.add_argument("--batches", type=int, default=30, help="batch-256 calls per config")
p.add_argument("--sample-calls", type=int, default=60, help="sample calls per config and n")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--models", default="digits,mnist")
p.add_argument("--quick", action="store_true", help="few calls, no waiting, no files")
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "serving"), help="output path, no extension")
args = p.parse_args()
if args.quick:
    args.calls, args.batches, args.sample_calls, args.rounds = 20, 4, 4, 2


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def other_benchmarks() -> list[str]:
    try:
        out = subprocess.run(["pgrep", "-af", "bench/"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    mine = _ancestors()
    return [line for line in out.splitlines() if line and int(line.split()[0]) not in mine]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        with open("/proc/loadavg") as f:
            return "loadavg " + f.read().strip()


waited = 0.0
if not args.quick:
    while (others := other_benchmarks()) and waited < 20 * 60:
        print(f"waiting for other benchmarks: {others}", flush=True)
        time.sleep(30)
        waited += 30
still_running = other_benchmarks()
uptime_before = uptime()
print("uptime:", uptime_before, flush=True)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from tfp_nice import NICE, export, training  # noqa: E402
from tfp_nice import data as data_lib  # noqa: E402


def build(name):
    if name == "digits":
        spec = data_lib.DataSpec("digits", (8, 8, 1), num_levels=17, low=0.0, high=16.0)
        return training.build_model(training.TrainConfig(), spec), spec
    return NICE([784]), None


def timed(fn, k):
    out = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleave(fns: dict, calls: int, rounds: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up: trace, first-run graph optimisation
        for _ in range(3):
            fn()
    times = {k: [] for k in fns}
    per_round = max(1, calls // rounds)
    for r in range(rounds):
        keys = list(fns)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate the start
        for k in keys:
            times[k] += timed(fns[k], per_round)
    return times


def session_callable(path, signature, feeds, fetch):
    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
    sig = meta.signature_def[signature]
    names = list(feeds)
    fn = sess.make_callable(sig.outputs[fetch].name, [sig.inputs[n].name for n in names])
    values = [feeds[n] for n in names]
    return lambda: fn(*values), sess


def ms(v):
    return 1000.0 * float(v)


def bench_model(name: str) -> dict:
    model, spec = build(name)
    tmp = tempfile.mkdtemp(prefix="tfp_nice_bench_")
    path = export.save_for_serving(model, os.path.join(tmp, name), data=spec, warmup=False)
    sigs = tf.saved_model.load(path).signatures
    rng = np.random.default_rng(0)
    shape = model.event_shape
    levels = 17 if spec is not None else None
    if levels:
        x1, x256 = (rng.integers(0, levels, (n, *shape)).astype(np.float32) for n in (1, 256))
    else:
        x1, x256 = (rng.uniform(0, 1, (n, *shape)).astype(np.float32) for n in (1, 256))
    off = 0.5 if levels else 0.0  # the signature maps raw levels k to bin centres k + 0.5
    lp = tf.function(lambda x: model.log_prob(x))
    smp = tf.function(lambda n, seed: model.sample(n, seed=seed))
    seed, temp = tf.constant([1, 2], tf.int32), tf.constant(1.0)
    row = {"params": int(model.count_params())}
    sessions = []
    for batch, x in ((1, x1), (256, x256)):
        xa, xb = tf.constant(x + off), tf.constant(x)
        s_fn, sess = session_callable(path, "log_prob", {"x": x}, "log_prob")
        sessions.append(sess)
        np.testing.assert_allclose(sigs["log_prob"](x=xb)["log_prob"], lp(xa), rtol=1e-4)
        fns = {
            "a": lambda xa=xa: lp(xa).numpy(),
            "b": lambda xb=xb: sigs["log_prob"](x=xb)["log_prob"].numpy(),
            "s": s_fn,
        }
        n = args.calls if batch == 1 else args.batches
        for k, v in interleave(fns, n, args.rounds).items():
            v = np.asarray(v)
            row[f"log_prob_b{batch}_{k}"] = {
                "median_ms": ms(np.median(v)), "p99_ms": ms(np.percentile(v, 99)),
                "examples_per_s": batch / float(np.median(v)), "calls": len(v)}
    for n_samples in (1, 256):
        n_t = tf.constant(n_samples, tf.int32)
        s_fn, sess = session_callable(
            path, "sample",
            {"n": np.int32(n_samples), "seed": np.array([1, 2], np.int32),
             "temperature": np.float32(1.0)}, "x_continuous" if levels else "x")
        sessions.append(sess)
        fns = {
            "a": lambda n_t=n_t: smp(n_t, seed).numpy(),
            "b": lambda n_t=n_t: sigs["sample"](n=n_t, seed=seed, temperature=temp)["x"].numpy(),
            "s": s_fn,
        }
        for k, v in interleave(fns, args.sample_calls, args.rounds).items():
            v = np.asarray(v)
            row[f"sample_n{n_samples}_{k}"] = {
                "median_ms": ms(np.median(v)), "p99_ms": ms(np.percentile(v, 99)),
                "calls": len(v)}
    for sess in sessions:
        sess.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return row


results = {}
for name in args.models.split(","):
    results[name] = bench_model(name)
    print(name, json.dumps(results[name], indent=1), flush=True)

uptime_after = uptime()
print("uptime:", uptime_after)

LABELS = {"a": "(a) in-process tf.function(model.log_prob / sample)",
          "b": "(b) SavedModel signature (tf.saved_model.load)",
          "s": "(s) SavedModel in a TF1 session (TF Serving's loader), make_callable"}
lines = [
    "| model | config | log_prob b=1 median / p99 (ms) | log_prob b=256 (examples/s) "
    "| sample n=1 (ms) | sample n=256 (ms) | b=1 vs (a) | b=256 vs (a) |",
    "|---|---|---|---|---|---|---|---|",
]
for name, row in results.items():
    for k in ("a", "b", "s"):
        b1, b256 = row[f"log_prob_b1_{k}"], row[f"log_prob_b256_{k}"]
        a1, a256 = row["log_prob_b1_a"], row["log_prob_b256_a"]
        lines.append(
            f"| {name} ({row['params'] / 1e6:.2f}M) | {LABELS[k].split(' ', 1)[0]} "
            f"| {b1['median_ms']:.3f} / {b1['p99_ms']:.3f} | {b256['examples_per_s']:,.0f} "
            f"| {row[f'sample_n1_{k}']['median_ms']:.3f} "
            f"| {row[f'sample_n256_{k}']['median_ms']:.2f} "
            f"| {b1['median_ms'] / a1['median_ms']:.2f}x "
            f"| {b256['median_ms'] / a256['median_ms']:.2f}x |")
legend = [f"{v}" for v in LABELS.values()]
md = "\n".join([
    "# Serving benchmark (`python bench/serving.py`)",
    "",
    *lines,
    "",
    "Configs: " + "; ".join(legend) + ". Latency = wall time of one call, result fetched to "
    "numpy; the last two columns are time ratios against (a) (target for (b): <= 1.2x).",
    "",
    f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF "
    f"{tf.__version__}. `uptime` before: `{uptime_before}`; after: `{uptime_after}`. "
    f"Waited {waited:.0f} s for other benchmarks; still running at start: "
    f"{len(still_running)}.",
    "",
])
print(md)
if not args.quick:
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump({"results": results, "uptime_before": uptime_before,
                   "uptime_after": uptime_after, "waited_s": waited,
                   "other_benchmarks_at_start": still_running, "argv": sys.argv,
                   "tensorflow": tf.__version__}, f, indent=2)
