"""Density quality at equal wall-clock time on the digits split: tfp_nice vs TFP's tfb.RealNVP.

Run from the repo root on an otherwise idle machine (the default takes ~7 minutes):
    python bench/digits_quality.py                 # 90 s of training per model
    python bench/digits_quality.py --seconds 180   # longer budget
    python bench/digits_quality.py --quick         # smoke test: 8 s per model
    python bench/digits_quality.py --lrs 1e-3,3e-4 # per model: the best by VALIDATION NLL

Models (all on `tfp_nice.data.load("digits")`: 1257 train / 270 validation / 270 test 8x8x1
images with 17 levels, uniformly dequantized by `as_dataset` to the data space [0, 17)^64):
  nice      (1) tfp_nice `NICE` preset, `training.build_model(TrainConfig(model="nice"), spec)`:
            rescale(17) -> flatten -> 4 additive couplings (even/odd, 4x256 ReLU MLPs)
            -> diagonal scale -> logistic prior; the scale initialised from the first 1024
            training images (`NICE.initialize_scale`, as `tfp-nice train`). Trained with `fit`.
  realnvp   (2) tfp_nice `RealNVP` preset, `build_model(TrainConfig(model="realnvp"), spec)`:
            rescale(17) -> logit(0.05) -> flatten -> 6 affine couplings (half masks alternating,
            2x256 ReLU MLPs, zero-initialised output layer, s = c*tanh(h)) -> N(0, I).
            Trained with Keras `model.fit`.
  tfp       (3) TFP's own `tfb.RealNVP(num_masked=32, shift_and_log_scale_fn=
            tfb.real_nvp_default_template(hidden_layers=[256, 256]))` x 6 with `tfb.Permute`
            reversals between them, the SAME preprocessing steps in front
            (`preprocessing.rescale(17.0) + preprocessing.logit(0.05)` + `tfb.Reshape` to 64),
            N(0, I) base, in a `tfd.TransformedDistribution`, exactly as TFP ships it (glorot
            kernels everywhere, unconstrained log-scale). The template's tf1 variables are
            invisible to Keras, so it is trained by a `tf.function` + `tf.GradientTape` loop
            over `template.trainable_variables` (created by one eager log_prob) with a Keras 3 Adam.
  tfp_init  (3') the same, but `real_nvp_default_template(..., kernel_initializer=
            glorot_uniform with variance x --tfp-init-scale (0.1))`, passed through the
            template's documented `**kwargs` (`tf.layers.dense` arguments). Reason: as shipped,
            (3)'s log-scales compound through 6 couplings on logit inputs and log p(x) is
            NaN/inf for most examples AT INITIALISATION (every seed we tried), so (3) cannot
            train; 0.1 is the largest of {1, 0.1, 0.01} with finite initial log-probs.
            The kwargs reach every dense layer (TFP offers no way to init only the output).
The architecture hyper-parameters are the package's digits defaults (`training.default_hparams`);
(2), (3) and (3') have the same couplings and widths, so their parameter counts differ only by
tfp_nice's per-unit tanh scale `c` (32 per coupling).

Protocol (identical for all): batch `--batch` (64) from `as_dataset(train, spec, B, training=True)`,
Adam(`--lr` = 1e-3, the package default; `--lrs a,b,..` trains each model once per rate and
keeps the rate with the best VALIDATION NLL), XLA on (`--jit 1`; `tfp_nice.training.train`
compiles with jit_compile=True too) for the training step; validation NLL (exact mean over the
fixed, dequantized validation pipeline) before training (outside the budget) and after every
epoch of the training pipeline (20 steps at B=64), keeping the weights with the best
validation NLL; a non-finite training loss stops that run (the best weights are kept).
The budget clock (`--seconds`) starts right before the first training step, so it INCLUDES
tracing/XLA compilation (for the batch of 64 and for the last, partial batch of 41), the
validation passes and the best-weight copies; it is checked after every step, and the partial
last epoch is validated too. After training, the best weights are restored and the held-out
TEST NLL is computed on `as_dataset(test, spec, 256, training=False)` as the mean of -log p(x)
including every preprocessing log-det; bits/dim = NLL / (64 ln 2).
"img/s (train)" = images per second of the training steps except the first step of each batch
shape (those are tracing + XLA compile, reported as "compile s"); "img/s (budget)" = images /
whole budget. Sampling: `dist.sample(256, seed=<stateless tensor seed>)` in a tf.function
(tracing untimed), repeated for >= 1.5 s; eager `sample(256)` is timed too.
A parity check builds a fresh RealNVP preset (identity at init) and the TFP flow with every
template variable set to 0 (also the identity) and compares their test NLLs: they must agree,
which shows both evaluate the same density of the same preprocessing.

Writes bench/digits_quality.{md,json} (and .png with samples if matplotlib is available).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--seconds", type=float, default=90.0, help="training wall-clock budget per model")
p.add_argument("--quick", action="store_true", help="smoke test: 8 s per model, short sampling")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--lrs", default=None,
               help="comma list of learning rates; each model trains once per rate (full budget "
                    "each) and the rate with the best VALIDATION NLL is reported")
p.add_argument("--jit", type=int, default=1, help="XLA for the training steps (1/0)")
p.add_argument("--models", default="nice,realnvp,tfp,tfp_init")
p.add_argument("--tfp-init-scale", type=float, default=0.1,
               help="tfp_init: every template kernel ~ glorot_uniform with variance x this")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--no-png", action="store_true")
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "digits_quality"), help="output path, no extension")
args = p.parse_args()
if args.quick and args.seconds == 90.0:
    args.seconds = 8.0
LRS = [float(v) for v in args.lrs.split(",")] if args.lrs else [args.lr]
MODELS = [m.strip() for m in args.models.split(",") if m.strip()]
for m in MODELS:
    if m not in ("nice", "realnvp", "tfp", "tfp_init"):
        p.error(f"unknown model {m!r}")
JIT = bool(args.jit)
SAMPLE_SECONDS = 0.3 if args.quick else 1.5


def other_bench_processes() -> list[str]:
    try:
        out = subprocess.run(["pgrep", "-af", "bench/"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [ln for ln in out.splitlines() if ln.split()[0] != str(os.getpid())]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        la = os.getloadavg()
        return f"load average: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def jiffies():
    """(busy, total) CPU jiffies of the whole machine; steal counts as busy."""
    v = [int(f) for f in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


START_UPTIME = uptime()
START_OTHERS = other_bench_processes()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from tfp_nice import data as data_lib  # noqa: E402
from tfp_nice import preprocessing, training  # noqa: E402
from tfp_nice.training import TrainConfig  # noqa: E402

tfb, tfd = tfp.bijectors, tfp.distributions
LN2 = math.log(2.0)

splits = data_lib.load("digits")
spec = splits.spec
D = spec.num_dims
N_TRAIN = len(splits.train)
STEPS_PER_EPOCH = math.ceil(N_TRAIN / args.batch)
LAST_BATCH = N_TRAIN - (STEPS_PER_EPOCH - 1) * args.batch
TEST_DS = data_lib.as_dataset(splits.test, spec, 256, training=False)
VAL_DS = data_lib.as_dataset(splits.validation, spec, 256, training=False)


def train_ds():
    return data_lib.as_dataset(splits.train, spec, args.batch, training=True, seed=args.seed)


def images_for(step_in_epoch: int) -> int:
    return LAST_BATCH if step_in_epoch == STEPS_PER_EPOCH - 1 else args.batch


def exact_mean_nll(nll_sum_fn, ds, n) -> float:
    return sum(float(nll_sum_fn(b)) for b in ds) / n


def bpd(nll: float) -> float:
    return nll / (D * LN2)


# ---------------------------------------------------------------------------------------------
# A run = one model trained for the budget; both trainers fill the same record.
# ---------------------------------------------------------------------------------------------
class Run:
    def __init__(self, name, lr):
        self.name, self.lr = name, lr
        self.steps = 0
        self.images = 0
        self.epochs_validated = 0
        self.val_time = 0.0
        self.first_step_time = None
        self.best_val = math.inf
        self.best_step = None
        self.diverged_at = None
        self.val_curve = []  # (step, elapsed s, val NLL)
        self.init_val = math.nan
        self.init_finite = math.nan
        self.t0 = None
        self.budget_used = None
        self.mark = None  # end of the previous step (or start of the epoch)
        self.shapes_seen = set()
        self.compile_time = 0.0  # first step of each batch shape (trace + XLA compile)
        self.steady_time = 0.0
        self.steady_images = 0

    def elapsed(self):
        return time.perf_counter() - self.t0

    def start_epoch(self):
        self.mark = time.perf_counter()

    def add_step(self, images: int) -> None:
        """Called right after a step has finished (its loss was fetched)."""
        now = time.perf_counter()
        dt, self.mark = now - self.mark, now
        if self.first_step_time is None:
            self.first_step_time = now - self.t0
        self.steps += 1
        self.images += images
        if images not in self.shapes_seen:  # a new batch shape: retrace + XLA compile
            self.shapes_seen.add(images)
            self.compile_time += dt
        else:
            self.steady_time += dt
            self.steady_images += images

    def record_init(self, nll_vec, get_weights):
        """Validation before training (outside the budget): its weights are the first 'best'."""
        v = np.concatenate([nll_vec(b).numpy() for b in VAL_DS])
        self.init_finite = float(np.isfinite(v).mean())
        self.init_val = float(v.mean())
        if math.isfinite(self.init_val):
            self.best_val, self.best_step = self.init_val, 0
            return get_weights()
        return None

    def record_val(self, val_nll, get_weights):
        self.epochs_validated += 1
        self.val_curve.append((self.steps, round(self.elapsed(), 2), val_nll))
        if math.isfinite(val_nll) and val_nll < self.best_val:
            self.best_val, self.best_step = val_nll, self.steps
            return get_weights()
        return None


class _Budget(keras.callbacks.Callback):
    """Counts steps, stops fit when the budget is spent, validates and keeps the best weights."""

    def __init__(self, run: Run, val_fn, best_weights):
        super().__init__()
        self.run, self.val_fn, self.best_weights = run, val_fn, best_weights
        self._in_epoch = 0

    def on_train_begin(self, logs=None):
        self.run.t0 = time.perf_counter()
        self.run.val_curve.append((0, 0.0, self.run.init_val))

    def on_epoch_begin(self, epoch, logs=None):
        self._in_epoch = 0
        self.run.start_epoch()

    def on_train_batch_end(self, batch, logs=None):
        r = self.run
        loss = float((logs or {}).get("loss", 0.0))  # syncs the step
        r.add_step(images_for(self._in_epoch))
        self._in_epoch += 1
        if not math.isfinite(loss):
            r.diverged_at = r.steps
            self.model.stop_training = True
        elif r.elapsed() >= args.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        r = self.run
        t = time.perf_counter()
        w = r.record_val(self.val_fn(), self.model.get_weights)
        if w is not None:
            self.best_weights = w
        r.val_time += time.perf_counter() - t
        if r.elapsed() >= args.seconds:
            self.model.stop_training = True


def train_tfp_nice(kind: str, lr: float):
    keras.utils.set_random_seed(args.seed)
    t = time.perf_counter()
    model = training.build_model(TrainConfig(model=kind, data="digits"), spec)
    build_s = time.perf_counter() - t
    hp = training.default_hparams(TrainConfig(model=kind, data="digits"), spec)
    if hasattr(model, "initialize_scale"):  # NICE: data-dependent scale init, as `train` does
        first = data_lib.as_dataset(splits.train[:1024], spec, 1024, training=False)
        model.initialize_scale(next(iter(first)))
    model.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=JIT)
    nll_vec = tf.function(lambda b: model(b))
    nll_sum = tf.function(lambda b: tf.reduce_sum(model(b)))
    run = Run(kind, lr)
    best = run.record_init(nll_vec, model.get_weights)
    exact_mean_nll(nll_sum, VAL_DS, len(splits.validation))  # traces it outside the budget
    cb = _Budget(run, lambda: exact_mean_nll(nll_sum, VAL_DS, len(splits.validation)), best)
    (_, foreign) = with_foreign_share(
        lambda: model.fit(train_ds(), epochs=10**6, callbacks=[cb], verbose=0, shuffle=False))
    run.budget_used = run.elapsed()
    if cb.best_weights is not None:
        model.set_weights(cb.best_weights)
    dist = model.distribution
    desc = (f"tfp_nice {type(model).__name__} preset: {hp['num_couplings']} couplings, "
            f"hidden {list(hp['hidden_units'])}")
    return finish(run, dist, nll_sum, int(model.count_params()), foreign, build_s, desc,
                  eager_sample=lambda s: model.sample(256, seed=s))


def build_tfp_flow(num_couplings: int, hidden: list[int], init_scale: float | None = None):
    """TFP's RealNVP: preprocessing + Reshape + [RealNVP, Permute(reverse)]... in Chain order.

    ``init_scale``: passed through the template's ``**kwargs`` (documented as ``tf.layers.dense``
    keyword arguments) as ``kernel_initializer`` = glorot_uniform with its variance times
    ``init_scale`` for EVERY dense layer (the kwargs cannot target the output layer alone).
    ``None`` = TFP's defaults (glorot_uniform kernels, zero biases).
    """
    kwargs = {}
    if init_scale is not None:
        kwargs["kernel_initializer"] = tf.compat.v1.variance_scaling_initializer(
            init_scale, "fan_avg", "uniform")
    steps = preprocessing.rescale(float(spec.num_levels)) + preprocessing.logit(0.05)
    steps.append(tfb.Reshape(event_shape_out=list(spec.event_shape), event_shape_in=[D]))
    reverse = tfb.Permute(np.arange(D)[::-1].copy(), name="reverse")
    templates = []
    for i in range(num_couplings):
        if i:
            steps.append(reverse)
        tmpl = tfb.real_nvp_default_template(hidden_layers=list(hidden), name=f"tmpl_{i}",
                                             **kwargs)
        templates.append(tmpl)
        steps.append(tfb.RealNVP(num_masked=D // 2, shift_and_log_scale_fn=tmpl,
                                 name=f"real_nvp_{i}"))
    base = tfd.Sample(tfd.Normal(0.0, 1.0), [D], name="standard_normal")
    dist = tfd.TransformedDistribution(base, tfb.Chain(steps, name="flow"))
    dist.log_prob(tf.zeros([1] + list(spec.event_shape)))  # creates the template variables
    tvars = [v for t in templates for v in t.trainable_variables]
    return dist, tvars


def train_tfp(name: str, lr: float, parity: dict):
    hp = training.default_hparams(TrainConfig(model="realnvp", data="digits"), spec)
    init_scale = args.tfp_init_scale if name == "tfp_init" else None
    keras.utils.set_random_seed(args.seed)
    t = time.perf_counter()
    dist, tvars = build_tfp_flow(hp["num_couplings"], list(hp["hidden_units"]), init_scale)
    build_s = time.perf_counter() - t
    nll_vec = tf.function(lambda b: -dist.log_prob(b))
    nll_sum = tf.function(lambda b: -tf.reduce_sum(dist.log_prob(b)))
    if not parity:  # once: identity-at-init parity with the tfp_nice RealNVP preset
        init = [v.numpy() for v in tvars]
        for v in tvars:
            v.assign(tf.zeros_like(v))
        tfp_id = exact_mean_nll(nll_sum, TEST_DS, len(splits.test))
        for v, a in zip(tvars, init):
            v.assign(a)
        ref = training.build_model(TrainConfig(model="realnvp", data="digits"), spec)
        ref_id = training.evaluate_nll(ref, splits.test, spec)[0]
        parity.update(tfp_identity_test_nll=tfp_id, tfp_nice_realnvp_init_test_nll=ref_id,
                      abs_diff=abs(tfp_id - ref_id))
    opt = keras.optimizers.Adam(lr)
    opt.build(tvars)

    @tf.function(jit_compile=JIT)
    def step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, tvars)
        opt.apply_gradients(zip(grads, tvars))
        return loss

    run = Run(name, lr)
    best = run.record_init(nll_vec, lambda: [v.numpy() for v in tvars])
    exact_mean_nll(nll_sum, VAL_DS, len(splits.validation))  # traces it outside the budget

    def loop():
        nonlocal best
        run.t0 = time.perf_counter()
        run.val_curve.append((0, 0.0, run.init_val))
        stop = False
        while not stop:
            run.start_epoch()
            for i, x in enumerate(train_ds()):
                loss = float(step(x))
                run.add_step(images_for(i))
                if not math.isfinite(loss):
                    run.diverged_at, stop = run.steps, True
                    break
                if run.elapsed() >= args.seconds:
                    stop = True
                    break
            t = time.perf_counter()
            w = run.record_val(exact_mean_nll(nll_sum, VAL_DS, len(splits.validation)),
                               lambda: [v.numpy() for v in tvars])
            if w is not None:
                best = w
            run.val_time += time.perf_counter() - t
            if run.elapsed() >= args.seconds:
                stop = True

    _, foreign = with_foreign_share(loop)
    run.budget_used = run.elapsed()
    if best is not None:
        for v, a in zip(tvars, best):
            v.assign(a)
    n_params = int(sum(np.prod(v.shape) for v in tvars))
    desc = (f"TFP tfb.RealNVP + real_nvp_default_template: {hp['num_couplings']} couplings, "
            f"hidden {list(hp['hidden_units'])}, Permute reversals, "
            + ("TFP's default initializers" if init_scale is None else
               f"kernel_initializer=glorot_uniform x{init_scale:g} variance"))
    return finish(run, dist, nll_sum, n_params, foreign, build_s, desc,
                  eager_sample=lambda s: dist.sample(256, seed=s))


def with_foreign_share(fn):
    """Runs fn(); returns (its result, share of all CPUs used by OTHER processes meanwhile)."""
    (b0, t0), c0 = jiffies(), time.process_time()
    out = fn()
    (b1, t1), c1 = jiffies(), time.process_time()
    share = (b1 - b0 - (c1 - c0) * os.sysconf("SC_CLK_TCK")) / max(1, t1 - t0)
    return out, max(0.0, share)


def finish(run: Run, dist, nll_sum, n_params, foreign, build_s, desc, eager_sample):
    test_nll = exact_mean_nll(nll_sum, TEST_DS, len(splits.test))
    val_nll = exact_mean_nll(nll_sum, VAL_DS, len(splits.validation))
    sample_fn = tf.function(lambda s: dist.sample(256, seed=s))
    seed = tf.constant([args.seed, 1], tf.int32)
    sample_fn(seed)  # trace
    samples = sample_fn(seed).numpy()
    n, t = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t < SAMPLE_SECONDS:
        sample_fn(tf.constant([args.seed, 2 + n], tf.int32)).numpy()
        n += 1
    graph_sps = 256 * n / (time.perf_counter() - t)
    eager_sample(seed)  # warm-up
    n, t = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t < SAMPLE_SECONDS:
        eager_sample(tf.constant([args.seed, 100 + n], tf.int32)).numpy()
        n += 1
    eager_sps = 256 * n / (time.perf_counter() - t)
    finite = np.isfinite(samples)
    return {
        "model": run.name,
        "description": desc,
        "learning_rate": run.lr,
        "num_params": n_params,
        "build_seconds": round(build_s, 2),
        "budget_seconds_used": round(run.budget_used, 2),
        "first_step_seconds_incl_tracing": round(run.first_step_time or float("nan"), 2),
        "compile_seconds": round(run.compile_time, 2),
        "validation_seconds": round(run.val_time, 2),
        "steps": run.steps,
        "epochs": round(run.images / N_TRAIN, 2),
        "images": run.images,
        "train_images_per_s": (run.steady_images / run.steady_time if run.steady_time > 0
                               else None),
        "budget_images_per_s": run.images / run.budget_used,
        "init_validation_nll": run.init_val,
        "init_validation_finite_fraction": run.init_finite,
        "best_validation_step": run.best_step,
        "best_validation_nll": run.best_val,
        "validation_nll": val_nll,
        "validation_bits_per_dim": bpd(val_nll),
        "test_nll": test_nll,
        "test_bits_per_dim": bpd(test_nll),
        "diverged_at_step": run.diverged_at,
        "sample_graph_per_s": graph_sps,
        "sample_eager_per_s": eager_sps,
        "sample_finite_fraction": float(finite.mean()),
        "sample_in_range_fraction": float(((samples >= 0) & (samples < spec.num_levels)).mean()),
        "other_processes_cpu_share": round(foreign, 3),
        "loadavg_after": os.getloadavg()[0],
        "validation_curve": [(s, e, round(v, 3)) for s, e, v in run.val_curve],
        "_samples": samples,
    }


# ---------------------------------------------------------------------------------------------
results, all_runs, parity = {}, [], {}
for name in MODELS:
    candidates = []
    for lr in LRS:
        print(f"[{name}] lr={lr:g}: training for {args.seconds:g} s ...", file=sys.stderr,
              flush=True)
        r = (train_tfp(name, lr, parity) if name.startswith("tfp")
             else train_tfp_nice(name, lr))
        print(f"[{name}] lr={lr:g}: {r['steps']} steps, val {r['validation_nll']:.2f} nats, "
              f"test {r['test_bits_per_dim']:.4f} bits/dim", file=sys.stderr, flush=True)
        candidates.append(r)
        all_runs.append({k: v for k, v in r.items() if not k.startswith("_")})
    # Choose by VALIDATION NLL only (the test split is never used to pick).
    results[name] = min(candidates, key=lambda r: (not math.isfinite(r["validation_nll"]),
                                                   r["validation_nll"]))

END_UPTIME = uptime()

LABEL = {"nice": "(1) tfp_nice NICE, fit", "realnvp": "(2) tfp_nice RealNVP, fit",
         "tfp": "(3) TFP tfb.RealNVP + default template, as shipped, tape loop",
         "tfp_init": f"(3') same, kernel_initializer glorot x{args.tfp_init_scale:g}, tape loop"}


def fmt(v, spec_="{:.1f}"):
    bad = v is None or (isinstance(v, float) and not math.isfinite(v))
    return "n/a" if bad else spec_.format(v)


header = ("| model | params | lr | steps | epochs | compile s | img/s (train) | img/s (budget) | "
          "init val NLL | best val step | val NLL (nats) | test NLL (nats) | **test bits/dim** | "
          "sample(256)/s graph | eager | other CPU |")
rows = [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
for name in MODELS:
    r = results[name]
    rows.append(
        f"| {LABEL[name]} | {r['num_params']:,} | {r['learning_rate']:g} | {r['steps']} | "
        f"{r['epochs']:.1f} | {r['compile_seconds']:.1f} | "
        f"{fmt(r['train_images_per_s'], '{:.0f}')} | "
        f"{r['budget_images_per_s']:.0f} | {fmt(r['init_validation_nll'], '{:.1f}')}"
        + (f" ({100 * r['init_validation_finite_fraction']:.0f}% finite)"
           if r['init_validation_finite_fraction'] < 1 else "")
        + f" | {r['best_validation_step'] if r['best_validation_step'] is not None else 'none'} | "
        f"{fmt(r['validation_nll'], '{:.2f}')} | {fmt(r['test_nll'], '{:.2f}')} | "
        f"**{fmt(r['test_bits_per_dim'], '{:.4f}')}** | "
        f"{r['sample_graph_per_s']:.0f} | {r['sample_eager_per_s']:.0f} | "
        f"{100 * r['other_processes_cpu_share']:.0f}% |")
table = "\n".join(rows)

# The target: each tfp_nice model vs each TFP variant (a non-finite TFP result counts as worse).
verdicts = []
for ref in ("tfp", "tfp_init"):
    if ref not in results:
        continue
    t = results[ref]["test_bits_per_dim"]
    for name in ("realnvp", "nice"):
        if name in results:
            b = results[name]["test_bits_per_dim"]
            ok = math.isfinite(b) and (not math.isfinite(t) or b <= t)
            verdicts.append((name, ref, b, t, ok))

lines = [
    "# Digits density quality at equal wall-clock time: tfp_nice vs TFP `tfb.RealNVP`",
    "",
    f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
    f"`python bench/digits_quality.py {' '.join(sys.argv[1:])}`".rstrip() + ".",
    f"TF {tf.__version__}, TFP {tfp.__version__}, Keras {keras.__version__}, Python "
    f"{platform.python_version()}, {os.cpu_count()} CPUs, no GPU.",
    f"Data: digits {len(splits.train)} train / {len(splits.validation)} validation / "
    f"{len(splits.test)} test, 8x8x1, 17 levels, uniformly dequantized to [0, 17)^64.",
    f"Protocol: {args.seconds:g} s training budget per model (includes tracing/XLA compile and the "
    f"per-epoch validation passes), batch {args.batch}, Adam, learning rate(s) "
    f"{', '.join(f'{v:g}' for v in LRS)}"
    + (" (each model: the rate with the best validation NLL)" if len(LRS) > 1 else
       " for all models")
    + f", jit_compile={JIT} for every training step, validation after every epoch "
      f"({STEPS_PER_EPOCH} steps), best-validation weights restored before testing.",
    "Test NLL = exact mean of -log p(x) over `as_dataset(test, spec, 256, training=False)` "
    "(fixed dequantization noise, all preprocessing log-dets included); "
    "bits/dim = NLL / (64 ln 2).",
    "",
    f"Machine load: at start `{START_UPTIME}`; at end `{END_UPTIME}`.",
    "Other `bench/` processes at start: "
    + ("; ".join(f"`{p_}`" for p_ in START_OTHERS) if START_OTHERS else "none") + ".",
    "\"other CPU\" = share of all CPUs used by other processes during that model's training "
    "(from /proc/stat).",
    "",
    table,
    "",
    "compile s = time of the first step of each batch shape (64 and the last, partial batch of "
    f"{LAST_BATCH}): tracing + XLA compilation, inside the budget. img/s (train) = images per "
    "second of all other training steps (data fetch + step; no validation); img/s (budget) = "
    "images / whole budget. init val NLL = validation NLL before training (outside the budget). "
    "sample(256)/s: `dist.sample(256)` in a tf.function (graph; tracing untimed) and eagerly.",
    "",
    "Parameter counts: " + "; ".join(
        f"{LABEL[n]}: {results[n]['num_params']:,} ({results[n]['description']})" for n in MODELS)
    + ".",
]
# Quality at several equal times from the same runs: best validation NLL reached by time T.
times = [t for t in (15, 30, 45, 60, 90, 120, 180, 300, 600) if t < args.seconds] + [args.seconds]
lines += ["", "Best VALIDATION bits/dim reached within the first T seconds of each run's budget "
          "(from the per-epoch validation curve; T includes compilation; the last column is the "
          "whole run):", "",
          "| model | " + " | ".join(f"T = {t:g} s" for t in times) + " |",
          "|---|" + "---|" * len(times)]
for name in MODELS:
    curve = results[name]["validation_curve"]
    cells = []
    for t in times:
        last = t == times[-1]  # the whole run, incl. the validation right after the budget
        vals = [v for _, e, v in curve
                if (last or e <= t) and v is not None and math.isfinite(v)]
        cells.append(f"{bpd(min(vals)):.4f}" if vals else "n/a")
    lines.append(f"| {LABEL[name]} | " + " | ".join(cells) + " |")
if parity:
    lines += [
        "",
        f"Parity check (identity flows, test split): TFP flow with all template variables = 0: "
        f"{parity['tfp_identity_test_nll']:.4f} nats; fresh tfp_nice RealNVP preset: "
        f"{parity['tfp_nice_realnvp_init_test_nll']:.4f} nats; |diff| = {parity['abs_diff']:.2e} "
        "-> both evaluate the same preprocessing and log-dets.",
    ]
lines += ["", "## Target: tfp_nice <= TFP bits/dim at equal time"]
for name, ref, b, t, ok in verdicts:
    lines.append(f"- {LABEL[name]} vs {LABEL[ref]}: {b:.4f} vs {t:.4f} bits/dim -> "
                 f"**{'HOLDS' if ok else 'DOES NOT HOLD'}**"
                 + (f" (diff {b - t:+.4f})." if math.isfinite(t) else
                    " (TFP gave no finite result)."))
if not verdicts:
    lines.append("- not evaluated (needs `tfp` and at least one tfp_nice model).")
if len(all_runs) > len(MODELS):
    lines += ["", "All runs (learning-rate choice; picked by validation NLL):", "",
              "| model | lr | steps | val NLL | test bits/dim | diverged at |",
              "|---|---|---|---|---|---|"]
    for r in all_runs:
        lines.append(f"| {r['model']} | {r['learning_rate']:g} | {r['steps']} | "
                     f"{fmt(r['validation_nll'], '{:.2f}')} | "
                     f"{fmt(r['test_bits_per_dim'], '{:.4f}')} | "
                     f"{r['diverged_at_step'] or '-'} |")
diverged = [f"{r['model']} (lr {r['learning_rate']:g}) at step {r['diverged_at_step']}"
            for r in all_runs if r["diverged_at_step"]]
if diverged:
    lines += ["", "Diverged (non-finite training loss; best-validation weights kept): "
              + ", ".join(diverged) + "."]
md = "\n".join(lines) + "\n"
print(md)

if not args.no_png:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from tfp_nice import plotting

        fig, axes = plt.subplots(1, len(MODELS), figsize=(4 * len(MODELS), 4.4))
        axes = np.atleast_1d(axes)
        for ax, name in zip(axes, MODELS):
            grid = plotting.image_grid(results[name]["_samples"][:64], 0.0, 16.0, columns=8)
            ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=1)
            smp = results[name]["_samples"]
            note = "" if np.isfinite(smp).all() else " (non-finite samples: blank)"
            ax.set_title(f"{name}: {fmt(results[name]['test_bits_per_dim'], '{:.3f}')} "
                         f"bits/dim{note}", fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=100)
        plt.close(fig)
        md += ("\nSamples (T = 1, first 64 of the timed sample(256) batch): "
               f"`{os.path.basename(args.out)}.png`.\n")
    except Exception as e:  # noqa: BLE001 - the figure is optional
        print(f"(no PNG: {type(e).__name__}: {e})", file=sys.stderr)

with open(args.out + ".md", "w") as f:
    f.write(md)
def _clean(o):
    """JSON-safe: NaN/Inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


with open(args.out + ".json", "w") as f:
    json.dump(_clean({
        "argv": sys.argv[1:], "seconds": args.seconds, "batch": args.batch, "learning_rates": LRS,
        "jit_compile": JIT, "seed": args.seed,
        "versions": {"tensorflow": tf.__version__, "tfp": tfp.__version__,
                     "keras": keras.__version__, "python": platform.python_version()},
        "uptime_start": START_UPTIME, "uptime_end": END_UPTIME,
        "other_bench_processes_at_start": START_OTHERS,
        "parity": parity,
        "results": {n: {k: v for k, v in r.items() if not k.startswith("_")}
                    for n, r in results.items()},
        "all_runs": all_runs,
        "target": [{"model": n, "against": ref, "bits_per_dim": b, "tfp_bits_per_dim": t,
                    "holds": ok} for n, ref, b, t, ok in verdicts],
    }), f, indent=2, allow_nan=False)
    f.write("\n")
