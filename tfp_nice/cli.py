"""``tfp-nice``: train, evaluate and sample reversible generative models from the shell.

  tfp-nice train [--model nice|realnvp|realnvp-image|glow|nsf]
                 [--data digits|moons|...|PATH|tfds:NAME]
                 [--epochs N] [--time-limit MINUTES] [--out DIR] [--resume | --overwrite]
                 [--conditional] ...
  tfp-nice evaluate RUN_DIR|MODEL.keras [--data ...]
  tfp-nice sample RUN_DIR [-n N] [--temperature T] [--seed S] [--label C] [--out FILE.png|.npy]
  tfp-nice export RUN_DIR [--out saved_models/NAME] [--version N] [--max-samples M]

This module parses arguments, checks them (and the files and directories they name) before
importing TensorFlow, and turns errors into one line naming the flag: exit code 2 for bad
input (missing or corrupt files, wrong arrays, NaN, out-of-range values, a run directory that
cannot be used as asked, a full disk), 3 when training diverges, 130 on Ctrl-C. Nothing
already written is destroyed or left half-written. The work itself is in
:mod:`tfp_nice.training`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence

__all__ = ["main"]

_MAX_SEED = 2**32 - 1
_MAX_VERSION = 2**31 - 1
_MAX_SAMPLES = 100_000
_MAX_TEMPERATURE = 10.0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: also exit 2, one line + usage
        self.print_usage(sys.stderr)
        self.exit(2, f"tfp-nice: error: {message}\n")


def _int_in(minimum: int, maximum: int | None = None):
    """An argparse type: an integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
        return value

    return parse


