"""Mixed precision on this CPU: training speed and memory of a small image flow, f32/bf16/fp16.

Run from the repo root (a few minutes on 2 cores):
    python bench/mixed_precision.py            # writes bench/mixed_precision.json and .md
    python bench/mixed_precision.py --quick --out /tmp/mp   # smoke test (8x8 images, seconds)
What runs, in ONE process: `tfp_nice.RealNVPImage` on --shape (default 16x16x1: 3 scales,
2 residual blocks, 16 filters, BatchNorm, logit preprocessing; 32 filters above 16x16, as the
`tfp-nice train --model realnvp-image` defaults), built three times from the same seed:
float32, and under `tfp_nice.precision.policy_scope("bfloat16")` and `("float16")`
(conditioners in half precision; log-dets, prior, BatchNorm and weights in float32; float16
adds Keras' LossScaleOptimizer). Each is compiled with Adam(1e-4) (--jit: XLA, as `tfp-nice
train` does; off by default)
and warmed up (trace/compile, --warmup steps), then --rounds rounds run each model for
--steps steps of `fit` on one fixed batch of --batch uniformly dequantized pixels, the order
rotated each round so machine noise hits all alike: ms/step is the median over rounds of the
per-round mean, and the ratio to float32 is taken within each round (median shown).
Memory: TF's BFC allocator on CPU (TF_CPU_ALLOCATOR_USE_BFC=true, set before TF loads; one
--reserve-mib region reserved first so chunk sizes are exact): peak bytes in use during one
timed fit of each model ("step peak" = peak minus bytes in use before it).
Warm-up: seconds of the first --warmup steps (trace, and with --jit the XLA compile, which
is slow on CPU for the mixed models: at 8x8 (--quick) 62 s float32, 82 s bfloat16, 208 s
float16; at 28x28 it ran past 10 minutes, so the README numbers are without XLA).
Accuracy: max |log p_mixed - log p_f32| per dimension on the batch, with the float32 model's
weights copied into the mixed one (after the warm-up steps, so the couplings are not the
identity). The machine's load average (other users share the cores) is recorded before and
after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2.0**20
PRECISIONS = ("float32", "bfloat16", "float16")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="16,16,1", help="H,W,C of the images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False,
                   help="XLA-compile the train step (as `tfp-nice train` does; slow to compile "
                        "on CPU, see the docstring)")
    p.add_argument("--reserve-mib", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="8x8x1, batch 16, 1 round: smoke test")
    p.add_argument("--out", default=os.path.join(HERE, "mixed_precision"),
                   help="output path without extension (.json and .md are written)")
    args = p.parse_args(argv)
    if args.quick:
        args.shape, args.batch, args.steps, args.rounds, args.warmup = "8,8,1", 16, 2, 1, 1
        args.reserve_mib = 64
    args.shape = tuple(int(s) for s in args.shape.split(","))
    return args


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _build(precision_name: str, shape, seed: int = 0):
    import keras

    import tfp_nice as tn

    keras.utils.set_random_seed(seed)
    half = None if precision_name == "float32" else precision_name
    scales = 3 if min(shape[:2]) >= 16 and shape[0] % 4 == 0 else 2
    with tn.precision.policy_scope(half):
        model = tn.RealNVPImage(list(shape), num_scales=scales, num_blocks=2,
                                filters=32 if shape[0] * shape[1] > 256 else 16,
                                data_scale=256.0, logit_alpha=0.05)
    return model


def _batch(shape, batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (batch, *shape)) + rng.uniform(0, 1, (batch, *shape))
            ).astype("float32")


def _timed_fit(model, x, steps: int) -> float:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors(x).repeat(steps)
    start = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def _memory(model, x, steps: int) -> tuple[float, float]:
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    _timed_fit(model, x, steps)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return peak / MIB, (peak - before) / MIB


def run(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    import tfp_nice as tn

    tf.raw_ops.Empty(shape=[args.reserve_mib, 2**20], dtype=tf.uint8)  # one region, then freed
    x = _batch(args.shape, args.batch)
    models, rows = {}, {}
    for name in PRECISIONS:
        model = _build(name, args.shape)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=args.jit)
        start = time.perf_counter()
        model.fit(tf.data.Dataset.from_tensors(x).repeat(args.warmup), epochs=1, verbose=0)
        models[name] = model
        print(f"{name}: built, warm-up {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
        rows[name] = dict(
            precision=name, warmup_s=time.perf_counter() - start,
            compute_dtypes=tn.precision.compute_dtypes(model),
            optimizer=type(model.optimizer).__name__,
            params=int(model.count_params()),
        )
    ref = models["float32"]
    d = int(np.prod(args.shape))
    for name in PRECISIONS:
        mixed = models[name]
        if name != "float32":
            saved = mixed.get_weights()
            mixed.set_weights(ref.get_weights())
            diff = np.abs(mixed.log_prob(x).numpy() - ref.log_prob(x).numpy()).max() / d
            mixed.set_weights(saved)
            rows[name]["max_abs_log_prob_diff_per_dim"] = float(diff)
        rows[name]["peak_mib"], rows[name]["step_peak_mib"] = _memory(mixed, x, args.steps)
    times = {name: [] for name in PRECISIONS}
    for r in range(args.rounds):
        order = PRECISIONS[r % 3:] + PRECISIONS[:r % 3]
        for name in order:
            times[name].append(_timed_fit(models[name], x, args.steps))
    for name in PRECISIONS:
        rows[name]["ms_per_step"] = 1e3 * statistics.median(times[name])
        rows[name]["ms_per_step_rounds"] = [1e3 * t for t in times[name]]
        rows[name]["img_per_s"] = args.batch / statistics.median(times[name])
        rows[name]["time_vs_float32"] = statistics.median(
            t / t0 for t, t0 in zip(times[name], times["float32"]))
        rows[name]["loss_finite"] = bool(np.isfinite(models[name].evaluate(x, verbose=0)))
    return rows


def table(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    lines = [
        f"RealNVPImage {'x'.join(map(str, env['shape']))}, batch {env['batch']}, "
        f"{'XLA' if env['jit'] else 'no XLA'}, {env['cpu']}, {env['cpus']} CPUs; load average "
        f"{env['load_before']} before, {env['load_after']} after (shared machine: ratios within "
        "one process, interleaved rounds)",
        "",
        "| precision | ms/step (median) | img/s | time vs f32 | peak (MiB) | step peak (MiB) "
        "| max \\|Δ log p\\|/dim vs f32 | warm-up (s) | compute dtypes | optimizer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = r.get("max_abs_log_prob_diff_per_dim")
        lines.append(
            f"| {r['precision']} | {r['ms_per_step']:.0f} | {r['img_per_s']:.0f} "
            f"| {r['time_vs_float32']:.2f}x | {r['peak_mib']:.1f} | {r['step_peak_mib']:.1f} "
            f"| {'-' if diff is None else f'{diff:.1e}'} | {r['warmup_s']:.0f} "
            f"| {', '.join(r['compute_dtypes'])} "
            f"| {r['optimizer']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = _parse(argv)
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # before TensorFlow loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_before = _load()
    rows = run(args)
    import tensorflow as tf

    env = dict(shape=list(args.shape), batch=args.batch, steps=args.steps, rounds=args.rounds,
               warmup=args.warmup, jit=args.jit, tensorflow=tf.__version__,
               python=sys.version.split()[0], cpu=platform.processor() or platform.machine(),
               cpus=os.cpu_count(), load_before=load_before, load_after=_load(),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    result = dict(environment=env, rows=[rows[p] for p in PRECISIONS])
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    md = table(result)
    with open(args.out + ".md", "w") as f:
        f.write("# Mixed precision on CPU (bench/mixed_precision.py)\n\n" + md)
    print(md)
    return result


if __name__ == "__main__":
    main()
