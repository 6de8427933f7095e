"""Training-step speed at NICE-MNIST size: tfp_nice vs TFP's RealNVP vs plain Keras vs PyTorch.

Run from the repo root on an otherwise idle machine (the full size takes several minutes):
    python bench/train_step.py           # 784-d, 4 couplings of 5x1000 ReLU MLPs, batch 256, f32
    python bench/train_step.py --quick   # smoke test: 64-d, 2x64 hidden, batch 64
    python bench/train_step.py --only a,d --intra 2 --inter 1   # a subset, TF thread settings
Configs, in ONE process, on uniform [0, 1) noise; every optimizer is Adam(1e-4):
  (a) tfp_nice NICE (AdditiveCoupling x4 + DiagonalScale, logistic prior), Keras fit;
  (b) tfp_nice RealNVP (AffineCoupling x4 + DiagonalScale, normal prior), fit;
  (c) tfb.RealNVP + real_nvp_default_template x4 with tfb.Permute reversals, in a tf.function
      GradientTape loop over the template variables (fit cannot see them);
  (p) baseline: the NICE of (a) hand-written as a plain Keras model (no TFP), fit;
  (d) a 2048x2048 f32 tf.matmul = the machine's peak GFLOP/s (torch.mm too, for information);
  (e) the NICE of (a) in PyTorch, if `import torch` works (torch is not a dependency).
(a), (b), (c), (p) run with jit_compile False and True. Each config is warmed up (trace, XLA
compile, 2 steps) untimed; then `--rounds` rounds run each config for `--steps` steps, start
rotated each round, so noise hits all alike. fit steps are the intervals between perf_counter
stamps at on_train_batch_end; loops time each call. A round gives the median step; tables show
the median over rounds (min-max). Before each run we wait (<= 30 s) for other processes to use
< 10% of the CPUs, record the share they used during it (/proc/stat minus our CPU time) and redo
it (twice at most) if that was >= 15%, while the --wait-idle budget lasts. GFLOP/s: "6PB" =
6 * params * batch / step time; "counted" = MatMul FLOPs of the traced forward+gradient graph.
Writes the table to stdout and bench/train_step.md, everything to bench/train_step.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--steps", type=int, default=6, help="timed steps per config per round")
p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
p.add_argument("--only", default="a,b,c,p,d,e", help="comma list of config letters")
p.add_argument("--intra", type=int, default=0, help="TF intra-op threads (0 = TF default)")
p.add_argument("--inter", type=int, default=0, help="TF inter-op threads (0 = TF default)")
p.add_argument("--wait-idle", type=float, help="total s to wait for idle CPUs (900; quick 0)")
p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "train_step"), help="output path, no extension")
args = p.parse_args()
ONLY = set(args.only.split(","))
WAIT = [args.wait_idle if args.wait_idle is not None else 0 if args.quick else 900]  # budget left

import tensorflow as tf  # noqa: E402  (threads must be set before any op runs)

if args.intra:
    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
if args.inter:
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)
import keras  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tfp_nice  # noqa: E402

tfb, tfd = tfp.bijectors, tfp.distributions
D, H, B, NMM = (64, (64,) * 2, 64, 256) if args.quick else (784, (1000,) * 5, 256, 2048)
L, K, HALF = 4, args.steps, D // 2
X = np.random.default_rng(0).uniform(size=((K + 1) * B, D)).astype("float32")
BATCHES = [tf.constant(X[i * B:(i + 1) * B]) for i in range(K + 1)]


def foreign_share(fn):
    """Runs fn(); returns (its result, share of all CPUs that OTHER processes used meanwhile)."""
    def jiffies():  # (busy, total) for the whole machine; steal counts as busy
        v = [int(f) for f in open("/proc/stat").readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)
    (b0, t0), c0 = jiffies(), time.process_time()
    out = fn()
    (b1, t1), c1 = jiffies(), time.process_time()
    return out, max(0.0, (b1 - b0 - (c1 - c0) * os.sysconf("SC_CLK_TCK")) / max(1, t1 - t0))


def counted_flops(loss_fn, variables):
    """2*M*N*K summed over the MatMuls of the traced forward + gradient graph of loss_fn."""
    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            loss = loss_fn(x)
        return tape.gradient(loss, variables)
    total, graph = 0, grads.get_concrete_function(tf.TensorSpec([B, D])).graph
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMulV2"):
            t = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            total += 2 * op.outputs[0].shape.num_elements() * op.inputs[0].shape[-2 if t else -1]
    return total


class Runner:
    """Times step(batch) calls; set key, label, params, flops, batches, step."""
    flops = None

    def run(self, k):
        t = [time.perf_counter()]
        for i in range(k):
            float(self.step(self.batches[i % len(self.batches)]))  # float() waits for the result
            t.append(time.perf_counter())
        return list(np.diff(t))


class Stamp(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])
        self.t.append(time.perf_counter())


class FitRunner(Runner):
    def __init__(self, key, label, model, jit):
        self.key, self.label, self.model, self.cb = key, label, model, Stamp()
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)
        self.params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        self.flops = counted_flops(lambda x: tf.reduce_mean(model(x)), model.trainable_variables)
        self.run(2)  # warm-up: not timed

    def run(self, k):  # fit over k+1 batches; the k intervals between batch ends are the steps
        self.cb.t = []
        self.model.fit(X[:(k + 1) * B], batch_size=B, epochs=1, shuffle=False, verbose=0,
                       callbacks=[self.cb])
        return list(np.diff(self.cb.t))


class LoopRunner(Runner):
    def __init__(self, key, label, dist, variables, jit):
        self.key, self.label, self.batches = key, label, BATCHES
        self.params = sum(int(np.prod(v.shape)) for v in variables)
        self.flops = counted_flops(lambda x: -tf.reduce_mean(dist.log_prob(x)), variables)
        opt = keras.optimizers.Adam(1e-4)  # Keras 3 Adam accepts raw tf.Variables
        opt.build(variables)

        @tf.function(jit_compile=jit)
        def step(x):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(dist.log_prob(x))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        self.step = step
        self.run(2)


class MatmulRunner(Runner):
    def __init__(self, label, a, b, mm):
        self.key, self.label, self.params, self.flops = "d", label, 0, 2 * NMM**3
        self.batches, self.step = [None], lambda _: mm(a, b)[0, 0]
        self.run(2)


def tfp_nice_flow(coupling, prior, out_units):
    steps = [coupling(tfp_nice.MLPConditioner(out_units, H), num_masked=HALF * (-1) ** i)
             for i in range(L)]
    return tfp_nice.FlowModel(prior([D]), steps + [tfp_nice.DiagonalScale([D])])


def nice_nll(x, nets, log_scale, cat, softplus, exp, rsum):
    """Per-example NICE NLL written out (couplings, diagonal scale, logistic prior); TF or torch."""
    a, b = x[:, :HALF], x[:, HALF:]
    for i, net in enumerate(nets):
        a, b = (a, b - net(a)) if i % 2 == 0 else (a - net(b), b)
    z = cat([a, b], -1) * exp(-log_scale)
    return -rsum(-z - 2.0 * softplus(-z)) + rsum(log_scale)


class PlainNICE(keras.Model):
    def __init__(self):
        super().__init__()
        self.nets = [keras.Sequential([keras.layers.Dense(h, activation="relu") for h in H]
                                      + [keras.layers.Dense(HALF, kernel_initializer="zeros")])
                     for _ in range(L)]
        self.log_scale = self.add_weight(shape=(D,), initializer="zeros")

    def call(self, x):
        return nice_nll(x, self.nets, self.log_scale, tf.concat, tf.nn.softplus, tf.exp,
                        lambda t: tf.reduce_sum(t, -1))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.reduce_mean(y_pred)


def tfp_realnvp():
    templates = [tfb.real_nvp_default_template(hidden_layers=list(H)) for _ in range(L)]
    steps = []
    for i, fn in enumerate(templates):
        steps += [tfb.Permute(np.arange(D)[::-1].copy())] if i else []
        steps.append(tfb.RealNVP(num_masked=HALF, shift_and_log_scale_fn=fn))
    dist = tfd.TransformedDistribution(tfp_nice.priors.standard_normal([D]), tfb.Chain(steps))
    dist.log_prob(BATCHES[0][:2])  # one eager call creates the template variables
    return dist, [v for t in templates for v in t.trainable_variables]


def torch_runners():
    try:
        import torch
    except ImportError:
        return [], None
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())

    def mlp():
        dims, layers = (HALF,) + H, []
        for i, o in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(i, o), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(dims[-1], HALF))
        torch.nn.init.zeros_(layers[-1].weight), torch.nn.init.zeros_(layers[-1].bias)
        return torch.nn.Sequential(*layers)
    nets = torch.nn.ModuleList(mlp() for _ in range(L))
    log_scale = torch.nn.Parameter(torch.zeros(D))
    params = list(nets.parameters()) + [log_scale]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = nice_nll(x, nets, log_scale, torch.cat, torch.nn.functional.softplus, torch.exp,
                        lambda t: t.sum(-1)).mean()
        loss.backward()
        opt.step()
        return loss.detach()
    e = Runner()
    e.key, e.label, e.step = "e", f"(e) PyTorch {torch.__version__} NICE, eager loop", step
    e.params, e.batches = sum(p.numel() for p in params), [torch.tensor(x.numpy()) for x in BATCHES]
    e.run(2)
    mm = MatmulRunner(f"(d) torch.mm {NMM}x{NMM} f32 (info)", torch.rand(NMM, NMM),
                      torch.rand(NMM, NMM), torch.mm)
    return [e, mm], torch.__version__


def build():
    runners = []
    if "d" in ONLY:
        runners.append(MatmulRunner(f"(d) tf.matmul {NMM}x{NMM} f32 = peak", tf.random.uniform(
            [NMM, NMM]), tf.random.uniform([NMM, NMM]), tf.matmul))
    for jit in (False, True):
        j = ", jit" if jit else ""
        if "a" in ONLY:
            m = tfp_nice_flow(tfp_nice.AdditiveCoupling, tfp_nice.priors.standard_logistic, HALF)
            runners.append(FitRunner("a", f"(a) tfp_nice NICE, fit{j}", m, jit))
        if "b" in ONLY:
            m = tfp_nice_flow(tfp_nice.AffineCoupling, tfp_nice.priors.standard_normal, D)
            runners.append(FitRunner("b", f"(b) tfp_nice affine RealNVP, fit{j}", m, jit))
        if "c" in ONLY:
            label = f"(c) tfb.RealNVP + template, tf.function loop{j}"
            runners.append(LoopRunner("c", label, *tfp_realnvp(), jit))
        if "p" in ONLY:
            m = PlainNICE()
            m(BATCHES[0][:2])
            runners.append(FitRunner("p", f"(p) plain Keras NICE (no TFP), fit{j}", m, jit))
    extra, torch_version = torch_runners() if "e" in ONLY else ([], None)
    return runners + extra, torch_version


def measure(r):
    """Median step (ms) of one run, other processes' CPU share (%), redos (if that was >= 15%)."""
    for redo in range(3):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < min(30, WAIT[0]) and foreign_share(
                lambda: time.sleep(0.5))[1] > 0.1:
            pass
        t1 = time.perf_counter()
        times, other = foreign_share(lambda: r.run(K))
        WAIT[0] -= (t1 if other < 0.15 else time.perf_counter()) - t0
        if other < 0.15 or WAIT[0] <= 0 or redo == 2:
            return 1e3 * statistics.median(times), 100 * other, redo


