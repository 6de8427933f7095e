"""The ``tfp-nice`` argument parser: commands, flags, their types and bounds (no TensorFlow)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser"]

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
    """``train``'s flags for the model, the data and the optimisation."""
    from tfp_nice.training.config import (
        CONDITIONINGS,
        IMAGE_CONDITIONERS,
        LR_DECAYS,
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
    t.add_argument("--lr-decay", default=None, choices=list(LR_DECAYS),
                   help="how the learning rate falls to 0 over the run, to the end of "
                        "--time-limit (or of --epochs without one): cooldown (constant, then "
                        "linear over the last 20%%), linear, cosine, or none: constant "
                        "(default: cooldown with --time-limit, else none)")
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
    t.add_argument("--conditioner", default=None, choices=list(IMAGE_CONDITIONERS),
                   help="realnvp-image: the coupling networks: resnet (RealNVP's residual net, "
                        "weight-normalised; default up to 16x16 pixels) or conv (Glow's plain "
                        "3x3-1x1-3x3 net; default on larger images, where on CPU it learns "
                        "faster per minute)")
    t.add_argument("--patience", type=_int_in(1, 10**6), default=None,
                   help="early-stopping patience in epochs (default: epochs/4)")
    t.add_argument("--value-range", type=_range, default=None,
                   help="LOW,HIGH of your data's values (default: detected)")
    t.add_argument("--num-levels", type=_int_in(2, 2**24), default=None,
                   help="number of integer levels of your data (default: 256 for uint8)")
    _train_run_args(t, STRATEGIES, CONDITIONINGS, MIXED_PRECISIONS)


def _train_run_args(t, strategies, conditionings, mixed_precisions) -> None:
    """``train``'s flags for the run itself: seed, devices, precision, output, labels."""
    t.add_argument("--seed", type=_int_in(0, _MAX_SEED), default=0)
    t.add_argument("--strategy", default="none", choices=list(strategies),
                   help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or logical "
                        "CPUs); multiworker: MultiWorkerMirroredStrategy over the machines of "
                        "TF_CONFIG or a Slurm allocation (run the same command on each; the "
                        "chief writes --out)")
    t.add_argument("--logical-cpus", type=_int_in(1, 64), default=None,
                   help="split the CPU into N logical devices (to run --strategy mirrored "
                        "without GPUs)")
    t.add_argument("--mixed-precision", default=None, choices=list(mixed_precisions),
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
    t.add_argument("--conditioning", default=None, choices=list(conditionings),
                   help="with --conditional: where the label acts: couplings (every coupling "
                        "network sees it), prior (a per-class latent mean and scale; default "
                        "of nice, realnvp, nsf) or both (default of realnvp-image, glow)")
    t.add_argument("--class-mean-stddev", type=float, default=None, metavar="S",
                   help="with --conditional and a conditioned prior: the spread of the random "
                        "initial class means (FlowGMM; default: 1.5 for data of 64 values or "
                        "more, else 0; 0 starts every class at the same latent mean)")
    t.add_argument("--no-export", action="store_true",
                   help="skip writing the TF Serving SavedModel RUN_DIR/saved_model/1/")


def build_parser() -> argparse.ArgumentParser:
    """The ``tfp-nice`` parser: usage errors exit 2 with one line and the usage."""
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
