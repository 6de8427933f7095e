"""Two-worker loopback training logs the single-worker loss: the digits NICE, step by step.

Run from the repo root (about a minute on 2 CPUs):
    python bench/multiworker.py               # 20 steps of global batch 64
    python bench/multiworker.py --steps 40
Runs, each in its own process(es), with the same seed, data pipeline and initial weights:
  (mw) two MultiWorkerMirroredStrategy workers on 127.0.0.1 (TF_CONFIG), tfp_nice.distributed.fit:
       each global batch of 64 is split 32/32 across the workers (the last one of an epoch 20/21);
  (1)  one process, the default strategy, tfp_nice.distributed.fit (the same code path);
  (k)  one process, Keras `Model.fit` (the contract the engine copies; float32 loss tracker).
The model is `tfp-nice train`'s digits NICE: NICE([8, 8, 1]) with 4 couplings of 2x64 ReLU,
data_scale 17, Adam(1e-3), float32; data: the 1257 training digits of tfp_nice.data, uniformly
dequantized by tfp_nice.data.as_dataset (seeded), 20 batches per epoch. Compared: the logged
`loss` at each of the first --steps batch ends (fit's running mean), the per-step batch loss
(recovered from the running mean of (mw) and (1), which tfp_nice logs in float64), the
validation NLL after the epoch(s), and the weights. Target: max relative difference of the
logged loss (mw) vs (1) over the first 20 steps <= 1e-5 (issue #15).
Writes bench/multiworker.json and bench/multiworker.md (and prints the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=20, help="batches compared (global batch 64)")
p.add_argument("--role", choices=["mw", "single", "keras"], help=argparse.SUPPRESS)
p.add_argument("--result", help=argparse.SUPPRESS)
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "multiworker"), help="output path, no extension")
args = p.parse_args()
BATCH, TRAIN_SIZE, TARGET = 64, 1257, 1e-5
EPOCHS = math.ceil(args.steps / math.ceil(TRAIN_SIZE / BATCH))


def role(name: str, result: str) -> None:
    """One training process; writes its logged losses, val_loss and weights to ``result``."""
    from tfp_nice import distributed

    strategy = distributed.make_strategy("multiworker" if name == "mw" else "none")
    import keras
    import numpy as np

    import tfp_nice as tn
    from tfp_nice import data

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.loss = []

        def on_train_batch_end(self, batch, logs=None):
            self.loss.append(float(logs["loss"]))

    keras.utils.set_random_seed(0)
    splits = data.load("digits")
    train = data.as_dataset(splits.train, splits.spec, BATCH, training=True, seed=0)
    val = data.as_dataset(splits.validation, splits.spec, 256, training=False, seed=0)
    with strategy.scope():
        model = tn.NICE([8, 8, 1], num_couplings=4, hidden_units=(64, 64), data_scale=17.0,
                        data_low=0.0, name="nice")
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    rec = Record()
    start = time.perf_counter()
    if name == "keras":
        h = model.fit(train, epochs=EPOCHS, validation_data=val, callbacks=[rec], verbose=0)
    else:
        h = distributed.fit(model, train, epochs=EPOCHS, validation_data=val, callbacks=[rec],
                            verbose=0)
    seconds = time.perf_counter() - start
    np.savez(result, loss=np.asarray(rec.loss), val_loss=np.asarray(h.history["val_loss"]),
             chief=distributed.is_chief(strategy), seconds=seconds,
             replicas=strategy.num_replicas_in_sync,
             **{f"w{i}": w for i, w in enumerate(model.get_weights())})


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def launch(name: str, results: list[str], tf_configs: list[str | None]) -> None:
    """Starts one process per result path, waits for all; every process is killed at the end."""
    procs = []
    try:
        for result, tf_config in zip(results, tf_configs):
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env.update(TF_CPP_MIN_LOG_LEVEL="3", **({"TF_CONFIG": tf_config} if tf_config else {}))
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--steps", str(args.steps), "--role", name,
                 "--result", result], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode:
                raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{out[-3000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def step_losses(logged, per_epoch: int, last: int) -> list[float]:
    """Per-batch losses from fit's running mean (weighted by batch size) within each epoch."""
    out, total, count = [], 0.0, 0
    for i, mean in enumerate(logged):
        pos = i % per_epoch
        if pos == 0:
            total, count = 0.0, 0
        n = last if pos == per_epoch - 1 else BATCH
        out.append((mean * (count + n) - total) / n)
        total, count = mean * (count + n), count + n
    return out


