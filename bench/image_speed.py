"""Training-step throughput of the CLI's 28x28 image models against their convolution floor.

Run from the repo root (several minutes; record the machine load with the numbers):
    python bench/image_speed.py                  # MNIST file, CLI defaults of each --models
    python bench/image_speed.py --quick          # smoke test: 8x8 digits, tiny sizes, < 1 min
    python bench/image_speed.py --models glow --modes function,jit --rounds 5
    python bench/image_speed.py --modes function --threads 1 --out bench/image_speed_1thread
In ONE process, per model (built by `tfp_nice.training.build_model` at the CLI defaults,
`default_hparams`), every config runs the same training step (Adam, loss and gradient of all
trainable weights) on the same batches (the CLI's `as_dataset` pipeline, dequantized):
  flow       the flow's step (`model.compute_loss`) in a plain GradientTape loop;
  flow_gather  the same with the couplings' gather/merge form (before the elementwise one);
  fit        the flow under `keras.Model.fit` (the CLI's path: data pipeline, callbacks);
  floor      (a) the compute floor: the same conditioner networks as plain Keras `Conv2D`
             layers (weight norm dropped), fed inputs of the shapes the couplings give them,
             outputs summed into a scalar loss; `floor_fit` trains it with `fit`. The networks
             are independent, so the runtime overlaps them two at a time on 2 cores;
  floor_ingrad  the floor with each network's input gradient computed as well (its input
             offset by a zero weight): the gradient every coupling's conditioner input needs in
             the flow (it depends on earlier weights) and the floor skips; floor/floor_ingrad is
             the best flow/floor a flow with no work beyond its convolutions could reach;
  floor_chain  the same networks in the flow's order, each one's input waiting for the previous
             one's output (its mean added) and its input gradient computed, as in the flow and
             in any model whose networks feed each other: the floor of a deep model;
  floor_wn   the flow's own conditioner layers (weight norm and all) on the same inputs;
  skeleton   the flow with every conditioner replaced by a tile of its input (no convolution):
             masks, log-det bookkeeping, squeeze/factor-out, normalisation, prior;
  skeleton_no_norm  the same without the normalisation steps (realnvp-image: batch norm;
             glow: ActNorm and the invertible 1x1 convolutions, each made the identity);
  skeleton_no_1x1  glow's skeleton with only its 1x1 convolutions made the identity;
  no_norm / no_logit / no_update  ablations of the flow: without its normalisation steps
             (realnvp-image), without the logit preprocessing, without the optimizer update;
  gauge      (b) a 3x3 64->64 convolution's forward + backward: the machine's conv peak.
Modes: eager, `tf.function`, `tf.function(jit_compile=True)`; eager and XLA time the flow, the
floor and the gauge only (XLA compiles of a full-size flow take minutes on 2 cores).
Each config is warmed up untimed; then `--rounds` rounds time `--steps` steps of each config,
the start rotated each round; a round gives the median step, tables the median over rounds.
Part breakdown (function mode): conv = floor; weight norm = floor_wn - floor; normalisation =
skeleton - skeleton_no_norm (glow: of it 1x1 convolutions = skeleton - skeleton_no_1x1, the
rest ActNorm); bookkeeping = skeleton_no_norm; overlap = flow - floor_wn - skeleton; fit loop =
fit - flow; dependency = floor_chain - floor, split into input gradients (floor_ingrad - floor)
and ordering (floor_chain - floor_ingrad); each ablation = flow minus it. Writes
bench/image_speed.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, os.pardir, "shared", "data", "mnist-train-19690.npz")
MODES = ("eager", "function", "jit")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="realnvp-image,glow")
    p.add_argument("--data", default=None, help="default: the MNIST file (quick: digits)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the CLI's (64)")
    p.add_argument("--filters", type=int, default=None)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--num-scales", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (5)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (3; quick 1)")
    p.add_argument("--modes", default=None, help="comma list of eager,function,jit")
    p.add_argument("--threads", type=int, default=None,
                   help="TF inter- and intra-op threads (default: TF's, one per core)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "image_speed"))
    a = p.parse_args(argv)
    a.data = a.data or ("digits" if a.quick else MNIST)
    a.steps = a.steps or (2 if a.quick else 5)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.modes = (a.modes or ("function" if a.quick else ",".join(MODES))).split(",")
    if a.quick:
        a.filters, a.num_blocks = a.filters or 4, a.num_blocks or 1
        a.num_scales = a.num_scales or 1
    return a


ARGS = _parse(sys.argv[1:] if __name__ == "__main__" else [])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if ARGS.threads:  # before TF runs anything; 1: the total work of a step, on one core
    tf.config.threading.set_inter_op_parallelism_threads(ARGS.threads)
    tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)

import tfp_nice as tn  # noqa: E402
from tfp_nice import data as data_lib  # noqa: E402
from tfp_nice.bijectors._coupling import CouplingBase  # noqa: E402
from tfp_nice.training import TrainConfig, build_model, default_hparams  # noqa: E402


# --- what is timed ---------------------------------------------------------------------------
class Floor(keras.Model):
    """Conditioner networks on fixed inputs, their outputs summed into a scalar loss."""

    def __init__(self, nets, shapes, batch):
        super().__init__()
        self.nets = list(nets)
        rng = np.random.default_rng(0)
        self.inputs_ = [tf.constant(rng.normal(size=(batch, *s)).astype("float32"))
                        for s in shapes]

    def call(self, x, training=None):
        del x  # the same fixed inputs every step, as the couplings' (shapes only matter)
        return tf.add_n([tf.reduce_mean(n(i)) for n, i in zip(self.nets, self.inputs_)])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self(x) if y_pred is None else y_pred


class FloorInputGrad(Floor):
    """:class:`Floor` with each network's input gradient computed (input + a zero weight)."""

    def __init__(self, nets, shapes, batch):
        super().__init__(nets, shapes, batch)
        self.offsets = [self.add_weight(shape=(), initializer="zeros", name=f"offset_{i}")
                        for i in range(len(self.inputs_))]

    def call(self, x, training=None):
        del x
        return tf.add_n([tf.reduce_mean(n(i + o))
                         for n, i, o in zip(self.nets, self.inputs_, self.offsets)])


