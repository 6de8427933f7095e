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

import errno
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence

__all__ = ["main"]

from tfp_nice._cli_parser import build_parser


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
        learning_rate=args.learning_rate, lr_decay=args.lr_decay, num_couplings=args.num_couplings,
        hidden_units=args.hidden_units, seed=args.seed, strategy=args.strategy,
        patience=args.patience, value_range=args.value_range, num_levels=args.num_levels,
        num_scales=args.num_scales, num_blocks=args.num_blocks, filters=args.filters,
        conditioner=args.conditioner,
        time_limit=args.time_limit, memory_saving=args.memory_saving,
        conditional=args.conditional, conditioning=args.conditioning,
        class_mean_stddev=args.class_mean_stddev,
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
    elif splits.labels_dropped:
        _warning(f"{splits.labels_dropped} Training without them (an unconditional model).")
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
        return 2, _op_error_line(e.message if hasattr(e, "message") else str(e))
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


def _op_error_line(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong: a function's error starts
    with ``Graph execution error:`` and the op's traceback, and ends with the node's name."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    said = [ln for ln in message.splitlines() if ln.strip() and not ln[0].isspace()
            and not ln.startswith(("Graph execution error", "Detected at node", "[["))]
    return said[0] if said else (lines[0] if lines else "TensorFlow error")


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tfp-nice`` console script; returns the exit code."""
    global _DEBUG
    args = build_parser().parse_args(argv)
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
