"""Serving latency and request batching, through the loader TF Serving runs (a TF1 session).

Run from the repo root on an otherwise idle machine:
    python bench/serving.py            # ~3 min
    python bench/serving.py --quick    # smoke test: few calls, no waiting, no files
Models:
  example: the shipped export saved_models/nice_digits (NICE, 4 couplings of 4x128 ReLU MLPs,
           trained on the 8x8 digits; what README's "Serve it" serves);
  digits:  the model `tfp-nice train` builds by default for the digits (NICE, 4 couplings of
           4x256; 0.86M params), exported with tfp_nice.export.save_for_serving.
Each export is loaded with tf.compat.v1.saved_model.load into a TF1 session (the loader TF
Serving uses) and each signature is called through `Session.make_callable`. Per signature:
  latency  a 1-row request (median and p99 over `--calls` calls);
  64 x 1   64 single-row requests run one by one (rows/s);
  merged   the same 64 requests merged into one batch the way TF Serving's batching does:
           inputs concatenated along dimension 0, one run, outputs split back per request
           (concatenation and split included in the time); rows/s and the ratio to 64 x 1
           (target >= 10x).
Plus, for log_prob, rows/s at batch sizes 1..256 (how batching_parameters.txt was chosen).
Calls of the configs alternate in `--rounds` rounds so machine noise hits them alike; each is
warmed up first. Before starting, waits (polling every 30 s, at most `--max-wait` s) until no
other `bench/` process runs, and records `uptime` before and after.
Writes bench/serving.md (tables) and bench/serving.json (everything).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--calls", type=int, default=200, help="1-row calls per signature")
p.add_argument("--repeats", type=int, default=10, help="64-request rounds per config")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--models", default="example,digits")
p.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for others")
p.add_argument("--quick", action="store_true", help="few calls, no waiting, no files")
p.add_argument("--out", default=os.path.join(ROOT, "bench", "serving"),
               help="output path, no extension")
args = p.parse_args()
if args.quick:
    args.calls, args.repeats, args.rounds = 10, 2, 2

REQUESTS = 64  # single-row requests merged into one batch
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
    while (others := other_benchmarks()) and waited < args.max_wait:
        print(f"waiting for other benchmarks: {others}", flush=True)
        time.sleep(30)
        waited += 30
still_running = other_benchmarks()
uptime_before = uptime()
print("uptime:", uptime_before, flush=True)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from tfp_nice import data as data_lib  # noqa: E402
from tfp_nice import export, training  # noqa: E402

DIGITS = data_lib.DataSpec("digits", (8, 8, 1), num_levels=17, low=0.0, high=16.0)


def export_path(name: str, tmp: str) -> str:
    if name == "example":
        base = os.path.join(ROOT, "saved_models", "nice_digits")
        return os.path.join(base, str(max(export.versions.versions(base))))
    model = training.build_model(training.TrainConfig(), DIGITS)
    return export.save_for_serving(model, os.path.join(tmp, name), data=DIGITS, warmup=False)


class Session:
    """A TF1 session over the export; ``callable(signature)`` runs feeds -> outputs."""

    def __init__(self, path: str):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.sess = tf.compat.v1.Session(graph=self.graph)
            self.meta = tf.compat.v1.saved_model.load(self.sess, ["serve"], path)

    def callable(self, signature: str, inputs: list[str]):
        sig = self.meta.signature_def[signature]
        keys = sorted(sig.outputs)
        fn = self.sess.make_callable([sig.outputs[k].name for k in keys],
                                     [sig.inputs[n].name for n in inputs])
        return lambda *feeds: dict(zip(keys, fn(*feeds)))


def requests(signature: str, rng, n: int) -> list[dict]:
    """``n`` valid single-row requests of ``signature`` for the digits."""
    out = []
    for i in range(n):
        if signature == "sample":
            out.append({"seed": np.array([[1, i]], np.int32),
                        "temperature": np.array([0.7], np.float32)})
        elif signature == "decode":
            out.append({"z": rng.logistic(size=(1, 64)).astype(np.float32)})
        else:
            out.append({"x": rng.integers(0, 17, (1, 8, 8, 1)).astype(np.float32)})
    return out


def one_by_one(fn, names, reqs):
    return lambda: [fn(*[r[k] for k in names]) for r in reqs]


def merged(fn, names, reqs):
    """TF Serving's batching: concatenate inputs along dimension 0, run once, split."""
    def run():
        out = fn(*[np.concatenate([r[k] for r in reqs]) for k in names])
        return [{k: v[i : i + 1] for k, v in out.items()} for i in range(len(reqs))]
    return run