class FloorChain(Floor):
    """:class:`Floor` with the networks run in order, each input waiting for the previous output."""

    def call(self, x, training=None):
        del x
        prev, means = 0.0, []
        for n, i in zip(self.nets, self.inputs_):
            prev = tf.reduce_mean(n(i + prev))
            means.append(prev)
        return tf.add_n(means)


class TileNet(keras.layers.Layer):
    """A conditioner without convolutions: its input's first channel tiled, times a weight."""

    def __init__(self, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels

    def build(self, input_shape):
        self.w = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.01))

    def call(self, x, **condition):
        return tf.tile(x[..., :1], [1, 1, 1, self.out_channels]) * self.w


def _couplings(model):
    steps = tf.nest.flatten(model.steps)
    return [b for s in steps for b in tn.graph.walk(s) if isinstance(b, CouplingBase)]


def _plain_mirror(net):
    """The conditioner ``net`` as plain Keras ``Conv2D`` layers (no weight norm)."""
    if isinstance(net, tn.layers.ResNetConditioner):
        conv = lambda f, k: keras.layers.Conv2D(f, k, padding="same")  # noqa: E731
        cin, blocks = conv(net.filters, net.kernel_size), [
            (conv(net.filters, net.kernel_size), conv(net.filters, net.kernel_size))
            for _ in range(net.num_blocks)]
        out = conv(net.output_channels, net.output_kernel_size)

        class Mirror(keras.layers.Layer):
            def __init__(self):
                super().__init__()
                self.cin, self.blocks, self.out = cin, blocks, out

            def call(self, x):
                h = self.cin(x)
                for a, b in self.blocks:
                    h = h + b(tf.nn.relu(a(tf.nn.relu(h))))
                return self.out(tf.nn.relu(h))

        return Mirror()
    return type(net).from_config(net.get_config())  # already plain Conv2D (Glow's)


def _conv_flops(floor, batch):
    """Forward multiply-adds x 2 x 3 (forward, input gradient, kernel gradient) of floor's convs."""
    total = 0
    for net, x in zip(floor.nets, floor.inputs_):
        h, w = int(x.shape[1]), int(x.shape[2])
        for layer in net._flatten_layers():
            if isinstance(layer, keras.layers.Conv2D):
                k = layer.kernel.shape
                total += 6 * batch * h * w * int(np.prod(k))
    return total


def _flow_variant(model, **changes):
    """A fresh copy of ``model`` (same preset config with ``changes``)."""
    return type(model).from_config({**model.get_config(), **changes})


