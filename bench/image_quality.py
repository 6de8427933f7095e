"""Held-out bits/dim after the same training time: vector NICE, vector RealNVP, image RealNVP, Glow.

Run from the repo root on an otherwise idle machine (the default takes ~20 minutes):
    python bench/image_quality.py                  # 180 s of training per model
    python bench/image_quality.py --seconds 300    # a longer budget
    python bench/image_quality.py --quick          # smoke test: 15 s per model
    python bench/image_quality.py --data ../shared/data/mnist-train-19690.npz --seconds 900
                                                   # real 28x28 MNIST digits, 15 minutes each
    python bench/image_quality.py --data mnist.npz # your [N, 28, 28, 1] uint8 images instead

Every model gets the same wall-clock training budget (`--seconds`); results go to
bench/image_quality.{md,json} for the digits and bench/image_quality_<data file name>.{md,json}
for `--data PATH` (`--out` overrides).

Data: `--data` is anything `tfp-nice train --data` takes (`tfp_nice.data.load`): a `.npy` of
`[N, H, W, C]` uint8 images (256 levels; validation and test are carved from it with `--seed`),
a `.npz` with `x_train` (+ `x_test`), or `tfds:NAME`. The models then get `tfp-nice train`'s
defaults for that shape (784-dim vectors: NICE 4x256 MLPs, RealNVP 6 couplings of 2x256;
28x28 images: 3 scales, 32 base filters).


Default data: `tfp_nice.data.load("digits")`, scikit-learn's 8x8 digits (17 grey levels) with the
package's fixed split: 1257 train / 270 validation / 270 test images, uniformly dequantized to
[0, 17)^64 by `as_dataset`. bits/dim = NLL / (64 ln 2) in that space, every preprocessing
log-det included (the package's formula, README "bits/dim").

Models: the three `tfp-nice train` presets with their digits defaults, built by
`tfp_nice.training.build_model(TrainConfig(model=NAME), spec)`, i.e. exactly what
`tfp-nice train --model NAME --data digits` trains:
  nice           NICE: rescale(17) -> flatten -> 4 additive couplings (even/odd, 4x256 ReLU MLPs)
                 -> diagonal scale -> logistic prior; data-dependent scale init as `train` does.
  realnvp        RealNVP, vector: rescale(17) -> logit(0.05) -> flatten -> 6 affine couplings
                 (half masks alternating, 2x256 ReLU MLPs, s = c*tanh(h)) -> N(0, I).
  realnvp-image  RealNVPImage: rescale(17) -> logit(0.05) -> 2 scales of RealNVP's multi-scale
                 architecture (3 checkerboard + squeeze + 3 channel couplings, factor out half;
                 4 checkerboard couplings on 4x4x2), masked ResNet conditioners (2 blocks,
                 16/32 filters, weight norm), batch norm after every coupling -> N(0, I).
  glow           Glow: rescale(L) -> logit(0.05) -> `tn.glow_defaults(shape)` levels of (squeeze,
                 K steps of ActNorm -> invertible 1x1 conv -> affine coupling with Glow's
                 3x3/1x1/zero-init 3x3 conv net and sigmoid scale, split) -> N(0, I); ActNorm
                 initialised on the first batch. `tfp-nice train --model glow`'s model where the
                 installed `tfp_nice.training` knows it, else the preset with these defaults.

Protocol (identical for all): Adam at the model's default learning rate (1e-3; Glow 2e-3, see
`tn.glow_defaults`), batch 64 (full batches only: the left-over examples of each shuffled epoch
are dropped so no second graph is compiled), XLA (`jit_compile=True`, as `tfp-nice train`;
`--xla off` for TF's own kernels: on these 2 CPU cores XLA's convolutions made a Glow training
step 2.1x slower). Before the clock starts:
one validation pass (traces the evaluation function) and one training step (traces and
XLA-compiles the training step; its update is kept and counted as step 1, its wall time is
reported as "compile s"). The budget (`--seconds`) then covers training steps, a validation
pass after every epoch (exact mean NLL over the fixed dequantized validation pipeline) and
best-weight copies; it is checked after every step and the partial last epoch is validated
too. The weights with the best validation NLL are restored and the held-out TEST NLL is
computed with `tfp_nice.training.evaluate_nll` (256-example batches, fixed dequantization).
"img/s" = training images per second over the budget's training steps only (validation
excluded). Batch-norm models are evaluated in inference mode (moving averages).

Before the timed runs the script waits until no other `bench/` process runs (polling every
30 s, up to 20 minutes) and records `uptime` before and after. Results go to
bench/image_quality.md (Markdown) and bench/image_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfp_nice import data as data_lib  # noqa: E402
from tfp_nice import training  # noqa: E402
from tfp_nice.presets import Glow, glow_defaults  # noqa: E402

MODELS = ("nice", "realnvp", "realnvp-image", "glow")
#: Models the `--image-kwargs` / `--glow-kwargs` JSON overrides apply to.
_KWARGS_MODELS = {"realnvp-image": "image_kwargs", "glow": "glow_kwargs"}
HERE = os.path.dirname(os.path.abspath(__file__))


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def wait_for_idle(poll: float = 30.0, limit: float = 1200.0) -> float:
    """Waits until `pgrep -f bench/` lists no process but this one; returns seconds waited."""
    mine = {os.getpid(), os.getppid()}
    start = time.time()
    while True:
        out = subprocess.run(["pgrep", "-f", "bench/"], capture_output=True, text=True).stdout
        others = [int(p) for p in out.split() if int(p) not in mine]
        others = [p for p in others if _cmdline(p) and "pgrep" not in _cmdline(p)]
        if not others or time.time() - start > limit:
            if others:
                print(f"other benchmarks still running after {limit:.0f} s: {others}; going on")
            return time.time() - start
        print(f"waiting for other benchmarks to finish: {[_cmdline(p) for p in others]}")
        time.sleep(poll)


def _slug(data: str) -> str:
    """``../shared/data/mnist-train-19690.npz`` -> ``mnist-train-19690``."""
    base = os.path.splitext(os.path.basename(data.rstrip("/")))[0] or "data"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in base)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def build(name: str, spec: data_lib.DataSpec, seed: int):
    """``(model, learning rate)``: what ``tfp-nice train --model NAME`` trains on ``spec``."""
    if name not in training.MODELS and name == "glow":  # a `tfp_nice.training` without Glow
        kwargs = dict(glow_defaults(spec.event_shape), data_scale=float(spec.num_levels or 1),
                      data_low=float(spec.low), logit_alpha=0.05)
        return Glow(list(spec.event_shape), name="glow", **kwargs), 2e-3
    cfg = training.TrainConfig(model=name, data=spec.name, seed=seed)
    return training.build_model(cfg, spec), training.default_hparams(cfg, spec)["learning_rate"]


def run_one(name: str, splits, seconds: float, batch: int, seed: int,
            kwargs: dict | None = None, xla: bool = True) -> dict:
    spec = splits.spec
    keras.utils.set_random_seed(seed)
    model, learning_rate = build(name, spec, seed)
    if kwargs:  # a variant of the preset (--image-kwargs, --glow-kwargs)
        model = type(model).from_config(dict(model.get_config(), **kwargs))
    if hasattr(model, "initialize_scale"):  # as `tfp-nice train` does for NICE
        first = data_lib.as_dataset(splits.train[:1024], spec, 1024, training=False)
        model.initialize_scale(next(iter(first)))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=xla)
    train_ds = data_lib.as_dataset(splits.train, spec, batch, training=True, seed=seed)
    train_ds = train_ds.filter(lambda b: tf.shape(b)[0] == batch)
    model.initialize_from_data(next(iter(train_ds)))  # ActNorm (Glow), as `fit` does; else no-op
    val_ds = data_lib.as_dataset(splits.validation, spec, 256, training=False, seed=seed)
    val_fn = tf.function(lambda b: tf.reduce_sum(model(b)))

    def validate() -> float:
        return sum(float(val_fn(b)) for b in val_ds) / len(splits.validation)

    to_bpd = 1.0 / (spec.num_dims * math.log(2.0))
    val0 = validate()  # traces the evaluation function (outside the budget)
    it = iter(train_ds)
    t0 = time.perf_counter()
    model.train_on_batch(next(it))  # traces + compiles the training step (outside the budget)
    compile_s = time.perf_counter() - t0
    steps, epochs, train_time = 1, 0, 0.0
    best = (validate(), [w.numpy().copy() for w in model.weights], 0)
    history = [(0, val0 * to_bpd)]
    start = time.perf_counter()
    finished = False
    while not finished:
        for b in it:
            t = time.perf_counter()
            loss = model.train_on_batch(b)
            train_time += time.perf_counter() - t
            steps += 1
            if not math.isfinite(float(loss)):
                finished = True
                break
            if time.perf_counter() - start > seconds:
                finished = True
                break
        else:
            epochs += 1
        val = validate()
        history.append((steps, val * to_bpd))
        if math.isfinite(val) and val < best[0]:
            best = (val, [w.numpy().copy() for w in model.weights], steps)
        it = iter(train_ds)
    wall = time.perf_counter() - start
    for w, v in zip(model.weights, best[1]):
        w.assign(v)
    test_nll, test_bpd = training.evaluate_nll(model, splits.test, spec)
    return {
        "model": name,
        "params": int(model.count_params()),
        "learning_rate": learning_rate,
        "compile_s": compile_s,
        "budget_s": seconds,
        "wall_s": wall,
        "steps": steps,
        "epochs": epochs,
        "images_per_s": (steps - 1) * batch / max(train_time, 1e-9),
        "val_bpd_start": val0 * to_bpd,
        "best_val_bpd": best[0] * to_bpd,
        "best_step": best[2],
        "test_nll": test_nll,
        "test_bpd": test_bpd,
        "history": history,
    }


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Image quality at equal training time ({meta['data_title']})",
        "",
        f"Generated by `python bench/image_quality.py --seconds {meta['seconds']:g}"
        f"{meta['data_arg']}{meta.get('extra_args', '')}` on "
        f"{meta['date']} ({meta['machine']}).",
        "",
        f"- `uptime` before: `{meta['uptime_before']}`",
        f"- `uptime` after: `{meta['uptime_after']}`",
        f"- waited {meta['waited_s']:.0f} s for other `bench/` processes to finish",
        "",
        "Held-out test bits/dim (lower is better) of the weights with the best validation NLL "
        f"after {meta['seconds']:g} s of training each (compilation excluded, listed apart); "
        f"{meta['data_line']}; batch {meta['batch']}, Adam at each model's learning rate "
        f"(lr column), {'XLA' if meta.get('xla', True) else 'no XLA'}.",
        "",
        "| model | params | lr | compile s | steps (epochs) | train img/s | val bits/dim at start "
        "| best val bits/dim (step) | **test bits/dim** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r.get('learning_rate', 1e-3):g} | "
            f"{r['compile_s']:.0f} | {r['steps']} "
            f"({r['epochs']}) | {r['images_per_s']:,.0f} | {r['val_bpd_start']:.3f} | "
            f"{r['best_val_bpd']:.3f} ({r['best_step']}) | **{r['test_bpd']:.3f}** |"
        )
    lines += [
        "",
        "Far references (different data and budget; not comparable):",
        "",
        "| model | data | bits/dim | source |",
        "|---|---|---:|---|",
        "| NICE | MNIST 28x28, 256 levels, 1500 epochs | 4.36 | NICE paper, 1980.50 nats "
        "converted |",
        "| RealNVP (multi-scale) | MNIST 28x28, 256 levels | ~1.06 | Glow / FFJORD tables |",
        "",
        "These papers model 28x28 MNIST with 256 grey levels for hundreds of epochs on GPUs; "
        + ("here 8x8 digits have 17 levels (uniform noise on a coarser grid) and "
           if meta["data_arg"] == "" else f"here the data are {meta['data_title']} and ")
        + f"training takes {meta['seconds']:g} s per model on {os.cpu_count()} CPU cores, so "
        "the numbers differ in scale and are shown only as orientation.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None,
                   help="training budget per model (default 180; 15 with --quick)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--data", default="digits",
                   help="'digits' (default), a .npy/.npz of [N, H, W, C] images, or tfds:NAME")
    p.add_argument("--image-kwargs", default=None,
                   help="JSON RealNVPImage arguments overriding the preset, "
                        "e.g. '{\"filters\": 16}'")
    p.add_argument("--glow-kwargs", default=None,
                   help="JSON Glow arguments overriding the preset, e.g. '{\"num_steps\": 8}'")
    p.add_argument("--xla", choices=("on", "off"), default="on",
                   help="jit_compile for every model (default on, as tfp-nice train)")
    p.add_argument("--quick", action="store_true",
                   help="no idle wait, no files written (and 15 s per model by default)")
    p.add_argument("--out", default=None,
                   help="output path without extension (default bench/image_quality for the "
                        "digits, bench/image_quality_<data file name> for --data PATH)")
    args = p.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"--models must be a comma-separated subset of {list(MODELS)}. "
                f"Received: {unknown[0]!r}")
    seconds = args.seconds if args.seconds is not None else (15.0 if args.quick else 180.0)
    waited = 0.0 if args.quick else wait_for_idle()
    meta = {
        "seconds": seconds,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores, TF {tf.__version__}, Keras {keras.__version__}",
        "uptime_before": _uptime(),
        "waited_s": waited,
    }
    try:
        splits = data_lib.load(args.data, seed=args.seed)
    except data_lib.DataError as e:
        p.error(str(e))
    spec = splits.spec
    if len(spec.event_shape) != 3:
        p.error(f"--data must hold images [N, H, W, C]. Received {args.data!r} with event "
                f"shape {list(spec.event_shape)}")
    shape = "x".join(str(d) for d in spec.event_shape[:2])
    meta.update(
        batch=args.batch,
        xla=args.xla == "on",
        extra_args="".join(
            [f" --models {args.models}" if args.models != ",".join(MODELS) else "",
             f" --batch {args.batch}" if args.batch != 64 else "",
             " --xla off" if args.xla == "off" else ""]
            + [f" --{k.replace('_', '-')} '{getattr(args, k)}'" for k in _KWARGS_MODELS.values()
               if getattr(args, k)]),
        data_title="8x8 digits" if args.data == "digits" else f"{shape} images, {args.data}",
        data_arg="" if args.data == "digits" else f" --data {args.data}",
        data_line=(f"{args.data}: {list(spec.event_shape)}, split "
                   f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)}, "
                   f"{spec.num_levels} levels, dequantized"
                   if spec.num_levels else
                   f"{args.data}: {list(spec.event_shape)}, continuous, split "
                   f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)}"),
    )
    results = []
    for name in names:
        print(f"training {name} for {seconds:g} s ...", flush=True)
        raw = getattr(args, _KWARGS_MODELS.get(name, ""), None)
        kw = json.loads(raw) if raw else None
        r = run_one(name, splits, seconds, args.batch, args.seed, kw, args.xla == "on")
        if kw:
            r["model"] = f"{name} {json.dumps(kw)}"
        print(f"  {name}: test {r['test_bpd']:.3f} bits/dim, {r['steps']} steps, "
              f"{r['images_per_s']:.0f} img/s, compile {r['compile_s']:.0f} s", flush=True)
        results.append(r)
    meta["uptime_after"] = _uptime()
    md = to_markdown(results, meta)
    if not args.quick:
        out = args.out or os.path.join(HERE, "image_quality" + (
            "" if args.data == "digits" else "_" + _slug(args.data)))
        with open(out + ".md", "w") as f:
            f.write(md)
        with open(out + ".json", "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