runners, torch_version = build()
res = {r.label: [] for r in runners}
for rnd in range(args.rounds):
    for r in runners[rnd % len(runners):] + runners[:rnd % len(runners)]:
        res[r.label].append(measure(r))
    print(f"round {rnd + 1}/{args.rounds} done; wait budget left {WAIT[0]:.0f} s", file=sys.stderr)

rows = []
for r in runners:
    ms_r, other, retries = (list(c) for c in zip(*res[r.label]))
    ms, g6 = statistics.median(ms_r), (6 * r.params * B if r.params else r.flops) / 1e9
    gc = r.flops / 1e9 if r.flops else None
    rows.append(dict(key=r.key, label=r.label, params=r.params, ms=ms, steps_s=1e3 / ms,
                     gflop_6pb=g6, gflop_counted=gc, gflops_6pb=g6 / ms * 1e3,
                     gflops_counted=gc and gc / ms * 1e3, round_ms=ms_r, other_cpu_pct=other,
                     retries=sum(retries)))
peak = next((x["gflops_6pb"] for x in rows if x["label"].startswith("(d) tf.")), float("nan"))
for x in rows:
    x["pct_peak"] = 100 * x["gflops_6pb"] / peak


def best(key, jit=None):
    c = [x for x in rows if x["key"] == key and jit in (None, x["label"].endswith("jit"))]
    return max(c, key=lambda x: x["steps_s"]) if c else None