def _skeleton(model, **changes):
    flow = _flow_variant(model, **changes)
    for b in _couplings(flow):
        b._conditioner = TileNet(b.conditioner.output_channels)
    return flow


def _without(model, *kinds):
    """``model`` with every bijector of the ``kinds`` made the identity (in place)."""
    steps = tf.nest.flatten(model.steps)
    for b in [b for s in steps for b in tn.graph.walk(s) if isinstance(b, kinds)]:
        b._forward = b._inverse = lambda x: x
        b._forward_log_det_jacobian = b._inverse_log_det_jacobian = (
            lambda x: tf.zeros([], x.dtype))
    return model


def _step_fn(model, mode, update=True):
    opt = keras.optimizers.Adam(1e-4)
    opt.build(model.trainable_variables)

    def step(x):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y_pred=model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if not update:  # the gradients are still computed (and waited for)
            return loss + tf.add_n([tf.reduce_sum(g) for g in grads]) * 0.0
        opt.apply(grads, model.trainable_variables)
        return loss

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=mode == "jit")


def _fit_timer(model, mode, dataset):
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=mode == "jit")
    stamps = []
    stamp = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: stamps.append(time.perf_counter()))

    def run(steps):
        stamps.clear()
        model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[stamp])
        return list(np.diff(stamps))
    return run


def _loop_timer(step, batches):
    def run(steps):
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            loss = step(batches[i % len(batches)])
            float(loss)  # wait for the result
            times.append(time.perf_counter() - t0)
        return times
    return run


def _gauge(batch, shape, mode):
    h, w = shape[:2]
    x = tf.random.normal([batch, h, w, 64])
    k = tf.Variable(tf.random.normal([3, 3, 64, 64], stddev=0.05))

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.conv2d(x, k, 1, "SAME"))
        return loss + tf.reduce_sum(tape.gradient(loss, k)) * 0

    fn = step if mode == "eager" else tf.function(step, jit_compile=mode == "jit")
    # the input gradient is not needed for x: count forward + kernel gradient (x 2)
    return _loop_timer(fn, [x]), 2 * 2 * batch * h * w * 9 * 64 * 64 / 1e9


# --- running ---------------------------------------------------------------------------------
def build_configs(name, args, splits):
    cfg = TrainConfig(model=name, data=args.data, batch_size=args.batch_size or 64,
                      filters=args.filters, num_blocks=args.num_blocks,
                      num_scales=args.num_scales)
    spec, batch = splits.spec, cfg.batch_size
    ds = data_lib.as_dataset(splits.train, spec, batch, training=True, seed=0)
    batches = [b for b, _ in zip(ds.repeat(), range(max(2, args.steps)))]
    model = build_model(cfg, spec)
    info = {"model": name, "hparams": {k: v for k, v in default_hparams(cfg, spec).items()
                                       if k not in ("epochs", "patience")},
            "batch_size": batch, "event_shape": list(spec.event_shape)}

    def prepared(m):
        if hasattr(m, "initialize_from_data"):
            m.initialize_from_data(batches[0])
        m(batches[0][:2])
        return m

    model = prepared(model)
    info["params"] = int(model.count_params())
    couplings = _couplings(model)
    shapes = [(*b.mask.event_shape[:2], b.mask.event_shape[2] + 1) for b in couplings]
    floor = Floor([_plain_mirror(b.conditioner) for b in couplings], shapes, batch)
    floor_wn = Floor([b.conditioner for b in couplings], shapes, batch)
    floor_ingrad = FloorInputGrad([_plain_mirror(b.conditioner) for b in couplings], shapes,
                                  batch)
    floor_chain = FloorChain([_plain_mirror(b.conditioner) for b in couplings], shapes, batch)
    for f in (floor, floor_ingrad, floor_chain):
        f(batches[0])
    info["conv_gflop_per_step"] = _conv_flops(floor, batch) / 1e9
    skeletons = {"skeleton": prepared(_skeleton(model))}
    if name == "realnvp-image":
        skeletons["skeleton_no_norm"] = prepared(_skeleton(model, normalization="none"))
    if name == "glow":
        skeletons["skeleton_no_norm"] = _without(prepared(_skeleton(model)), tn.ActNorm,
                                                 tn.Invertible1x1Conv)
        skeletons["skeleton_no_1x1"] = _without(prepared(_skeleton(model)), tn.Invertible1x1Conv)
    fit_ds = data_lib.as_dataset(splits.train, spec, batch, training=True, seed=0).repeat()
    floor_ds = tf.data.Dataset.from_tensors(batches[0]).repeat()
    ablations = {"no_logit": prepared(_flow_variant(model, logit_alpha=None))}
    if name == "realnvp-image":
        ablations["no_norm"] = prepared(_flow_variant(model, normalization="none"))
    gather = prepared(_flow_variant(model))
    for b in _couplings(gather):  # the gather/merge form the elementwise one replaced
        b._elementwise_masked = False
    configs = {}
    for mode in args.modes:  # eager and XLA: the flow and its floor only (compiles are slow)
        configs[("flow", mode)] = _loop_timer(_step_fn(model, mode), batches)
        configs[("floor", mode)] = _loop_timer(_step_fn(floor, mode), batches)
        configs[("gauge", mode)], info["gauge_gflop_per_step"] = _gauge(
            batch, spec.event_shape, mode)
        if mode != "function":
            continue
        configs[("flow_gather", mode)] = _loop_timer(_step_fn(gather, mode), batches)
        configs[("floor_wn", mode)] = _loop_timer(_step_fn(floor_wn, mode), batches)
        configs[("floor_ingrad", mode)] = _loop_timer(_step_fn(floor_ingrad, mode), batches)
        configs[("floor_chain", mode)] = _loop_timer(_step_fn(floor_chain, mode), batches)
        configs[("no_update", mode)] = _loop_timer(_step_fn(model, mode, update=False), batches)
        for key, m in ablations.items():
            configs[(key, mode)] = _loop_timer(_step_fn(m, mode), batches)
        for key, m in skeletons.items():
            configs[(key, mode)] = _loop_timer(_step_fn(m, mode), batches)
        configs[("fit", mode)] = _fit_timer(_flow_variant_for_fit(model, batches), mode, fit_ds)
        configs[("floor_fit", mode)] = _fit_timer(
            Floor([_plain_mirror(b.conditioner) for b in couplings], shapes, batch), mode,
            floor_ds)
    return info, configs