def main() -> None:
    import numpy as np

    tmp = os.path.abspath(args.out + ".tmp")
    os.makedirs(tmp, exist_ok=True)
    paths = {k: os.path.join(tmp, f"{k}.npz") for k in ("mw0", "mw1", "single", "keras")}
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    configs = [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
               for i in range(2)]
    t0 = time.perf_counter()
    launch("mw", [paths["mw0"], paths["mw1"]], configs)
    launch("single", [paths["single"]], [None])
    launch("keras", [paths["keras"]], [None])
    wall = time.perf_counter() - t0
    res = {}
    for k, path in paths.items():
        with np.load(path) as z:
            res[k] = {f: z[f] for f in z.files}
        os.remove(path)
    os.rmdir(tmp)
    n = args.steps
    per_epoch = math.ceil(TRAIN_SIZE / BATCH)
    last = TRAIN_SIZE - (per_epoch - 1) * BATCH
    loss = {k: np.asarray(r["loss"][:n], np.float64) for k, r in res.items()}
    step = {k: np.asarray(step_losses(loss[k], per_epoch, last)) for k in ("mw0", "single")}

    def rel(a, b):
        return float(np.max(np.abs(a - b) / np.abs(b)))

    def wdiff(a, b):
        return float(max(np.max(np.abs(res[a][f] - res[b][f])) for f in res[a] if f[0] == "w"))

    report = {
        "steps": n, "global_batch": BATCH, "epochs": EPOCHS, "target_rel": TARGET,
        "logged_loss": {k: loss[k].tolist() for k in ("mw0", "single", "keras")},
        "max_rel_logged_mw_vs_single": rel(loss["mw0"], loss["single"]),
        "max_rel_logged_mw_vs_keras_fit": rel(loss["mw0"], loss["keras"]),
        "max_rel_step_loss_mw_vs_single": rel(step["mw0"], step["single"]),
        "worker_equals_chief_loss": bool(np.array_equal(loss["mw0"], loss["mw1"])),
        "max_abs_weight_diff_worker_vs_chief": wdiff("mw0", "mw1"),
        "max_abs_weight_diff_mw_vs_single": wdiff("mw0", "single"),
        "max_abs_weight_diff_mw_vs_keras_fit": wdiff("mw0", "keras"),
        "val_loss": {k: res[k]["val_loss"].tolist() for k in ("mw0", "single", "keras")},
        "replicas": {k: int(res[k]["replicas"]) for k in ("mw0", "single", "keras")},
        "chief": [bool(res["mw0"]["chief"]), bool(res["mw1"]["chief"])],
        "wall_seconds_all_runs": wall,
        "versions": versions(), "cpus": os.cpu_count(), "machine": platform.machine(),
    }
    report["target_met"] = report["max_rel_logged_mw_vs_single"] <= TARGET
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    md = markdown(report)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


def versions() -> dict:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}


def markdown(r: dict) -> str:
    v = r["versions"]
    rows = [
        ("logged loss, max relative difference (mw) vs (1)", r["max_rel_logged_mw_vs_single"],
         f"<= {TARGET:g}: {'met' if r['target_met'] else 'NOT met'}"),
        ("per-step batch loss, max relative difference (mw) vs (1)",
         r["max_rel_step_loss_mw_vs_single"], ""),
        ("logged loss, max relative difference (mw) vs (k) Keras fit",
         r["max_rel_logged_mw_vs_keras_fit"], ""),
        ("weights after the run, max abs difference worker 1 vs chief",
         r["max_abs_weight_diff_worker_vs_chief"], "identical"),
        ("weights, max abs difference (mw) vs (1)", r["max_abs_weight_diff_mw_vs_single"], ""),
        ("weights, max abs difference (mw) vs (k)", r["max_abs_weight_diff_mw_vs_keras_fit"], ""),
    ]
    lines = [
        "# Multi-worker training: `bench/multiworker.py`", "",
        f"Digits NICE, global batch {r['global_batch']}, first {r['steps']} steps "
        f"({r['epochs']} epoch(s)), float32, fixed seeds; (mw) = 2 MultiWorkerMirroredStrategy "
        f"workers on 127.0.0.1 ({r['replicas']['mw0']} replicas), (1) = one process, "
        f"tfp_nice.distributed.fit, (k) = one process, Keras fit. TF {v['tensorflow']}, "
        f"Keras {v['keras']}, {r['cpus']} CPUs (all processes share them).", "",
        "| quantity | value | target |", "|---|---|---|",
        *[f"| {name} | {value:.2e} | {target} |" for name, value, target in rows], "",
        "| step | (mw) logged loss | (1) | (k) |", "|---|---|---|---|",
        *[f"| {i + 1} | {a:.7f} | {b:.7f} | {c:.7f} |" for i, (a, b, c) in enumerate(zip(
            r["logged_loss"]["mw0"], r["logged_loss"]["single"], r["logged_loss"]["keras"]))],
        "",
        f"val_loss after the run: (mw) {r['val_loss']['mw0'][-1]:.6f}, "
        f"(1) {r['val_loss']['single'][-1]:.6f}, (k) {r['val_loss']['keras'][-1]:.6f}. "
        f"The worker logged the chief's losses exactly: {r['worker_equals_chief_loss']}.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if args.role:
        role(args.role, args.result)
    else:
        main()
