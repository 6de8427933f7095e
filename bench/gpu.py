"""Image flows on one accelerator: training img/s and peak memory (issue #15, item 3).

Run from the repo root on a machine with one GPU (no new model starts after --budget-s, 420 s
by default, so the run ends within ~10 minutes; what the budget cut is listed as skipped):
    python bench/gpu.py                   # writes bench/gpu.json and bench/gpu.md
    python bench/gpu.py --quick --out /tmp/gpu   # CPU smoke test (~30 s of CPU): tiny models,
                                                 # realnvp-28 and stack-32 only, batch 8, no XLA
What runs, in ONE process (one model alive at a time):
  grid   every --models model (default realnvp-28: `tn.RealNVPImage` on 28x28x1 with the
         `tfp-nice train --model realnvp-image` defaults for MNIST-size images: 3 scales, 2
         residual blocks, 32 filters, BatchNorm; realnvp-32: the same on 32x32x3) at
         --batches (64, 256): float32 and each --precisions mixed policy (`keras.mixed_precision`
         mixed_bfloat16, mixed_float16; Keras' compile scales the float16 loss), plain
         backprop; and float32 with memory-saving backprop (BatchNorm steps break the runs:
         each coupling is its own run, and the inner scales inside FactorOut stay plain).
  depth  --depth-model (stack-32: `depth` affine checkerboard couplings on 32x32x3, each a
         ResNetConditioner with 1 block of 64 filters; no squeeze, no normalisation, so
         `memory_saving=True` makes all of them one run) at --depths (8, 16, 32, 64),
         plain vs memory-saving, float32, batch --depth-batch (64).
Order (the budget cuts the tail): float32 grid; the shallowest and deepest depth; the mixed
policies; the middle depths; memory-saving on the grid models.
Each model (one per precision, backprop and depth): set the dtype policy, build,
compile(Adam(1e-4), jit_compile=--jit); then for each batch size (one row each; the batch axis
is unknown to the trace, so the sizes share it): an untimed fit of --warmup steps ("warm-up s":
the trace for the first size, the XLA compile for each), reset the device's memory stats,
then a timed fit of --steps steps on one repeated batch of uniform integer pixels in
[0, 256): img/s = steps * batch / wall time of that fit; peak = the device allocator's peak
bytes in use during it (weights, optimizer state, activations, temporaries); step peak = peak
- bytes in use before it. Memory is `tf.config.experimental.get_memory_info` of GPU:0 (TF's
BFC allocator; exact while TF holds its usual single region, i.e. without
TF_FORCE_GPU_ALLOW_GROWTH) or, with no GPU, of CPU:0 (TF_CPU_ALLOCATOR_USE_BFC=true is set
here before TensorFlow loads, and one free region of --reserve-mib is reserved first so chunks
have their exact size).
Status per row: ok; unsupported (a mixed-precision config raised: the library cannot run it
yet; the error is kept); error (float32 raised); oom; non-finite loss; skipped (time budget).
"compute dtypes" lists the dtypes the model's layers compute in, to show what a mixed policy
really changed.
Models are pluggable: `register_model(name, event_shape, quick_shape, build, depth=...)` adds
one, e.g. a Glow preset once it exists:
    register_model("glow-32", (32, 32, 3), (8, 8, 3), lambda shape, quick, depth, ms:
                   tn.Glow(list(shape), num_steps=depth or 32, memory_saving=ms), depth=True)
and `--models glow-32` or `--depth-model glow-32` runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2.0**20
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: ``build(event_shape, quick, depth, memory_saving) -> FlowModel``."""

    name: str
    event_shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    build: Callable
    depth: bool = False  # whether `depth` (number of couplings) is a parameter
    about: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, event_shape, quick_shape, build: Callable, depth: bool = False,
                   about: str = "") -> None:
    """Adds (or replaces) a model that ``--models`` / ``--depth-model`` can name."""
    MODELS[name] = ModelSpec(name, tuple(event_shape), tuple(quick_shape), build, depth, about)


def _realnvp_image(shape, quick, depth, memory_saving):
    import tfp_nice as tn

    size = dict(num_scales=1, num_blocks=1, filters=4, normalization="none") if quick else dict(
        num_scales=3, num_blocks=2, filters=32)
    return tn.RealNVPImage(list(shape), data_scale=256.0, logit_alpha=0.05,
                           memory_saving=memory_saving, **size)


def _coupling_stack(shape, quick, depth, memory_saving):
    import tensorflow as tf

    import tfp_nice as tn

    filters = 4 if quick else 64
    steps = tn.preprocessing.rescale(256.0) + tn.preprocessing.logit(0.05)
    for i in range(depth or 8):
        mask = tn.masks.checkerboard(list(shape), "even" if i % 2 == 0 else "odd")
        net = tn.ResNetConditioner(2 * shape[-1], filters=filters, num_blocks=1)
        steps.append(tn.AffineCoupling(net, mask=mask, conditioner_input="masked"))
    prior = tn.priors.standard_normal(list(shape), dtype=tf.float32)
    return tn.FlowModel(prior, steps, memory_saving=memory_saving)