def _flow_variant_for_fit(model, batches):
    """A fresh copy for ``fit`` (its own optimizer state; ActNorm initialised by fit)."""
    m = _flow_variant(model)
    m(batches[0][:2])
    return m


def measure(configs, args):
    for run in configs.values():  # warm-up: trace, compile, first steps
        run(2)
    times = {k: [] for k in configs}
    keys = list(configs)
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[key].append(statistics.median(configs[key](args.steps)))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
            for k, v in times.items()}


def summarise(info, timings, batch):
    rows = []
    for (config, mode), t in timings.items():
        row = {"config": config, "mode": mode, **t, "img_s": batch / t["median_s"]}
        if config in ("floor", "floor_fit", "floor_ingrad", "floor_chain"):
            row["gflop_s"] = info["conv_gflop_per_step"] / t["median_s"]
        if config == "gauge":
            row["gflop_s"] = info["gauge_gflop_per_step"] / t["median_s"]
        rows.append(row)
    get = {(r["config"], r["mode"]): r["median_s"] for r in rows}
    ratios = {}
    for mode in {r["mode"] for r in rows}:
        if ("flow", mode) in get:
            ratios[f"flow/floor {mode}"] = get[("floor", mode)] / get[("flow", mode)]
        if ("floor_ingrad", mode) in get:
            ratios[f"flow/floor_ingrad {mode}"] = get[("floor_ingrad", mode)] / get[("flow", mode)]
            ratios[f"bound: floor/floor_ingrad {mode}"] = (get[("floor", mode)]
                                                           / get[("floor_ingrad", mode)])
        if ("floor_chain", mode) in get:
            ratios[f"flow/floor_chain {mode}"] = get[("floor_chain", mode)] / get[("flow", mode)]
            ratios[f"fit/floor_chain {mode}"] = get[("floor_chain", mode)] / get[("fit", mode)]
        if ("fit", mode) in get:
            ratios[f"fit/floor_fit {mode}"] = get[("floor_fit", mode)] / get[("fit", mode)]
            ratios[f"fit/floor {mode}"] = get[("floor", mode)] / get[("fit", mode)]
        if ("flow_gather", mode) in get:
            ratios[f"flow_gather/floor {mode}"] = get[("floor", mode)] / get[("flow_gather", mode)]
        if mode != "function" and ("flow", "function") in get:
            ratios[f"flow {mode} / flow function"] = get[("flow", "function")] / get[("flow", mode)]
    parts = {}
    m = "function" if ("flow", "function") in get else next(r["mode"] for r in rows)
    if ("flow", m) in get:
        skel = get[("skeleton", m)]
        bare = get.get(("skeleton_no_norm", m), skel)
        parts = {"mode": m, "conditioner convs (floor)": get[("floor", m)],
                 "weight norm": get[("floor_wn", m)] - get[("floor", m)],
                 "normalisation (batch norm / ActNorm+1x1)": skel - bare,
                 **({"  of it: 1x1 convolutions (skeleton - skeleton_no_1x1)":
                     skel - get[("skeleton_no_1x1", m)]} if ("skeleton_no_1x1", m) in get
                    else {}),
                 "masks, log-det, squeeze/factor-out, prior": bare,
                 "overlap (flow - floor_wn - skeleton)": get[("flow", m)] - get[("floor_wn", m)]
                 - skel, "flow step": get[("flow", m)]}
        if ("fit", m) in get:
            parts["fit loop (fit - flow)"] = get[("fit", m)] - get[("flow", m)]
        if ("floor_chain", m) in get:
            parts["dependency (floor_chain - floor)"] = get[("floor_chain", m)] - get[("floor", m)]
        if ("floor_ingrad", m) in get:
            parts["  of it: input gradients (floor_ingrad - floor)"] = (
                get[("floor_ingrad", m)] - get[("floor", m)])
            parts["  of it: ordering (floor_chain - floor_ingrad)"] = (
                get[("floor_chain", m)] - get[("floor_ingrad", m)])
        for key, what in (("no_norm", "normalisation"), ("no_logit", "logit preprocessing"),
                          ("no_update", "optimizer update")):
            if (key, m) in get:
                parts[f"ablation: {what} (flow - {key})"] = get[("flow", m)] - get[(key, m)]
    return {**info, "rows": rows, "ratios": ratios, "parts_s": parts}


