"""Peak memory and step time of memory-saving (reversible) backprop vs plain backprop.

Run from the repo root (the full run takes ~25-35 minutes on an idle machine; memory does not
depend on the load, step times do):
    TF_CPU_ALLOCATOR_USE_BFC=true python bench/reversible_memory.py
    python bench/reversible_memory.py --quick      # smoke test: batch 64, width 64, depths 2, 4
Two models, each at depths 8, 16, 32, 64, batch 2048, width 1024 (float32):
  revnet: tfp_nice.reversible.ReversibleSequential of RevNet blocks, F = G = Dense(512, tanh);
          loss mean(y^2);
  flow:   tfp_nice.RealNVP([1024]) with `depth` affine couplings, each conditioner
          512 -> Dense(512, tanh) -> 1024 (shift, log-scale); loss mean NLL.
Each is run with plain backprop (memory_saving=False) and with the memory-saving gradient
(memory_saving=True), in a tf.function training step (tape gradient + SGD update); the
memory-saving and plain steps also under jit_compile=True (at --jit-depths), and the
memory-saving step under XLA once more with control dependencies only ("before": the ordering
tfp_nice used before its XLA optimization barriers, which XLA ignores).
Memory: one fresh subprocess per config (TF_CPU_ALLOCATOR_USE_BFC=true is set for it, so
tf.config.experimental.get_memory_info("CPU:0") is real). The child first reserves one free
BFC region of --reserve-mib, so every later chunk is split from it at its exact size (without
it, a chunk taken from a fresh power-of-two region is not split below twice the request, and
an XLA temp buffer of 87 MiB read as 128). After 2 warm-up steps the peak counter is reset
and one step runs: "step peak" = BFC peak - bytes in use before the step (activations,
gradients and temporaries; weights and the input batch are resident before).
"grads" = bytes of all parameter gradients, for reference: the update runs inside the same
graph, so each gradient is consumed as soon as it is ready and they need not coexist.
Time: one subprocess per (model, depth) runs plain and memory-saving interleaved (--rounds
rounds of --steps steps each, after warm-up); we report each mode's median step, the median
of the per-round ratio memory-saving / plain, and a 2048^2 matmul's GFLOP/s before and after
(~200 on this machine when idle) as a gauge of CPU contention.
Before the run we wait (polling every 30 s, up to --wait-idle s) until no other `bench/`
process runs, and record `uptime` before and after and the 1-minute load average at the end
of each child. Writes bench/reversible_memory.md, .json and .png (memory vs depth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2.0**20


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="8,16,32,64")
    p.add_argument("--jit-depths", default="8,16,32,64", help="depths also measured with XLA")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--models", default="revnet,flow")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=1, help="timed steps per mode per round")
    p.add_argument("--reserve-mib", type=int, default=None,
                   help="free BFC region reserved first (MiB; 3072, quick 64)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--time-only", action="store_true",
                   help="re-measure step times only; keep the memory results of --out .json")
    p.add_argument("--memory-only", action="store_true",
                   help="re-measure memory only; keep the step times of --out .json")
    p.add_argument("--wait-idle", type=float, default=None, help="s to wait (1200; quick 0)")
    p.add_argument("--out", default=os.path.join(HERE, "reversible_memory"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.depths, args.jit_depths, args.batch, args.width = "2,4", "4", 64, 64
        args.rounds, args.steps = 2, 1
    if args.wait_idle is None:
        args.wait_idle = 0 if args.quick else 1200
    if args.reserve_mib is None:
        args.reserve_mib = 64 if args.quick else 3072
    return args


# --------------------------------------------------------------------------------------------
# Child: one measurement.
# --------------------------------------------------------------------------------------------
def _build(model, depth, width, memory_saving):
    import keras
    import tensorflow as tf

    import tfp_nice as tn
    from tfp_nice.reversible import ReversibleBlock, ReversibleSequential

    keras.utils.set_random_seed(0)
    half = width // 2
    if model == "revnet":
        def branch():
            return keras.layers.Dense(half, activation="tanh")

        net = ReversibleSequential([ReversibleBlock(branch(), branch()) for _ in range(depth)],
                                   memory_saving=memory_saving)
        net.build((None, width))
        return net, lambda x: tf.reduce_mean(tf.square(net(x)))
    flow = tn.RealNVP([width], num_couplings=depth, hidden_units=(half,), activation="tanh",
                      memory_saving=memory_saving)
    return flow, lambda x: tf.reduce_mean(flow(x))


def _step_fn(net, loss_fn, jit):
    import keras
    import tensorflow as tf

    opt = keras.optimizers.SGD(1e-4)
    variables = net.trainable_variables
    opt.build(variables)

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            loss = loss_fn(x)
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def _matmul_gflops() -> float:
    """GFLOP/s of a 2048x2048 f32 matmul (best of 5): how busy the machine is right now."""
    import tensorflow as tf

    a = tf.random.normal([2048, 2048])
    f = tf.function(tf.linalg.matmul)
    f(a, a).numpy()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        f(a, a).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def _child(args):
    import numpy as np
    import tensorflow as tf

    kind, model, depth, jit = args.child.split(":")
    depth, jit = int(depth), jit == "jit"
    x = tf.constant(np.random.default_rng(0).standard_normal((args.batch, args.width)),
                    tf.float32)
    if kind == "mem":  # model, one mode; fresh process for a clean peak
        # Exact chunks: reserve one region, free it again (uninitialised: no pages touched).
        tf.raw_ops.Empty(shape=[args.reserve_mib, 2**20], dtype=tf.uint8)
        mode = model.split("-")[1] if "-" in model else "rev"
        if mode == "ctrl":  # the ordering before the XLA barriers: control dependencies only
            from tfp_nice._internal import compat

            compat.in_xla_context = lambda: False
        net, loss_fn = _build(model.split("-")[0], depth, args.width, mode != "plain")
        step = _step_fn(net, loss_fn, jit)
        t0 = time.perf_counter()
        step(x).numpy()
        compile_s = time.perf_counter() - t0
        step(x).numpy()
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        t0 = time.perf_counter()
        loss = float(step(x).numpy())
        step_s = time.perf_counter() - t0
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        grads = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                    for v in net.trainable_variables)
        out = dict(peak=peak - before, grads=grads, resident=before, step_s=step_s,
                   compile_s=compile_s, loss=loss, load=os.getloadavg()[0])
    else:  # timing: plain and memory-saving interleaved in one process
        steps = {}
        for mode in ("plain", "rev"):
            net, loss_fn = _build(model, depth, args.width, mode == "rev")
            steps[mode] = _step_fn(net, loss_fn, jit)
            steps[mode](x).numpy()
        for _ in range(2):  # untimed warm-up rounds, alternating like the timed ones
            for mode in ("plain", "rev"):
                steps[mode](x).numpy()
        gflops_before = _matmul_gflops()
        times = {"plain": [], "rev": []}
        ratios = []
        for r in range(args.rounds):
            med = {}
            for mode in (("plain", "rev") if r % 2 == 0 else ("rev", "plain")):
                ts = []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    steps[mode](x).numpy()
                    ts.append(time.perf_counter() - t0)
                times[mode] += ts
                med[mode] = statistics.median(ts)
            ratios.append(med["rev"] / med["plain"])
        out = dict(plain_s=statistics.median(times["plain"]), rev_s=statistics.median(times["rev"]),
                   ratio=statistics.median(ratios), ratios=ratios, times=times,
                   gflops=[gflops_before, _matmul_gflops()])
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------
# Parent: orchestrate, wait for idle, write the outputs.
# --------------------------------------------------------------------------------------------
def _others() -> list[str]:
    mine = {os.getpid()}
    try:
        out = subprocess.run(["pgrep", "-af", "bench/"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    lines = []
    for line in out.splitlines():
        pid = int(line.split()[0])
        if pid not in mine and "reversible_memory.py" not in line and "pgrep" not in line:
            lines.append(line)
    return lines


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _run_child(args, spec):
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec, "--batch", str(args.batch),
           "--width", str(args.width), "--rounds", str(args.rounds), "--steps", str(args.steps),
           "--reserve-mib", str(args.reserve_mib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")


def _plot(results, depths, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results}, key=lambda m: m != "revnet")
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    styles = {("plain", False): ("plain backprop", "tab:red", "o-"),
              ("rev", False): ("memory-saving", "tab:blue", "s-"),
              ("rev", True): ("memory-saving, jit_compile", "tab:green", "^--"),
              ("ctrl", True): ("memory-saving, jit, control deps only (before)", "tab:gray",
                               "x:"),
              ("plain", True): ("plain, jit_compile", "tab:orange", "v:")}
    for ax, model in zip(axes[0], models):
        for (mode, jit), (label, color, fmt) in styles.items():
            rs = sorted((r for r in results if r["model"] == model and r["mode"] == mode
                         and r["jit"] == jit), key=lambda r: r["depth"])
            if rs:
                ax.plot([r["depth"] for r in rs], [r["peak"] / MIB for r in rs], fmt,
                        color=color, label=label)
        ax.set_title({"revnet": "RevNet (ReversibleSequential)",
                      "flow": "affine-coupling flow (RealNVP)"}.get(model, model))
        ax.set_xlabel("depth (blocks / couplings)")
        ax.set_ylabel("peak memory of a training step (MiB, BFC)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _table(args, results, timing, env_lines) -> str:
    depths = [int(d) for d in args.depths.split(",")]
    lines = ["# Reversible (memory-saving) backprop: peak memory and step time", "",
             f"Batch {args.batch}, width {args.width}, float32, one tf.function training step "
             "(tape gradient + SGD). RevNet: F = G = Dense(width/2, tanh); flow: RealNVP "
             "affine couplings, conditioner width/2 -> Dense(width/2, tanh) -> width.",
             "Memory from `TF_CPU_ALLOCATOR_USE_BFC=true` in a fresh process per config, "
             f"after reserving one free {args.reserve_mib} MiB BFC region (so chunks have their "
             "exact size): step peak = BFC peak - bytes in use before the step (activations, "
             "gradients, temporaries; weights and the batch are resident before). "
             "Memory-saving + jit orders each reconstruction after its incoming gradient with "
             "an XLA optimization barrier; the 'before' column is the same step with control "
             "dependencies only, which XLA drops (the code before the barriers). "
             "grads = bytes of all "
             "parameter gradients, for reference (the in-graph update consumes each gradient "
             "when it is ready, so they need not coexist). Time: median step, plain and "
             "memory-saving interleaved in one process (after 1 + 2 alternating warm-up "
             "steps each); ratio = median over rounds of (memory-saving / plain). The matmul "
             "column (2048^2 f32, best of 5) shows how busy the 2 cores were: idle, this "
             "machine gives ~200 GFLOP/s.", ""]
    lines += [f"- {e}" for e in env_lines] + [""]
    for model in [m for m in ("revnet", "flow") if any(r["model"] == m for r in results)]:
        lines += [f"## {model}", "",
                  "| depth | plain: step peak (MiB) | memory-saving: step peak (MiB) | "
                  "memory-saving + jit: step peak (MiB) | memory-saving + jit, control deps "
                  "only (before) (MiB) | plain + jit: step peak (MiB) | "
                  "grads (MiB) | plain step (s) | memory-saving step (s) | time ratio | "
                  "matmul GFLOP/s before / after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for d in depths:
            cells = []
            for mode, jit in (("plain", False), ("rev", False), ("rev", True), ("ctrl", True),
                              ("plain", True)):
                r = next((r for r in results if r["model"] == model and r["depth"] == d
                          and r["mode"] == mode and r["jit"] == jit), None)
                cells.append(f"{r['peak'] / MIB:.0f}" if r else "-")
            r0 = next(r for r in results if r["model"] == model and r["depth"] == d)
            t = timing.get(f"{model}:{d}")
            tcells = ([f"{t['plain_s']:.3f}", f"{t['rev_s']:.3f}", f"{t['ratio']:.2f}",
                       "{:.0f} / {:.0f}".format(*t["gflops"]) if "gflops" in t else "-"]
                      if t else ["-"] * 4)
            lines.append(f"| {d} | " + " | ".join(cells) + f" | {r0['grads'] / MIB:.0f} | "
                         + " | ".join(tcells) + " |")
        lines.append("")
    return "\n".join(lines)


def _targets(args, results, timing) -> list[str]:
    depths = [int(d) for d in args.depths.split(",")]
    lo, hi = min(depths), max(depths)
    out = []
    for model in [m for m in ("revnet", "flow") if any(r["model"] == m for r in results)]:
        def get(d, mode="rev", jit=False, model=model):
            return next(r for r in results if r["model"] == model and r["depth"] == d
                        and r["mode"] == mode and r["jit"] == jit)
        peak = get(hi)["peak"] / get(lo)["peak"]
        plain = get(hi, "plain")["peak"] / get(hi)["peak"]
        ratios = [timing[f"{model}:{d}"]["ratio"] for d in depths if f"{model}:{d}" in timing]
        out.append(
            f"- **{model}**: memory-saving step peak at depth {hi} / depth {lo} = {peak:.2f} "
            f"(target <= 1.25: {'met' if peak <= 1.25 else 'NOT met'}); plain / memory-saving "
            f"at depth {hi} = {plain:.1f}x; step time ratio {min(ratios):.2f}-{max(ratios):.2f} "
            f"(target <= 1.4: {'met' if max(ratios) <= 1.4 else 'NOT met'} at every depth"
            + ("" if max(ratios) <= 1.4 else
               f"; met at {sum(r <= 1.4 for r in ratios)}/{len(ratios)} depths") + ")."
        )
        jit_depths = sorted(r["depth"] for r in results if r["model"] == model
                            and r["mode"] == "rev" and r["jit"])
        if len(jit_depths) > 1:
            jlo, jhi = jit_depths[0], jit_depths[-1]
            peak = get(jhi, jit=True)["peak"] / get(jlo, jit=True)["peak"]
            before = get(jhi, "ctrl", True)["peak"] / get(jlo, "ctrl", True)["peak"]
            out.append(
                f"- **{model}, jit_compile=True**: memory-saving step peak at depth {jhi} / "
                f"depth {jlo} = {peak:.2f} (target <= 1.25: "
                f"{'met' if peak <= 1.25 else 'NOT met'}); with control dependencies only "
                f"(before the barriers) {before:.2f}."
            )
    return out


def main(argv=None):
    args = _parse(argv)
    if args.child:
        return _child(args)
    waited, t0 = 0.0, time.time()
    while True:
        others = _others()
        if not others or time.time() - t0 >= args.wait_idle:
            break
        print(f"waiting for other benchmarks ({len(others)}): {others[0][:100]}", flush=True)
        time.sleep(30)
    waited = time.time() - t0
    env_lines = [f"uptime before: `{_uptime()}`",
                 f"waited {waited:.0f} s for other `bench/` processes; still running at start: "
                 f"{_others() or 'none'}"]
    depths = [int(d) for d in args.depths.split(",")]
    jit_depths = [int(d) for d in args.jit_depths.split(",") if d]
    results, timing = [], {}
    if args.time_only:
        with open(args.out + ".json") as f:
            old = json.load(f)
        results = old["results"]
        env_lines.insert(0, "memory: from the earlier run (" + "; ".join(
            e for e in old["env"] if e.startswith("uptime")) + "); step times re-measured")
    if args.memory_only:
        with open(args.out + ".json") as f:
            old = json.load(f)
        timing = old["timing"]
        env_lines.append("step times: from the earlier run (" + "; ".join(
            e for e in old["env"] if e.startswith("uptime")) + "); memory re-measured")
    for model in args.models.split(","):
        for d in depths:
            for mode, jit in [] if args.time_only else [("plain", False), ("rev", False)] + (
                    [("rev", True), ("ctrl", True), ("plain", True)] if d in jit_depths else []):
                name = model + ("" if mode == "rev" else f"-{mode}")
                r = _run_child(args, f"mem:{name}:{d}:{'jit' if jit else 'nojit'}")
                r.update(model=model, depth=d, mode=mode, jit=jit)
                results.append(r)
                print(f"{model:6s} depth {d:3d} {mode:5s}{' jit' if jit else '    '} "
                      f"step peak {r['peak'] / MIB:8.1f} MiB  grads {r['grads'] / MIB:6.1f} MiB  "
                      f"step {r['step_s']:.2f} s", flush=True)
            if args.memory_only:
                continue
            t = _run_child(args, f"time:{model}:{d}:nojit")
            timing[f"{model}:{d}"] = t
            print(f"{model:6s} depth {d:3d} time plain {t['plain_s']:.3f} s  memory-saving "
                  f"{t['rev_s']:.3f} s  ratio {t['ratio']:.2f}", flush=True)
    env_lines.append(f"uptime after: `{_uptime()}`")
    loads = [r["load"] for r in results if "load" in r]
    if loads:
        env_lines.append(f"1-minute load average at the end of each memory child: "
                         f"{min(loads):.1f}-{max(loads):.1f} (median "
                         f"{statistics.median(loads):.1f}) on 2 cores")
    md = _table(args, results, timing, env_lines)
    md += "\n## Targets\n\n" + "\n".join(_targets(args, results, timing)) + "\n"
    print(md)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(args=vars(args), results=results, timing=timing, env=env_lines), f,
                  indent=1)
    _plot(results, depths, args.out + ".png")
    return results, timing


if __name__ == "__main__":
    main()