register_model("realnvp-28", (28, 28, 1), (8, 8, 1), _realnvp_image,
               about="RealNVPImage, 3 scales, 2 blocks, 32 filters (tfp-nice train defaults)")
register_model("realnvp-32", (32, 32, 3), (8, 8, 3), _realnvp_image,
               about="RealNVPImage, 3 scales, 2 blocks, 32 filters, on 32x32x3")
register_model("stack-32", (32, 32, 3), (8, 8, 3), _coupling_stack, depth=True,
               about="depth affine checkerboard couplings, ResNetConditioner(64 filters, 1 block)")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="realnvp-28,realnvp-32")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--precisions", default=",".join(PRECISIONS[1:]),
                   help="mixed policies compared with float32")
    p.add_argument("--depth-model", default="stack-32")
    p.add_argument("--depths", default="8,16,32,64")
    p.add_argument("--depth-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per config")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compile) per config")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="jit_compile the training step (default: yes, as tfp-nice train; "
                        "quick: no, XLA compiles take longer than the smoke test)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="no new model starts after this many seconds (420; quick: no limit)")
    p.add_argument("--reserve-mib", type=int, default=1024, help="CPU only: see the docstring")
    p.add_argument("--quick", action="store_true", help="tiny models on CPU: a smoke test")
    p.add_argument("--out", default=os.path.join(HERE, "gpu"), help="path without extension")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.precisions, args.depths = (
            "realnvp-28", "8", "mixed_bfloat16", "2")
        args.depth_batch, args.steps, args.warmup, args.reserve_mib = 8, 2, 1, 64
    if args.jit is None:
        args.jit = not args.quick
    if args.budget_s is None and not args.quick:
        args.budget_s = 420.0
    for name in args.models.split(",") + [args.depth_model]:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    if not MODELS[args.depth_model].depth:
        p.error(f"--depth-model {args.depth_model!r} has no depth parameter")
    return args


def configs(args) -> list[dict]:
    """Every config group (one model, its batch sizes), most important first.

    The budget may cut the tail: float32 grid, the shallowest and deepest depth, the mixed
    policies, the middle depths, memory-saving on the grid models.
    """
    models, batches = args.models.split(","), [int(b) for b in args.batches.split(",")]
    mixed = [p for p in args.precisions.split(",") if p]
    depths = [int(d) for d in args.depths.split(",")]
    ends = [d for d in depths if d in (min(depths), max(depths))]

    def grid(precision, memory_saving):
        return [dict(part="grid", model=m, batches=batches, precision=precision,
                     memory_saving=memory_saving) for m in models]

    def depth(ds):
        return [dict(part="depth", model=args.depth_model, batches=[args.depth_batch],
                     precision="float32", memory_saving=ms, depth=d)
                for d in ds for ms in (False, True)]

    out = grid("float32", False) + depth(ends)
    for p in mixed:
        out += grid(p, False)
    return out + depth([d for d in depths if d not in ends]) + grid("float32", True)


# --------------------------------------------------------------------------------------------
# One config group
# --------------------------------------------------------------------------------------------
def _device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def _compute_dtypes(model) -> str:
    """The compute dtypes of the layers the flow's steps use (conditioners, normalisation)."""
    import tfp_nice as tn

    layers = tn.graph.collect(model.steps, "steps").layers
    return "+".join(sorted({str(layer.compute_dtype) for layer in layers})) or "-"


def _params(model) -> int | None:
    try:
        return int(model.count_params())
    except ValueError:  # never built: the first fit failed before
        return None


def _data(shape, batch: int):
    """One batch of integer pixels, repeated; the batch axis is unknown to the trace, so one
    traced step serves every batch size (XLA still compiles once per size)."""
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 256, (batch, *shape)).astype("float32")
    return tf.data.Dataset.from_tensors(x).repeat().unbatch().batch(batch).prefetch(2)