def write(results, args, env):
    from tfp_nice._internal import files

    files.atomic_write_json(args.out + ".json", {"env": env, "models": results})
    lines = ["# Image training-step speed (bench/image_speed.py)", "",
             f"Load average before/after: {env['load_before']} / {env['load_after']} on "
             f"{env['cpus']} CPUs; data {env['data']}; {env['rounds']} rounds x "
             f"{env['steps']} steps; TF {env['tf']}"
             + (f"; {env['threads']} TF thread(s)" if env["threads"] else "") + ".", ""]
    for res in results:
        lines += [f"## {res['model']} ({res['params']:,} parameters, batch "
                  f"{res['batch_size']}, {res['event_shape']})", "",
                  f"hparams {res['hparams']}; conv floor {res['conv_gflop_per_step']:.2f} "
                  "GFLOP/step", "", "| config | mode | ms/step | img/s | GFLOP/s |",
                  "|---|---|---|---|---|"]
        for r in res["rows"]:
            g = f"{r['gflop_s']:.1f}" if "gflop_s" in r else ""
            lines.append(f"| {r['config']} | {r['mode']} | {1e3 * r['median_s']:.1f} "
                         f"({1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}) | "
                         f"{r['img_s']:.1f} | {g} |")
        lines += ["", "| ratio (throughput / floor's) | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in sorted(res["ratios"].items())]
        if res["parts_s"]:
            lines += ["", f"| part ({res['parts_s']['mode']}) | ms/step |", "|---|---|"]
            lines += [f"| {k} | {1e3 * v:.1f} |" for k, v in res["parts_s"].items()
                      if k != "mode"]
        lines.append("")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main(args=ARGS):
    env = {"load_before": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
           "data": os.path.basename(args.data), "rounds": args.rounds, "steps": args.steps,
           "tf": tf.__version__, "keras": keras.__version__, "quick": args.quick,
           "threads": args.threads}
    splits = data_lib.load(args.data, seed=0)
    results = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        info, configs = build_configs(name, args, splits)
        t1 = time.perf_counter()
        results.append(summarise(info, measure(configs, args), info["batch_size"]))
        results[-1]["seconds"] = {"build": t1 - t0, "measure": time.perf_counter() - t1}
    env["load_after"] = [round(v, 2) for v in os.getloadavg()]
    write(results, args, env)
    return results


if __name__ == "__main__":
    main()
