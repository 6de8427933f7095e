"""``tfp-nice``: train, evaluate and sample reversible generative models from the shell.

  tfp-nice train [--model nice|realnvp|realnvp-image] [--data digits|moons|...|PATH|tfds:NAME]
                 [--epochs N] [--num-scales S --num-blocks B --filters F (realnvp-image)]
                 [--batch-size B] [--out DIR] [--seed S] [--strategy none|mirrored]
                 [--resume | --overwrite]
  tfp-nice evaluate RUN_DIR|MODEL.keras [--data ...]
  tfp-nice sample RUN_DIR [-n N] [--temperature T] [--seed S] [--out FILE.png|.npy]
  tfp-nice export RUN_DIR [--out saved_models/NAME] [--version N] [--max-samples M]

Bad input (missing or corrupt files, wrong arrays, NaN, out-of-range pixels, unknown names,
a finished ``--out``) ends with a one-line ``tfp-nice: error: ...`` and exit code 2; nothing
already written is destroyed or left half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: also exit 2, one line + usage
        self.print_usage(sys.stderr)
        self.exit(2, f"tfp-nice: error: {message}\n")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _units(text: str) -> tuple[int, ...]:
    try:
        units = tuple(int(u) for u in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 256,256, got {text!r}"
        ) from None
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return units


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH like 0,255, got {text!r}") from None
    if not high > low:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH, got {text!r}")
    return low, high


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tfp-nice", description="Reversible generative models with TFP and Keras.")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a flow (default: NICE on the offline digits)")
    t.add_argument("--model", default="nice", choices=["nice", "realnvp", "realnvp-image"],
                   help="nice | realnvp (vector MLP couplings) | realnvp-image (RealNVP's "
                        "multi-scale convolutional architecture, image data only)")
    t.add_argument("--data", default="digits",
                   help="digits | moons | rings | checkerboard | 8gaussians | PATH.npy/.npz | "
                        "tfds:NAME (default: digits, offline)")
    t.add_argument("--epochs", type=_positive_int, default=None)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--learning-rate", type=_positive_float, default=None)
    t.add_argument("--num-couplings", type=_positive_int, default=None)
    t.add_argument("--hidden-units", type=_units, default=None, help="e.g. 256,256")
    t.add_argument("--num-scales", type=_positive_int, default=None,
                   help="realnvp-image: scales of the multi-scale architecture (default: as many "
                        "as keep the smallest image >= 4x4, at most 3)")
    t.add_argument("--num-blocks", type=_positive_int, default=None,
                   help="realnvp-image: residual blocks per coupling network (default: 2)")
    t.add_argument("--filters", type=_positive_int, default=None,
                   help="realnvp-image: feature maps at the first scale (default: 16 for "
                        "images up to 16x16 pixels, else 32)")
    t.add_argument("--patience", type=_positive_int, default=None,
                   help="early-stopping patience in epochs (default: epochs/4)")
    t.add_argument("--value-range", type=_range, default=None,
                   help="LOW,HIGH of your data's values (default: detected)")
    t.add_argument("--num-levels", type=_positive_int, default=None,
                   help="number of integer levels of your data (default: 256 for uint8)")
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--strategy", default="none", choices=["none", "mirrored"],
                   help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or logical CPUs)")
    t.add_argument("--logical-cpus", type=_positive_int, default=None,
                   help="split the CPU into N logical devices (to run --strategy mirrored "
                        "without GPUs)")
    t.add_argument("--out", default=None,
                   help="run directory (default: runs/<model>-<data>-<timestamp>/)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="train a finished run further")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.add_argument("--no-export", action="store_true",
                   help="skip writing the TF Serving SavedModel RUN_DIR/saved_model/1/")

    e = sub.add_parser("evaluate", help="held-out NLL and bits/dim of a trained model")
    e.add_argument("run", help="a run directory or a .keras file")
    e.add_argument("--data", default=None, help="data to evaluate on (default: the run's)")
    e.add_argument("--seed", type=_non_negative_int, default=0)

    s = sub.add_parser("sample", help="draw samples from a trained model")
    s.add_argument("run", help="a run directory or a .keras file")
    s.add_argument("-n", "--num-samples", type=_positive_int, default=64)
    s.add_argument("--temperature", type=_positive_float, default=1.0)
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--out", default=None, help="FILE.png or FILE.npy (default: RUN/samples-T.png)")

    x = sub.add_parser("export", help="write a TF Serving SavedModel (NAME/VERSION/) with "
                                      "log_prob, sample, encode and decode signatures")
    x.add_argument("run", help="a run directory or a .keras file")
    x.add_argument("--out", default=None,
                   help="the model base path, NAME/ (default: saved_models/<run name>)")
    x.add_argument("--version", type=_positive_int, default=None,
                   help="version number (default: one more than the largest present, or 1); "
                        "an existing version is never overwritten")
    x.add_argument("--max-samples", type=_positive_int, default=100_000,
                   help="most rows (samples) a sample request may have (default: 100000)")
    return p


def _slug(text: str) -> str:
    base = text
    if os.sep in text or "." in text:
        base = os.path.splitext(os.path.basename(text.rstrip("/")))[0]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in base.replace("tfds:", ""))


def _train(args) -> int:
    import tensorflow as tf

    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )
    from tfp_nice import training

    cfg = training.TrainConfig(
        model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, num_couplings=args.num_couplings,
        hidden_units=args.hidden_units, seed=args.seed, strategy=args.strategy,
        patience=args.patience, value_range=args.value_range, num_levels=args.num_levels,
        num_scales=args.num_scales, num_blocks=args.num_blocks, filters=args.filters,
    )
    out = args.out
    if out is None:
        prefix = f"{args.model}-{_slug(args.data)}-"
        out = training.find_unfinished_run("runs", prefix, cfg) or os.path.join(
            "runs", prefix + time.strftime("%Y%m%d-%H%M%S")
        )
    metrics = training.train(cfg, out, resume=args.resume, overwrite=args.overwrite,
                             serving_export=not args.no_export,
                             # a progress bar on a terminal, one line per epoch in a log file
                             verbose=1 if sys.stdout.isatty() else 2)
    out = os.path.abspath(out)
    print(f"held-out NLL: {metrics['test_nll_nats']:.3f} nats, "
          f"{metrics['test_bits_per_dim']:.4f} bits/dim "
          f"({metrics['epochs']} epochs, best epoch {metrics['best_epoch']}, "
          f"{metrics['train_seconds']:.0f} s)")
    for name in ("model.keras", "metrics.json", "samples.png", "history.csv", "logs",
                 *(["saved_model"] if "saved_model" in metrics else [])):
        print(f"  {name:<13} {os.path.join(out, name)}")
    return 0


def _evaluate(args) -> int:
    from tfp_nice import data as data_lib
    from tfp_nice import training

    model, meta = training.load_run(args.run)
    if args.data is None and not meta:
        raise ValueError(f"{args.run!r} has no run.json next to it; pass --data")
    cfg = meta.get("config", {})
    source = args.data or cfg.get("data")
    vr = cfg.get("value_range") if args.data is None else None
    splits = data_lib.load(source, seed=cfg.get("seed", args.seed),
                           value_range=tuple(vr) if vr else None,
                           num_levels=cfg.get("num_levels") if args.data is None else None)
    if tuple(splits.spec.event_shape) != tuple(model.event_shape):
        raise ValueError(
            f"--data {source!r} has event shape {list(splits.spec.event_shape)} but the model "
            f"expects {list(model.event_shape)}"
        )
    nll, bpd = training.evaluate_nll(model, splits.test, splits.spec)
    result = {"data": source, "test_nll_nats": nll, "test_bits_per_dim": bpd,
              "num_examples": int(len(splits.test))}
    print(f"held-out NLL on {source}: {nll:.3f} nats, {bpd:.4f} bits/dim "
          f"({len(splits.test)} examples)")
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run))
    path = os.path.join(run_dir, "evaluation.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)
    print(f"  written to {path}")
    return 0


def _sample(args) -> int:
    import numpy as np
    import tensorflow as tf

    from tfp_nice import plotting, training

    model, meta = training.load_run(args.run)
    x = model.sample(args.num_samples, seed=tf.constant([args.seed, 0], tf.int32),
                     temperature=args.temperature).numpy()
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run))
    out = args.out or os.path.join(run_dir, f"samples-T{args.temperature:g}.png")
    if not out.endswith((".png", ".npy")):
        raise ValueError(f"--out must end in .png or .npy. Received: --out {out!r}")
    if out.endswith(".npy"):
        tmp = f"{out}.tmp-{os.getpid()}.npy"
        np.save(tmp, x)
        os.replace(tmp, out)
    else:
        data = meta.get("data", {})
        low = data.get("low", float(x.min()))
        high = data.get("num_levels") or data.get("high", float(x.max()))
        plotting.save_samples_figure(out, {args.temperature: x}, low, high)
    print(f"{args.num_samples} samples at temperature {args.temperature:g} written to "
          f"{os.path.abspath(out)}")
    return 0


def _export(args) -> int:
    from tfp_nice import export, training

    model, meta = training.load_run(args.run)
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run))
    named = run_dir if os.path.basename(args.run) in ("", "model.keras") else args.run
    out = args.out or os.path.join("saved_models", _slug(os.path.abspath(named)))
    extra = {"source": args.run}
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
        extra["metrics"] = {k: metrics[k] for k in ("test_nll_nats", "test_bits_per_dim")
                            if k in metrics}
    except (OSError, ValueError):
        pass
    path = export.save_for_serving(model, out, version=args.version, data=meta.get("data"),
                                   max_samples=args.max_samples, extra_metadata=extra)
    print(f"SavedModel written to {path}")
    print(f"  signatures: {export.signatures.summary()} (every input batched: [rows, ...])")
    print(f"  serve it:   --model_base_path={os.path.dirname(path)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tfp-nice`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = {"train": _train, "evaluate": _evaluate, "sample": _sample, "export": _export}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("tfp-nice: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"tfp-nice: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