def _fit_seconds(model, ds, steps: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    history = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - t0, float(history.history["loss"][-1])


def _status(error: BaseException, precision: str) -> str:
    import tensorflow as tf

    if isinstance(error, tf.errors.ResourceExhaustedError):
        return "oom"
    first = (str(error).strip().splitlines() or [""])[0][:160]
    kind = "error" if precision == "float32" else "unsupported"
    return f"{kind} ({type(error).__name__}: {first})"


def _train_and_measure(model, shape, batch: int, args) -> dict:
    import numpy as np
    import tensorflow as tf

    device = _device()
    ds = _data(shape, batch)
    out = dict(status="ok")
    out["warmup_s"], _ = _fit_seconds(model, ds, args.warmup)
    tf.config.experimental.reset_memory_stats(device)
    before = tf.config.experimental.get_memory_info(device)["current"]
    seconds, loss = _fit_seconds(model, ds, args.steps)
    peak = tf.config.experimental.get_memory_info(device)["peak"]
    out.update(img_s=args.steps * batch / seconds, step_s=seconds / args.steps, loss=loss,
               peak_mib=peak / MIB, step_peak_mib=(peak - before) / MIB)
    if not np.isfinite(loss):
        out["status"] = "non-finite loss"
    return out


def measure(spec: ModelSpec, group: dict, args) -> list[dict]:
    """Builds one model and trains it at each batch size of ``group``: one row per batch.

    Never raises for a model failure: the error becomes the rows' status.
    """
    import keras

    shape = spec.quick_shape if args.quick else spec.event_shape
    base = {k: v for k, v in group.items() if k != "batches"}
    rows = [dict(base, batch=b, event_shape=list(shape), status="ok") for b in group["batches"]]
    keras.mixed_precision.set_global_policy(group["precision"])
    model = None
    try:
        keras.utils.set_random_seed(0)
        model = spec.build(shape, args.quick, group.get("depth"), group["memory_saving"])
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=args.jit)
        for row in rows:
            try:
                row.update(_train_and_measure(model, shape, row["batch"], args))
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at the larger batch
                row["status"] = _status(e, group["precision"])
            row.update(params=_params(model), compute_dtypes=_compute_dtypes(model))
    except Exception as e:  # noqa: BLE001 - recorded in the table, the run goes on
        for row in rows:
            row["status"] = _status(e, group["precision"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
        del model
        keras.backend.clear_session()
        gc.collect()
    return rows


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def _fmt(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    if value is None or (row["status"] != "ok" and key != "warmup_s"):
        return "-"
    return format(value, spec)


def table(rows: list[dict], env: dict) -> str:
    lines = ["# Image flows on one accelerator: training img/s and peak memory", "",
             f"`python bench/gpu.py{' --quick' if env['quick'] else ''}` on **{env['device']}** "
             f"({env['device_name']}); TF {env['tf']}, Keras {env['keras']}; "
             f"jit_compile={env['jit']}; {env['steps']} timed steps per row after "
             f"{env['warmup']} untimed (warm-up s: their wall time, with the trace and any XLA "
             "compile; the first batch size of a model also pays the trace). Peak = device "
             "allocator peak during the timed steps (weights, optimizer state, activations); "
             "step peak = peak - bytes in use before them. See the module docstring.", "",
             f"- load average before / after: {env['load_before']} / {env['load_after']} "
             f"(CPU count {env['cpus']}); wall time {env['wall_s']:.0f} s", ""]
    for part, title in (("grid", "Image models"), ("depth", "Depth: plain vs memory-saving")):
        part_rows = [r for r in rows if r["part"] == part]
        if not part_rows:
            continue
        lines += [f"## {title}", "",
                  "| model | depth | batch | precision | backprop | params | img/s | peak (MiB) "
                  "| step peak (MiB) | warm-up (s) | compute dtypes | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in part_rows:
            lines.append(" | ".join([
                f"| {r['model']}", str(r.get("depth", "-")), str(r["batch"]), r["precision"],
                "memory-saving" if r["memory_saving"] else "plain",
                f"{r['params']:,}" if r.get("params") else "-", _fmt(r, "img_s", ".1f"),
                _fmt(r, "peak_mib", ".0f"), _fmt(r, "step_peak_mib", ".0f"),
                _fmt(r, "warmup_s", ".1f"), r.get("compute_dtypes", "-"),
                r["status"].replace("|", "/")]) + " |")
        lines.append("")
    about = [f"- `{m}`: {MODELS[m].about}" for m in dict.fromkeys(r["model"] for r in rows)]
    return "\n".join(lines + ["Models:", ""] + about) + "\n"


def _environment(args) -> dict:
    import keras
    import tensorflow as tf

    device = _device()
    name = platform.processor() or platform.machine()
    if device.startswith("GPU"):
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0])
        name = details.get("device_name", "GPU")
    return dict(device=device, device_name=name, tf=tf.__version__, keras=keras.__version__,
                python=sys.version.split()[0], cpus=os.cpu_count(), jit=args.jit,
                steps=args.steps, warmup=args.warmup, quick=args.quick,
                load_before=_load())


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # before TensorFlow loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfp_nice._internal import files

    start = time.perf_counter()
    if _device() == "CPU:0":  # one free region: later chunks are split at their exact size
        tf.raw_ops.Empty(shape=[args.reserve_mib, 2**20], dtype=tf.uint8)
    env = _environment(args)
    rows = []
    for group in configs(args):
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            base = {k: v for k, v in group.items() if k != "batches"}
            new = [dict(base, batch=b, status="skipped (time budget)") for b in group["batches"]]
        else:
            new = measure(MODELS[group["model"]], group, args)
        rows += new
        for r in new:
            print(f"{r['model']:>10} depth {r.get('depth', '-'):>3} batch {r['batch']:>4} "
                  f"{r['precision']:>14} {'mem-saving' if r['memory_saving'] else 'plain':>10} "
                  f"{r.get('img_s', 0):9.1f} img/s  peak {r.get('peak_mib', 0):8.0f} MiB  "
                  f"{r['status']}", flush=True)
    env.update(load_after=_load(), wall_s=time.perf_counter() - start)
    md = table(rows, env)
    files.atomic_write_json(args.out + ".json", dict(args=vars(args), env=env, rows=rows))
    files.atomic_write_text(args.out + ".md", md)
    print(md)
    return rows


if __name__ == "__main__":
    main()