ratios, A_PEAK, BC = {}, "(a) % of tf matmul peak, best (a)", "(b)/(c) steps/s, best of each"
for name, k1, k2, jit in [("(b)/(c) steps/s, no jit", "b", "c", False),
                          ("(b)/(c) steps/s, jit", "b", "c", True), (BC, "b", "c", None),
                          ("(a)/(p) steps/s, tfp_nice vs plain Keras, best each", "a", "p", None),
                          ("(a)/(e) steps/s, best (a) vs PyTorch", "a", "e", None)]:
    if best(k1, jit) and best(k2, jit):
        ratios[name] = best(k1, jit)["steps_s"] / best(k2, jit)["steps_s"]
if best("a"):
    ratios[A_PEAK] = best("a")["pct_peak"]
targets = {BC: ">= 1.6", A_PEAK: ">= 70"}
lines = [f"# Training step speed: `bench/train_step.py{' --quick' * args.quick}`", "",
         f"D={D}, {L} couplings of {len(H)}x{H[0]} ReLU, batch {B}, float32; {args.rounds} rounds"
         f" x {K} steps; TF {tf.__version__}, TFP {tfp.__version__}, Keras {keras.__version__}, "
         f"torch {torch_version or 'absent (skipped)'}; {os.cpu_count()} CPUs; TF threads "
         f"intra={args.intra or 'default'} inter={args.inter or 'default'}; "
         f"tf matmul peak {peak:.0f} GFLOP/s.", "",
         "| config | params | ms/step median (min-max) | steps/s | GFLOP/step 6PB (counted) "
         "| GFLOP/s 6PB (counted) | % of peak | other procs' CPU % median (max), redos |",
         "|---" * 8 + "|"]