def _float_in(high: float | None = None):
    """An argparse type: a finite number in ``(0, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf") or (high is not None and value > high):
            bound = f"in (0, {high:g}]" if high is not None else "> 0"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


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
    if not (float("-inf") < low < high < float("inf")):
        raise argparse.ArgumentTypeError(f"expected finite LOW < HIGH, got {text!r}")
    return low, high


def _train_parser(sub) -> None:
    from tfp_nice.training.config import (
        CONDITIONINGS,
        MIXED_PRECISIONS,
        MODEL_NAMES,
        STRATEGIES,
    )

    t = sub.add_parser("train", help="train a flow (default: NICE on the offline digits)")
    t.add_argument("--model", default="nice", choices=list(MODEL_NAMES),
                   help="nice | realnvp (vector MLP couplings) | realnvp-image (RealNVP's "
                        "multi-scale convolutional architecture, image data only) | glow "
                        "(Glow: ActNorm, 1x1 convolutions, affine couplings; image data only) | "
                        "nsf (neural spline flow: rational-quadratic spline couplings)")
    t.add_argument("--data", default="digits",
                   help="digits | moons | rings | checkerboard | 8gaussians | PATH.npy/.npz | "
                        "tfds:NAME (default: digits, offline)")
    t.add_argument("--epochs", type=_int_in(1, 10**6), default=None)
    t.add_argument("--time-limit", type=_float_in(1e6), default=None, metavar="MINUTES",
                   help="stop training when this many minutes of training are spent (counted "
                        "over resumptions); the best validation weights are kept")
    t.add_argument("--memory-saving", action="store_true",
                   help="reversible backprop: recompute activations from the outputs instead of "
                        "storing them, so activation memory stays flat in depth (also under XLA, "
                        "which single-device runs use); ~1.2-1.3x the step time")
    t.add_argument("--batch-size", type=_int_in(1, 10**6), default=64)
    t.add_argument("--learning-rate", type=_float_in(), default=None)
    t.add_argument("--num-couplings", type=_int_in(1, 10**4), default=None)
    t.add_argument("--hidden-units", type=_units, default=None, help="e.g. 256,256")
    t.add_argument("--num-scales", type=_int_in(1, 16), default=None,
                   help="realnvp-image: scales of the multi-scale architecture (default: as many "
                        "as keep the smallest image >= 4x4, at most 3); glow: levels L")
    t.add_argument("--num-blocks", type=_int_in(1, 10**3), default=None,
                   help="realnvp-image: residual blocks per coupling network (default: 2 for "
                        "images up to 16x16 pixels, else 1); "
                        "glow: steps of flow K per level (default: 8)")
    t.add_argument("--filters", type=_int_in(1, 10**5), default=None,
                   help="realnvp-image: feature maps at the first scale (default: 16); "
                        "glow: width of the coupling "
                        "networks (default: 32)")
    t.add_argument("--patience", type=_int_in(1, 10**6), default=None,
                   help="early-stopping patience in epochs (default: epochs/4)")
    t.add_argument("--value-range", type=_range, default=None,
                   help="LOW,HIGH of your data's values (default: detected)")
    t.add_argument("--num-levels", type=_int_in(2, 2**24), default=None,
                   help="number of integer levels of your data (default: 256 for uint8)")
    t.add_argument("--seed", type=_int_in(0, _MAX_SEED), default=0)
    t.add_argument("--strategy", default="none", choices=list(STRATEGIES),
                   help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or logical "
                        "CPUs); multiworker: MultiWorkerMirroredStrategy over the machines of "
                        "TF_CONFIG or a Slurm allocation (run the same command on each; the "
                        "chief writes --out)")
    t.add_argument("--logical-cpus", type=_int_in(1, 64), default=None,
                   help="split the CPU into N logical devices (to run --strategy mirrored "
                        "without GPUs)")
    t.add_argument("--mixed-precision", default=None, choices=list(MIXED_PRECISIONS),
                   help="run the coupling networks in bfloat16 or float16 (Keras mixed "
                        "policy; float16 adds loss scaling); log-dets, prior and weights "
                        "stay float32")
    t.add_argument("--out", default=None,
                   help="run directory (default: runs/<model>-<data>-<timestamp>/)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="train a finished run further")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the tfp_nice run in --out (only a run directory holding "
                        "nothing but run files; the old run stays until the new one finished)")
    t.add_argument("--conditional", action="store_true",
                   help="train p(x | label) on the data's class labels (digits, TFDS 'label', "
                        "an .npz's y/y_train, y_val, y_test); metrics.json adds the Bayes "
                        "classifier's test_accuracy")
    t.add_argument("--conditioning", default=None, choices=list(CONDITIONINGS),
                   help="with --conditional: where the label acts: couplings (every coupling "
                        "network sees it), prior (a per-class latent mean and scale) or both "
                        "(default)")
    t.add_argument("--no-export", action="store_true",
                   help="skip writing the TF Serving SavedModel RUN_DIR/saved_model/1/")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tfp-nice", description="Reversible generative models with TFP and Keras.")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks and TensorFlow's own log lines")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    e = sub.add_parser("evaluate", help="held-out NLL and bits/dim of a trained model")
    e.add_argument("run", help="a run directory or a .keras file")
    e.add_argument("--data", default=None, help="data to evaluate on (default: the run's)")
    e.add_argument("--seed", type=_int_in(0, _MAX_SEED), default=0)
    s = sub.add_parser("sample", help="draw samples from a trained model")
    s.add_argument("run", help="a run directory or a .keras file")
    s.add_argument("-n", "--num-samples", type=_int_in(1, _MAX_SAMPLES), default=64,
                   help=f"number of samples, at most {_MAX_SAMPLES}")
    s.add_argument("--temperature", type=_float_in(_MAX_TEMPERATURE), default=1.0,
                   help=f"in (0, {_MAX_TEMPERATURE:g}]")
    s.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0)
    s.add_argument("--label", type=_int_in(0, 2**31 - 1), default=None,
                   help="class to sample (a --conditional run only; default: every class in "
                        "turn)")
    s.add_argument("--out", default=None, help="FILE.png or FILE.npy (default: RUN/samples-T.png)")
    x = sub.add_parser("export", help="write a TF Serving SavedModel (NAME/VERSION/) with "
                                      "log_prob, sample, encode and decode signatures")
    x.add_argument("run", help="a run directory or a .keras file")
    x.add_argument("--out", default=None,
                   help="the model base path, NAME/ (default: saved_models/<run name>)")
    x.add_argument("--version", type=_int_in(1, _MAX_VERSION), default=None,
                   help=f"version number in [1, {_MAX_VERSION}] (default: one more than the "
                        "largest present, or 1); an existing version is never overwritten")
    x.add_argument("--max-samples", type=_int_in(1, _MAX_VERSION), default=None,
                   help="most rows (samples) a sample request may have (default: 100000)")
    return p


def _slug(text: str) -> str:
    base = text
    if os.sep in text or "." in text:
        base = os.path.splitext(os.path.basename(text.rstrip("/")))[0]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in base.replace("tfds:", ""))


def _check_run_path(path: str) -> None:
    """A run directory or ``.keras`` file must exist before TensorFlow is worth importing."""
    model = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.exists(model):
        from tfp_nice.training.run_dir import RunError

        raise RunError("no_model", model)


# --- commands ------------------------------------------------------------------------------------
def _train(args) -> int:
    from tfp_nice import data as data_lib
    from tfp_nice.training.config import TrainConfig
    from tfp_nice.training.run_dir import find_unfinished_run, plan

    cfg = TrainConfig(
        model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, num_couplings=args.num_couplings,
        hidden_units=args.hidden_units, seed=args.seed, strategy=args.strategy,
        patience=args.patience, value_range=args.value_range, num_levels=args.num_levels,
        num_scales=args.num_scales, num_blocks=args.num_blocks, filters=args.filters,
        time_limit=args.time_limit, memory_saving=args.memory_saving,
        conditional=args.conditional, conditioning=args.conditioning,
        mixed_precision=args.mixed_precision,
    )
    out = args.out
    if out is None:
        prefix = f"{args.model}-{_slug(args.data)}-"
        out = find_unfinished_run("runs", prefix, cfg) or os.path.join(
            "runs", prefix + time.strftime("%Y%m%d-%H%M%S"))
    if cfg.strategy != "multiworker":  # (a worker of a cluster leaves --out to its chief)
        plan(os.path.abspath(out), cfg, args.resume, args.overwrite)  # refuse before any work
    splits = data_lib.load(cfg.data, seed=cfg.seed, value_range=cfg.value_range,
                           num_levels=cfg.num_levels)  # refused before TensorFlow starts
    if cfg.conditional:
        splits.require_labels()
    tf = _import_tensorflow()
    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    from tfp_nice import training

    metrics = training.train(cfg, out, resume=args.resume, overwrite=args.overwrite,
                             serving_export=not args.no_export, warn_fn=_warning, splits=splits,
                             # a progress bar on a terminal, one line per epoch in a log file
                             verbose=1 if sys.stdout.isatty() else 2)
    out = os.path.abspath(out)
    if metrics.get("chief") is False:
        print(f"worker done after {metrics['epochs']} epochs; the chief writes {out}")
        return 0
    print(f"held-out NLL: {metrics['test_nll_nats']:.3f} nats, "
          f"{metrics['test_bits_per_dim']:.4f} bits/dim "
          f"({metrics['epochs']} epochs, best epoch {metrics['best_epoch']}, "
          f"{metrics['train_seconds']:.0f} s"
          + (", time limit reached" if metrics.get("time_limit_reached") else "") + ")")
    if "test_accuracy" in metrics:
        print(f"Bayes classifier: test accuracy {metrics['test_accuracy']:.4f}; marginal "
              f"p(x) {metrics['test_marginal_bits_per_dim']:.4f} bits/dim")
    for name in ("model.keras", "metrics.json", "samples.png", "history.csv", "logs",
                 *(["saved_model"] if "saved_model" in metrics else [])):
        print(f"  {name:<13} {os.path.join(out, name)}")
    return 0


def _evaluate(args) -> int:
    _check_run_path(args.run)
    _import_tensorflow()
    from tfp_nice.training import tools

    result = tools.evaluate_run(args.run, args.data, args.seed)
    print(f"held-out NLL on {result['data']}: {result['test_nll_nats']:.3f} nats, "
          f"{result['test_bits_per_dim']:.4f} bits/dim ({result['num_examples']} examples)")
    if "test_accuracy" in result:
        print(f"Bayes classifier: test accuracy {result['test_accuracy']:.4f}; marginal "
              f"p(x) {result['test_marginal_bits_per_dim']:.4f} bits/dim")
    print(f"  written to {result['path']}")
    return 0


def _sample(args) -> int:
    _check_run_path(args.run)
    if args.out is not None and not args.out.endswith((".png", ".npy")):
        raise ValueError(f"--out must end in .png or .npy. Received: --out {args.out!r}")
    _import_tensorflow()
    from tfp_nice.training import tools

    out = tools.sample_run(args.run, args.num_samples, args.temperature, args.seed, args.out,
                           label=args.label)
    at = "" if args.label is None else f" of class {args.label}"
    print(f"{args.num_samples} samples{at} at temperature {args.temperature:g} written to {out}")
    return 0


def _export(args) -> int:
    _check_run_path(args.run)
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run))
    named = run_dir if os.path.basename(args.run) in ("", "model.keras") else args.run
    out = args.out or os.path.join("saved_models", _slug(os.path.abspath(named)))
    _import_tensorflow()
    from tfp_nice.training import tools

    path = tools.export_run(args.run, out, args.version, args.max_samples)
    from tfp_nice import export

    print(f"SavedModel written to {path}")
    print(f"  signatures: {export.signatures.summary()} (every input batched: [rows, ...])")
    with open(os.path.join(path, "assets.extra", export.METADATA_FILE)) as f:
        condition = json.load(f).get("condition")
    if condition:
        port = export.signatures.CONDITIONS[condition["input"]]
        dims = ", ".join("rows" if d == "batch" else str(d) for d in condition["dims"])
        print(f"  condition:  every signature also takes `{port.name}` {port.dtype} [{dims}] "
              f"({port.doc}; a conditional model)")
    print(f"  serve it:   --model_base_path={os.path.dirname(path)}")
    return 0


_COMMANDS = {"train": _train, "evaluate": _evaluate, "sample": _sample, "export": _export}


# --- TensorFlow, quietly -----------------------------------------------------------------------
_NATIVE_LOG: list = []  # the file TensorFlow's native stderr goes to (when redirected)


def _import_tensorflow():
    """Imports TensorFlow (Keras, TFP) without their start-up chatter on stderr.

    In the ``tfp-nice`` process, stderr's file descriptor goes to a temporary file for the
    rest of the command (TensorFlow's C++ logging writes there, past ``TF_CPP_MIN_LOG_LEVEL``);
    the command's own messages still reach the terminal. ``--debug`` shows everything.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and _NATIVE_LOG == [] and _quiet_native():
        sink = tempfile.TemporaryFile(mode="w+b")
        terminal = os.dup(2)
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        sys.stderr = os.fdopen(terminal, "w", buffering=1)
        _NATIVE_LOG.append(sink)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _quiet_native() -> bool:
    from tfp_nice import _started_as_cli

    return _started_as_cli() and not _DEBUG


_DEBUG = False


def _warning(message: str) -> None:
    print(f"tfp-nice: warning: {message}", file=sys.stderr)


# --- errors ------------------------------------------------------------------------------------
_RUN_MESSAGES = {
    "foreign": "--out {path!r} exists and is not a tfp_nice run directory{detail}; choose "
               "another --out",
    "finished": "--out {path!r} already holds a finished run; pass --resume to train it further "
                "or --overwrite to replace it",
    "different_config": "--out {path!r} holds a run with a different configuration ({detail}); "
                        "choose another --out or pass --overwrite",
    "not_replaceable": "--overwrite refuses to replace {path!r}: {detail}",
    "locked": "--out {path!r} is in use by another tfp-nice process ({detail}); wait for it or "
              "choose another --out",
    "corrupt": "{path} is unreadable: {detail}; fix or delete it, or start the run afresh with "
               "--overwrite",
    "no_checkpoint": "no usable checkpoint in {path} ({detail}); delete that directory to "
                     "start from scratch, or pass --overwrite",
    "trained_out": "--out {path!r} already trained for {detail} epochs; pass a larger "
                   "--epochs to train further",
    "no_model": "No model at {path!r}: pass a finished run directory or a .keras file",
    "bad_model": "{path!r} {detail}",
}


def _describe(e: BaseException) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for the errors users cause; ``None`` for bugs."""
    from tfp_nice.training.run_dir import RunError, TrainingDiverged

    if isinstance(e, TrainingDiverged):
        return 3, str(e)
    if isinstance(e, RunError):
        detail = f" ({e.detail})" if e.reason == "foreign" and e.detail else e.detail
        return 2, _RUN_MESSAGES[e.reason].format(path=e.path, detail=detail)
    if isinstance(e, OSError):
        return 2, _os_error(e)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(e, tf.errors.OpError):
        if "No space left" in str(e) or isinstance(e, tf.errors.ResourceExhaustedError):
            return 2, _os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(e)))
        return 2, _first_line(e.message if hasattr(e, "message") else e)
    if isinstance(e, (ValueError, TypeError)):
        return 2, _first_line(e)
    return None


def _os_error(e: OSError) -> str:
    where = f" while writing {e.filename}" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return (f"no space left on device{where}; free some space and run the same command "
                "again to resume")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where.replace('writing', 'accessing')} ({e.strerror})"
    return _first_line(e)


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tfp-nice`` console script; returns the exit code."""
    global _DEBUG
    args = _parser().parse_args(argv)
    _DEBUG = args.debug
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.debug:
        warnings.filterwarnings("ignore")
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("tfp-nice: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - turned into one line below, or re-raised
        described = None if args.debug else _describe(e)
        if described is None:
            _replay_native_log()
            raise
        code, message = described
        print(f"tfp-nice: error: {message}", file=sys.stderr)
        return code


def _replay_native_log() -> None:
    """On an unexpected error, show what TensorFlow wrote to stderr (it may explain it)."""
    for sink in _NATIVE_LOG:
        sink.seek(0)
        sys.stderr.write(sink.read().decode("utf-8", "replace"))


if __name__ == "__main__":
    sys.exit(main())