def timed(fn, k):
    out = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleave(fns: dict, calls: int, rounds: int) -> dict[str, np.ndarray]:
    for fn in fns.values():  # warm-up: first-run graph optimisation
        for _ in range(3):
            fn()
    times = {k: [] for k in fns}
    per_round = max(1, calls // rounds)
    for r in range(rounds):
        keys = list(fns)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate the start
        for k in keys:
            times[k] += timed(fns[k], per_round)
    return {k: np.asarray(v) for k, v in times.items()}


def bench_signature(session: Session, signature: str, rng) -> dict:
    reqs = requests(signature, rng, REQUESTS)
    names = sorted(reqs[0])
    fn = session.callable(signature, names)
    separate, together = one_by_one(fn, names, reqs)(), merged(fn, names, reqs)()
    for a, b in zip(separate, together):  # the same rows either way
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
    single = reqs[0]
    t = interleave({"latency": lambda: fn(*[single[k] for k in names])}, args.calls,
                   args.rounds)["latency"]
    tt = interleave({"one_by_one": one_by_one(fn, names, reqs),
                     "merged": merged(fn, names, reqs)}, args.repeats, args.rounds)
    row = {"latency_1_row_ms": {"median": 1e3 * np.median(t), "p99": 1e3 * np.percentile(t, 99),
                                "calls": len(t)}}
    for k, v in tt.items():
        row[f"{k}_rows_per_s"] = REQUESTS / float(np.median(v))
    row["merged_vs_one_by_one"] = row["merged_rows_per_s"] / row["one_by_one_rows_per_s"]
    return row


def sweep(session: Session, rng) -> dict:
    fn = session.callable("log_prob", ["x"])
    xs = {b: rng.integers(0, 17, (b, 8, 8, 1)).astype(np.float32) for b in SWEEP}
    fns = {b: (lambda x=x: fn(x)) for b, x in xs.items()}
    times = interleave(fns, args.repeats * 3, args.rounds)
    return {str(b): {"median_ms": 1e3 * float(np.median(v)),
                     "rows_per_s": b / float(np.median(v))} for b, v in times.items()}


def bench_model(name: str) -> dict:
    tmp = tempfile.mkdtemp(prefix="tfp_nice_bench_")
    try:
        path = export_path(name, tmp)
        session = Session(path)
        rng = np.random.default_rng(0)
        out = {"path": os.path.relpath(path, ROOT) if name == "example" else name,
               "signatures": {s: bench_signature(session, s, rng)
                              for s in ("log_prob", "sample", "encode", "decode")},
               "log_prob_batch_sweep": sweep(session, rng)}
        session.sess.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


results = {}
for model_name in args.models.split(","):
    results[model_name] = bench_model(model_name)
    print(model_name, json.dumps(results[model_name], indent=1), flush=True)
uptime_after = uptime()
print("uptime:", uptime_after)

lines = ["| model | signature | 1-row latency median / p99 (ms) | 64 × 1 row (rows/s) "
         "| 64 merged (rows/s) | merged / one by one |", "|---|---|---|---|---|---|"]
for name, res in results.items():
    for sig, row in res["signatures"].items():
        lat = row["latency_1_row_ms"]
        lines.append(f"| {name} | `{sig}` | {lat['median']:.3f} / {lat['p99']:.3f} "
                     f"| {row['one_by_one_rows_per_s']:,.0f} | {row['merged_rows_per_s']:,.0f} "
                     f"| **{row['merged_vs_one_by_one']:.1f}×** |")
sweep_lines = ["| model | " + " | ".join(f"b={b}" for b in SWEEP) + " |",
               "|---|" + "---|" * len(SWEEP)]
for name, res in results.items():
    sweep_lines.append(f"| {name} | " + " | ".join(
        f"{res['log_prob_batch_sweep'][str(b)]['rows_per_s']:,.0f}" for b in SWEEP) + " |")
md = "\n".join([
    "# Serving benchmark (`python bench/serving.py`)",
    "",
    "Through a TF1 session over the SavedModel (the loader TF Serving runs), "
    "`Session.make_callable`; merged = 64 single-row requests concatenated along dimension 0, "
    "one run, outputs split back (as `--enable_batching` does; target ≥ 10× one by one).",
    "",
    *lines,
    "",
    "`log_prob` rows/s by batch size (how `saved_models/batching_parameters.txt` was chosen):",
    "",
    *sweep_lines,
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