for x in rows:
    c1, c2 = ((f" ({x['gflop_counted']:.3g})", f" ({x['gflops_counted']:.0f})")
              if x["gflop_counted"] else ("", ""))
    lines.append(f"| {x['label']} | {x['params'] / 1e6:.2f}M | {x['ms']:.1f} "
                 f"({min(x['round_ms']):.1f}-{max(x['round_ms']):.1f}) | {x['steps_s']:.2f} | "
                 f"{x['gflop_6pb']:.3g}{c1} | {x['gflops_6pb']:.0f}{c2} | {x['pct_peak']:.0f}% | "
                 f"{statistics.median(x['other_cpu_pct']):.0f} ({max(x['other_cpu_pct']):.0f}), "
                 f"{x['retries']} |")
lines += ["", "| ratio | value | target |", "|---|---|---|"]
lines += [f"| {k} | {v:.2f} | {targets.get(k, '')} |" for k, v in ratios.items()]
lines += ["", "Matmul rows: params 0, FLOPs = 2*N^3 per call. (c)'s counted FLOPs are ~2x 6PB: "
          "TransformedDistribution.log_prob calls RealNVP.inverse, then inverse_log_det_jacobian, "
          "and each runs the conditioner; % of peak uses the nominal 6PB for every row."]
text = "\n".join(lines) + "\n"
print(text)
with open(args.out + ".md", "w") as f:
    f.write(text)
with open(args.out + ".json", "w") as f:
    json.dump(dict(args=vars(args), D=D, hidden=list(H), couplings=L, batch=B, tf=tf.__version__,
                   tfp=tfp.__version__, keras=keras.__version__, torch=torch_version,
                   peak_gflops=peak, rows=rows, ratios=ratios), f, indent=1)
