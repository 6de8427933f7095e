"""Conditional vs unconditional flows, and spline vs affine couplings, through `tfp-nice train`.

Run from the repo root (tens of minutes on 2 CPU cores):
    python bench/conditional.py                    # the full bench -> bench/conditional.{json,md}
    python bench/conditional.py --quick --out /tmp/c   # a smoke test of every part (a minute)

Every row is a `tfp_nice.training.train` run, i.e. exactly `tfp-nice train` with the flags in
its `flags` column (CLI defaults otherwise), on the held-out test split of its data:

* **conditional**: `--model realnvp` without and with `--conditional` (default conditioning:
  `prior`, a per-class latent mean and scale with the class means drawn apart at start,
  `--class-mean-stddev 1.5`) on
  - the 8x8 digits (`--data digits`: 1257 train / 270 validation / 270 test, fixed split), and
  - `--data ../shared/data/mnist-train-19690.npz` (real 28x28 MNIST digits with labels; the
    package carves 15% test and 15% validation with `--seed 0`: 13782 / 2954 / 2954).
  Columns: `bits/dim` is `-log p(x)` for an unconditional row and `-log p(x | y)` at the
  true label for a conditional one; `p(x) bits/dim` is the marginal
  `-log sum_c p(x | c) p(c)` (comparable between the two); `accuracy` is the Bayes
  classifier `argmax_c log p(x | c) + log p(c)` (`metrics.json`'s `test_accuracy`).
* **conditioning** (optional, `--conditioning-ablation`): the same conditional MNIST run with
  `--conditioning couplings`, `--conditioning both` and `--class-mean-stddev 0` (the prior's
  class means all starting at 0).
* **spline vs affine**: `--model nsf` against `--model realnvp` on the digits, unconditional,
  with the same `--time-limit` and no `--epochs` (equal wall time, the CLI's budgeted run:
  no epoch bound, the learning rate cooling down over the budget's last 20 %): bits/dim
  reached and epochs done. `--parts spline-vs-affine` runs this part alone.

Wall times are of a 2-core machine shared with other jobs: the load average is recorded per
row; compare times only between rows of similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist-train-19690.npz"


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny models, 2 epochs, digits only unless --mnist is given")
    p.add_argument("--mnist", default=None,
                   help=f"the labelled MNIST .npz (default: {MNIST} when it exists; "
                        "'none' skips it)")
    p.add_argument("--digits-epochs", type=int, default=None, help="default 60 (quick: 2)")
    p.add_argument("--mnist-epochs", type=int, default=None, help="default 10 (quick: 1)")
    p.add_argument("--minutes", type=float, default=None,
                   help="the equal time limit of spline vs affine (default 4; quick: 0.05)")
    p.add_argument("--parts", default="conditional,spline-vs-affine",
                   help="comma list of the parts to run: conditional (with the ablation when "
                        "asked), spline-vs-affine")
    p.add_argument("--conditioning-ablation", action="store_true",
                   help="also run conditional MNIST with --conditioning couplings, both and "
                        "--class-mean-stddev 0")
    p.add_argument("--out", default=str(HERE / "conditional"),
                   help="output path without suffix (writes OUT.json and OUT.md)")
    p.add_argument("--work-dir", default=None, help="where the runs go (default: a temp dir)")
    args = p.parse_args(argv)
    args.parts = args.parts.split(",")
    unknown = sorted(set(args.parts) - {"conditional", "spline-vs-affine"})
    if unknown:
        p.error(f"--parts: unknown part(s) {unknown}; choose from conditional, spline-vs-affine")
    args.digits_epochs = args.digits_epochs or (2 if args.quick else 60)
    args.mnist_epochs = args.mnist_epochs or (1 if args.quick else 10)
    args.minutes = args.minutes or (0.05 if args.quick else 4.0)
    if args.mnist is None:
        args.mnist = None if args.quick or not MNIST.exists() else str(MNIST)
    elif args.mnist == "none":
        args.mnist = None
    return args


def _tiny(quick: bool) -> dict:
    return dict(num_couplings=2, hidden_units=(16,), batch_size=256) if quick else {}


def _flags(cfg) -> str:
    """The `tfp-nice train` flags of a configuration (those not at their default)."""
    from tfp_nice.training import TrainConfig

    default, parts = TrainConfig(), []
    for key, value in cfg.to_dict().items():
        if value == default.to_dict().get(key) or key == "data":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"{flag} {text}")
    return " ".join(parts)


def run(part: str, data_name: str, splits, work: str, **config) -> dict:
    """One `tfp-nice train` run; its row of the table."""
    from tfp_nice import training

    cfg = training.TrainConfig(data=splits.spec.name, **config)
    name = (f"{part}-{data_name}-{cfg.model}-{int(cfg.conditional)}-{cfg.conditioning}-"
            f"{cfg.class_mean_stddev}")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    metrics = training.train(cfg, os.path.join(work, name), splits=splits, verbose=0,
                             serving_export=False, print_fn=lambda m: None)
    row = {
        "part": part, "data": data_name, "model": cfg.model, "flags": _flags(cfg),
        "conditional": cfg.conditional, "params": metrics["num_params"],
        "bits_per_dim": round(metrics["test_bits_per_dim"], 4),
        "marginal_bits_per_dim": round(metrics.get("test_marginal_bits_per_dim",
                                                   metrics["test_bits_per_dim"]), 4),
        "accuracy": metrics.get("test_accuracy"), "epochs": metrics["epochs"],
        "train_s": round(metrics["train_seconds"], 1),
        "wall_s": round(time.perf_counter() - start, 1), "load": round(load, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfp_nice import data

    work = args.work_dir or tempfile.mkdtemp(prefix="bench_conditional_")
    tiny = _tiny(args.quick)
    datasets = [("digits", data.load("digits"), args.digits_epochs)]
    if args.mnist:
        datasets.append(("mnist-19690", data.load(args.mnist), args.mnist_epochs))
    rows = []
    for name, splits, epochs in datasets if "conditional" in args.parts else []:
        for conditional in (False, True):
            rows.append(run("conditional", name, splits, work, model="realnvp",
                            epochs=epochs, conditional=conditional, **tiny))
        if args.conditioning_ablation and name != "digits":
            for flags in ({"conditioning": "couplings"}, {"conditioning": "both"},
                          {"class_mean_stddev": 0.0}):
                rows.append(run("conditioning", name, splits, work, model="realnvp",
                                epochs=epochs, conditional=True, **flags, **tiny))
    digits = datasets[0][1]
    for model in ("realnvp", "nsf") if "spline-vs-affine" in args.parts else ():
        # the CLI's budgeted run: no epoch or patience bound, the rate cooling down at the end
        rows.append(run("spline-vs-affine", "digits", digits, work, model=model,
                        time_limit=args.minutes, **tiny))
    _write(rows, args)
    return rows


def _write(rows: list[dict], args) -> None:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"quick": args.quick, "digits_epochs": args.digits_epochs,
           "mnist_epochs": args.mnist_epochs, "minutes": args.minutes, "cpus": os.cpu_count()}
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    head = ("| part | data | flags | params | bits/dim | p(x) bits/dim | accuracy | epochs | "
            "train s | load |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['part']} | {r['data']} | `{r['flags']}` | {r['params']:,} | "
                     f"{r['bits_per_dim']:.4f} | {r['marginal_bits_per_dim']:.4f} | {acc} | "
                     f"{r['epochs']} | {r['train_s']} | {r['load']} |")
    note = ("`bits/dim`: -log p(x | y) at the true label for conditional rows, -log p(x) "
            "otherwise; `p(x) bits/dim`: the marginal, comparable between rows; `accuracy`: "
            "the Bayes classifier on the test split. `load`: the 1-minute load average when "
            "the run started (2 cores, shared). See bench/conditional.py for the protocol.")
    out.with_suffix(".md").write_text(note + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
