"""`tfp-nice train | evaluate | sample`: the main job, its files, resumption and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from _cli import ENV, TINY, digest, error_line, exit_code, run_cli

import tfp_nice as tn
from tfp_nice import cli


def _cli(*args, cwd=None, timeout=900):
    """Runs the installed console script in a fresh process (as a user would)."""
    return run_cli(*args, cwd=cwd, timeout=timeout)


def _digest(directory):
    return digest(directory, skip=())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "moons"
    code = cli.main(["train", "--model", "realnvp", "--data", "moons", "--out", str(out), *TINY])
    assert code == 0
    return out


def test_train_writes_every_file_and_metrics(finished_run, capsys):
    for name in ("model.keras", "metrics.json", "samples.png", "history.csv", "run.json"):
        assert (finished_run / name).is_file(), name
    assert any((finished_run / "logs").rglob("*tfevents*"))
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for key in ("test_nll_nats", "test_bits_per_dim", "epochs", "train_seconds", "num_params",
                "data", "model", "config"):
        assert key in metrics, key
    assert metrics["epochs"] == 2 and metrics["num_params"] > 0
    np.testing.assert_allclose(metrics["test_bits_per_dim"],
                               metrics["test_nll_nats"] / (2 * np.log(2)), rtol=1e-6)
    with open(finished_run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and "val_loss" in rows[0]
    assert not (finished_run / "backup").exists()


def test_evaluate_prints_and_writes_the_same_held_out_nll(finished_run, capsys):
    assert cli.main(["evaluate", str(finished_run)]) == 0
    out = capsys.readouterr().out
    result = json.loads((finished_run / "evaluation.json").read_text())
    metrics = json.loads((finished_run / "metrics.json").read_text())
    np.testing.assert_allclose(result["test_nll_nats"], metrics["test_nll_nats"], rtol=1e-5)
    assert f"{result['test_bits_per_dim']:.4f} bits/dim" in out


def test_sample_writes_npy_and_png(finished_run, tmp_path):
    npy = tmp_path / "s.npy"
    assert cli.main(["sample", str(finished_run), "-n", "7", "--temperature", "0.7",
                     "--seed", "3", "--out", str(npy)]) == 0
    x = np.load(npy)
    assert x.shape == (7, 2) and np.isfinite(x).all()
    assert cli.main(["sample", str(finished_run), "-n", "7", "--temperature", "0.7",
                     "--seed", "3", "--out", str(tmp_path / "again.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), x)
    assert cli.main(["sample", str(finished_run), "-n", "16", "--out",
                     str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_finished_run_is_refused_and_left_untouched(finished_run, capsys):
    before = _digest(finished_run)
    code = cli.main(["train", "--model", "realnvp", "--data", "moons", "--out",
                     str(finished_run), *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "already holds a finished run" in err and "--resume" in err
    assert err.count("\n") == 1
    assert _digest(finished_run) == before


def test_resume_trains_a_finished_run_further(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "nice", "--data", "moons", "--out", str(out)]
    assert cli.main([*args, *TINY]) == 0
    more = ["--epochs", "3", *TINY[2:]]
    assert cli.main([*args, *more, "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    with open(out / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_overwrite_replaces_a_finished_run(tmp_path):
    out = tmp_path / "run"
    base = ["train", "--model", "nice", "--data", "moons", "--out", str(out), *TINY]
    assert cli.main(base) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert cli.main([*base, "--seed", "5", "--overwrite"]) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert second["config"]["seed"] == 5 and first["config"]["seed"] == 0
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


def test_train_on_a_users_uint8_npz_of_28x28_images(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((120, 28, 28, 1)) * 255).astype(np.uint8)
    np.savez(tmp_path / "mine.npz", x_train=x[:100], x_test=x[100:])
    out = tmp_path / "run"
    proc = _cli("train", "--model", "realnvp", "--data", str(tmp_path / "mine.npz"), "--out",
                str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["num_levels"] == 256
    assert metrics["data"]["event_shape"] == [28, 28, 1]
    # uniform noise over 255 of the 256 levels: no model beats log2(255) = 7.994 bits/dim on
    # held-out data, and the logit of uniform noise is near-Gaussian, so even an untrained
    # RealNVP is within 0.2 bits of it (measured 8.08; a wrong log-det or scale term is far off)
    assert 7.98 < metrics["test_bits_per_dim"] < 8.2
    assert "held-out NLL" in proc.stdout and str(out / "samples.png") in proc.stdout


def test_killed_run_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tfp_nice.cli", "train", "--model", "nice", "--data", "digits",
           "--hidden-units", "32", "--num-couplings", "2", "--epochs", "40", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    history = out / "history.csv"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if history.exists() and len(history.read_text().strip().splitlines()) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "metrics.json").exists()
    killed_at = len(history.read_text().strip().splitlines()) - 1  # epochs logged before kill
    assert 2 <= killed_at < 40
    second = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Resuming the unfinished run" in second.stdout
    with open(history) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    # Resumed, not restarted: epoch 0 appears once; at most the epoch in progress is redone.
    assert epochs.count(0) == 1
    assert len(epochs) - len(set(epochs)) <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == max(epochs) + 1 <= 40


def test_mirrored_strategy_on_two_logical_cpus_matches_single_device(tmp_path):
    results = []
    for extra in ([], ["--strategy", "mirrored", "--logical-cpus", "2"]):
        out = tmp_path / ("mirrored" if extra else "single")
        proc = _cli("train", "--model", "realnvp", "--data", "moons", "--out", str(out),
                    *TINY, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(json.loads((out / "metrics.json").read_text()))
    np.testing.assert_allclose(results[1]["test_nll_nats"], results[0]["test_nll_nats"],
                               rtol=1e-3)
    with open(tmp_path / "single" / "history.csv") as a, \
            open(tmp_path / "mirrored" / "history.csv") as b:
        la = [float(r["loss"]) for r in csv.DictReader(a)]
        lb = [float(r["loss"]) for r in csv.DictReader(b)]
    np.testing.assert_allclose(lb, la, rtol=1e-3)


def test_memory_saving_trains_the_same_model_and_is_recorded(tmp_path):
    """--memory-saving recomputes activations (XLA on, single device): same losses, and the run
    records it (run.json, metrics.json) while plain runs keep their old run.json."""
    losses = {}
    for name, extra in (("plain", []), ("saving", ["--memory-saving"])):
        out = tmp_path / name
        assert cli.main(["train", "--model", "realnvp", "--data", "moons", "--out", str(out),
                         *TINY, *extra]) == 0
        with open(out / "history.csv") as f:
            losses[name] = [float(r["loss"]) for r in csv.DictReader(f)]
        config = json.loads((out / "run.json").read_text())["config"]
        assert config.get("memory_saving") is (True if extra else None)
        assert keras.models.load_model(out / "model.keras").memory_saving is bool(extra)
    np.testing.assert_allclose(losses["saving"], losses["plain"], rtol=1e-4)
    assert cli.main(["train", "--model", "realnvp", "--data", "moons", "--out",
                     str(tmp_path / "saving"), *TINY]) == 2  # a different configuration


def test_glow_trains_samples_exports_and_loads_in_the_tf1_session_loader(tmp_path, capsys):
    """`--model glow` end to end on the digits: two levels (a split with its learned prior),
    the run's files, `tfp-nice export`, and the TF1 loader (TF Serving's) serving its NLL."""
    import tensorflow as tf

    from tfp_nice import data as data_lib

    run = tmp_path / "glow"
    assert cli.main(["train", "--model", "glow", "--data", "digits", "--num-scales", "2",
                     "--num-blocks", "1", "--filters", "4", "--epochs", "1",
                     "--batch-size", "419", "--out", str(run), "--no-export"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"]["num_levels"] == 2 and metrics["model"]["num_steps"] == 1
    assert metrics["model"]["filters"] == 4 and metrics["model"]["scale"] == "tanh"
    assert metrics["model"]["logit_alpha"] == 0.05 and metrics["hparams"]["learning_rate"] == 2e-3
    assert 0 < metrics["test_bits_per_dim"] < 8
    for name in ("samples.png", "samples_per_scale.png", "model.keras"):
        assert (run / name).read_bytes()[:4] in (b"\x89PNG", b"PK\x03\x04"), name
    out = tmp_path / "saved_models" / "glow"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert f"--model_base_path={out}" in capsys.readouterr().out
    test = data_lib.load("digits").test
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(out / "1"))
        sig = meta.signature_def["log_prob"]
        bpd = sess.run(sig.outputs["bits_per_dim"].name, {sig.inputs["x"].name: test})
    np.testing.assert_allclose(bpd.mean(), metrics["test_bits_per_dim"], rtol=1e-3)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.npz").write_bytes(os.urandom(300))
    np.savez(d / "names.npz", images=np.zeros((50, 4), np.float32))
    x = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    x[3, 1] = np.nan
    np.save(d / "nan.npy", x)
    np.save(d / "range.npy", np.full((50, 4), 300.0, np.float32))
    np.save(d / "dims.npy", np.zeros((50, 2, 2, 2, 2), np.float32))
    return d


@pytest.mark.parametrize("args, message", [
    (["--data", "{d}/missing.npz"], "missing.npz"),
    (["--data", "{d}/corrupt.npz"], "corrupt.npz"),
    (["--data", "{d}/names.npz"], "images"),
    (["--data", "{d}/nan.npy"], "NaN"),
    (["--data", "{d}/range.npy", "--value-range", "0,255"], "300"),
    (["--data", "{d}/dims.npy"], "ndim 5"),
    (["--data", "mnist-offline-typo"], "mnist-offline-typo"),
    (["--model", "flowpp"], "flowpp"),
    (["--epochs", "0"], "epochs"),
    (["--epochs", "-3"], "epochs"),
    (["--batch-size", "abc"], "batch-size"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad_files, tmp_path, capsys, args,
                                                         message):
    out = tmp_path / "out"
    args = [a.replace("{d}", str(bad_files)) for a in args]
    code = _exit_code(["train", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tfp-nice: error:") and message in last, err
    assert not (out / "metrics.json").exists() and not (out / "model.keras").exists()


def _exit_code(argv):
    """cli.main's return value, or the code of argparse's SystemExit for usage errors."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_wrong_dimensionality_for_a_trained_model_is_refused(finished_run, tmp_path, capsys):
    np.save(tmp_path / "three.npy", np.random.default_rng(0).random((60, 3)).astype(np.float32))
    code = cli.main(["evaluate", str(finished_run), "--data", str(tmp_path / "three.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "event shape [3]" in err and "[2]" in err


def test_evaluate_missing_run_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "No model at" in capsys.readouterr().err


# --- image models ------------------------------------------------------------------------------
def test_cli_trains_a_tiny_realnvp_image_on_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--model", "realnvp-image", "--data", "digits", "--epochs", "1",
                "--num-blocks", "1", "--filters", "4", "--batch-size", "419", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bits/dim" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["test_bits_per_dim"]) and metrics["epochs"] == 1
    assert metrics["model"]["num_scales"] == 2 and metrics["model"]["filters"] == 4
    for name in ("samples.png", "samples_per_scale.png", "model.keras"):
        assert (out / name).stat().st_size > 0, name
    model = keras.models.load_model(out / "model.keras")
    assert isinstance(model, tn.RealNVPImage)
    assert model.sample(3, seed=(1, 2), temperature=0.7).shape == (3, 8, 8, 1)


def test_cli_rejects_image_options_for_vector_models_and_vector_data(tmp_path):
    proc = _cli("train", "--model", "nice", "--filters", "8", "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and "`filters` does not apply to model 'nice'" in proc.stderr
    proc = _cli("train", "--model", "realnvp-image", "--num-couplings", "4",
                "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "num_scales, num_blocks and filters" in proc.stderr
    proc = _cli("train", "--model", "realnvp-image", "--data", "moons",
                "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "needs image data" in proc.stderr


# ---------------------------------------------------------------------------------------------
# --conditional: p(x | label) from the data's labels, the Bayes classifier, sample --label.
# ---------------------------------------------------------------------------------------------
def _clusters(n, rng):
    """Two labelled 2-D clusters, at (-3, -3) and (3, 3): any class-conditional flow
    separates them."""
    y = rng.integers(0, 2, n)
    x = rng.normal(0.0, 0.5, (n, 2)) + np.where(y[:, None] == 1, 3.0, -3.0)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    x, y = _clusters(3000, np.random.default_rng(0))
    np.savez(d / "clusters.npz", x=x, y=y)
    out = d / "run"
    code = cli.main(["train", "--model", "realnvp", "--conditional", "--data",
                     str(d / "clusters.npz"), "--out", str(out), "--epochs", "4",
                     "--hidden-units", "16", "--num-couplings", "2", "--batch-size", "128",
                     "--learning-rate", "0.01"])
    assert code == 0
    return out


def test_conditional_train_reports_the_bayes_classifier_and_samples_each_class(
        conditional_run, tmp_path, capsys):
    metrics = json.loads((conditional_run / "metrics.json").read_text())
    assert metrics["config"]["conditional"] is True and metrics["num_classes"] == 2
    assert metrics["model"]["num_classes"] == 2
    assert metrics["test_accuracy"] > 0.95  # the clusters are 12 standard deviations apart
    # p(x) = sum_c p(x|c) p(c) is below p(x|y) at the true label (a label is worth <= 1 bit).
    assert metrics["test_bits_per_dim"] <= metrics["test_marginal_bits_per_dim"] <= (
        metrics["test_bits_per_dim"] + 0.5 + 1e-6)
    assert (conditional_run / "samples.png").read_bytes()[:4] == b"\x89PNG"
    medians = []
    for label in (0, 1):
        out = tmp_path / f"s{label}.npy"
        assert cli.main(["sample", str(conditional_run), "-n", "400", "--label", str(label),
                         "--out", str(out)]) == 0
        medians.append(np.median(np.load(out)[:, 0]))
    assert medians[1] - medians[0] > 2.0, medians  # each label samples its own cluster
    assert "of class 1" in capsys.readouterr().out
    assert cli.main(["evaluate", str(conditional_run)]) == 0
    out = capsys.readouterr().out
    result = json.loads((conditional_run / "evaluation.json").read_text())
    np.testing.assert_allclose(result["test_accuracy"], metrics["test_accuracy"])
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in out


def test_conditional_export_takes_a_label_in_every_signature(conditional_run, tmp_path,
                                                             capsys):
    import tensorflow as tf

    assert cli.main(["export", str(conditional_run), "--out", str(tmp_path / "m")]) == 0
    assert "also takes `label` int32 [rows]" in capsys.readouterr().out
    sig = tf.saved_model.load(str(tmp_path / "m" / "1")).signatures
    x = np.float32([[-3.0, -3.0], [3.0, 3.0]])  # the two cluster centres
    lp = {c: sig["log_prob"](x=tf.constant(x), label=tf.constant([c, c]))["log_prob"].numpy()
          for c in (0, 1)}
    assert lp[0][0] > lp[1][0] and lp[1][1] > lp[0][1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`label` must hold integer"):
        sig["log_prob"](x=tf.constant(x), label=tf.constant([0, 2]))


@pytest.mark.parametrize("argv, message", [
    (["--label", "2"], "`label` must be an int in [0, 1]. Received: label=2"),
], ids=["out-of-range"])
def test_sample_label_out_of_range_is_one_line_exit_2(conditional_run, capsys, argv, message):
    assert exit_code(["sample", str(conditional_run), *argv]) == 2
    assert message in error_line(capsys.readouterr().err)


def test_sample_label_of_an_unconditional_run_is_one_line_exit_2(finished_run, capsys):
    assert exit_code(["sample", str(finished_run), "--label", "0"]) == 2
    assert "needs a class-conditional run" in error_line(capsys.readouterr().err)


def test_conditional_run_resumes_and_keeps_its_time_limit(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "nice", "--conditional", "--data", "digits", "--out", str(out),
            "--hidden-units", "16", "--num-couplings", "2", "--batch-size", "256"]
    assert cli.main([*args, "--epochs", "1"]) == 0
    assert cli.main([*args, "--epochs", "2", "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["config"]["conditional"] is True
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["num_classes"] == 10
    limited = tmp_path / "limited"
    assert cli.main([*args, "--epochs", "50", "--time-limit", "0.0001", "--out",
                     str(limited)]) == 0
    metrics = json.loads((limited / "metrics.json").read_text())
    assert metrics["time_limit_reached"] and metrics["epochs"] < 50
    assert "test_accuracy" in metrics


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    x = np.random.default_rng(0).random((60, 4)).astype(np.float32)
    y = np.arange(60) % 3
    np.savez(d / "nolabels.npz", x=x)
    np.savez(d / "float.npz", x=x, y=y + 0.5)
    np.savez(d / "negative.npz", x=x, y=y - 1)
    np.savez(d / "huge.npz", x=x, y=y * 10**6)
    np.savez(d / "short.npz", x=x, y=y[:50])
    np.savez(d / "split.npz", x=x[:50], y=y[:50], x_test=x[50:])
    return d


@pytest.mark.parametrize("data, message", [
    ("moons", "--conditional needs class labels, but 'moons' has none"),
    ("{d}/nolabels.npz", "--conditional needs class labels"),
    ("{d}/float.npz", "must be integers (class indices)"),
    ("{d}/negative.npz", "must be class indices >= 0"),
    ("{d}/huge.npz", "class indices in [0, K) with 2 <= K <= 10000"),
    ("{d}/short.npz", "50 training labels for 60 training examples"),
    ("{d}/split.npz", "labels are given for the train, validation split(s) but not for test"),
], ids=["missing", "no-y", "non-integer", "negative", "out-of-range", "mismatched", "split"])
def test_bad_labels_are_one_line_exit_2_before_training(label_files, tmp_path, capsys, data,
                                                        message):
    out = tmp_path / "out"
    code = exit_code(["train", "--conditional", "--data", data.replace("{d}", str(label_files)),
                      "--out", str(out), *TINY])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("tfp-nice: error:") and message in line, line
    assert not out.exists()


def test_labels_for_only_some_splits_do_not_stop_an_unconditional_run(label_files, tmp_path,
                                                                      capsys):
    out = tmp_path / "plain"
    assert cli.main(["train", "--data", str(label_files / "split.npz"), "--out", str(out),
                     *TINY]) == 0
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "labels are given" in ln]
    assert len(warning) == 1 and warning[0].startswith("tfp-nice: warning: "), warning
    assert "train, validation split(s) but not for test" in warning[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_bits_per_dim"]) and "num_classes" not in metrics["model"]


def test_a_conditional_error_in_a_fresh_process_is_one_line(label_files, tmp_path):
    proc = run_cli("train", "--conditional", "--data", label_files / "float.npz", "--out",
                   tmp_path / "o", *TINY)
    assert proc.returncode == 2
    assert "must be integers (class indices)" in error_line(proc.stderr)


def test_nsf_model_trains_from_the_cli(tmp_path):
    out = tmp_path / "nsf"
    assert cli.main(["train", "--model", "nsf", "--data", "digits", "--out", str(out),
                     *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["num_bins"] == 8 and metrics["model"]["logit_alpha"] == 0.05
    assert metrics["hparams"]["num_couplings"] == 2
    assert 0 < metrics["test_bits_per_dim"] < 4.09  # log2(17): uniform over the levels


def test_conditional_fields_stay_out_of_run_json_at_their_defaults(capsys):
    from tfp_nice.training import TrainConfig

    plain = TrainConfig(model="realnvp").to_dict()
    assert "conditional" not in plain and "conditioning" not in plain  # old runs still match
    cond = TrainConfig(model="nsf", conditional=True, conditioning="prior").to_dict()
    assert cond["conditional"] is True and cond["conditioning"] == "prior"
    assert TrainConfig.from_dict(cond, strict=True) == TrainConfig(**cond)
    assert exit_code(["train", "--conditioning", "prior", *TINY]) == 2
    assert "`conditioning` applies to conditional runs only" in error_line(
        capsys.readouterr().err)
    assert "class_mean_stddev" not in cond
    spread = TrainConfig(model="realnvp", conditional=True, class_mean_stddev=0.25).to_dict()
    assert spread["class_mean_stddev"] == 0.25
    assert exit_code(["train", "--class-mean-stddev", "1", *TINY]) == 2
    assert "`class_mean_stddev` applies to conditional runs only" in error_line(
        capsys.readouterr().err)
    assert exit_code(["train", "--conditional", "--class-mean-stddev", "-1", *TINY]) == 2
    assert "`class_mean_stddev` must be a float in [0, 1e6]" in error_line(
        capsys.readouterr().err)


@pytest.mark.parametrize("model, flags, conditioning, spread", [
    ("realnvp", {}, "prior", None), ("nice", {}, "prior", None), ("glow", {}, "both", None),
    ("realnvp", {"conditioning": "both", "class_mean_stddev": 0.0}, "both", 0.0)])
def test_conditional_runs_build_the_presets_prior(model, flags, conditioning, spread):
    from tfp_nice.data.spec import DataSpec
    from tfp_nice.training import TrainConfig
    from tfp_nice.training.build import build_model

    spec = DataSpec("x", (8, 8, 1), 17, 0.0, 16.0)
    built = build_model(TrainConfig(model=model, conditional=True, **flags), spec, 10)
    config = built.get_config()
    assert (config["conditioning"], config["class_mean_stddev"]) == (conditioning, spread)


def test_conditioner_option_picks_realnvp_images_coupling_networks():
    import tensorflow_probability as tfp

    from tfp_nice.data.spec import DataSpec
    from tfp_nice.training import TrainConfig, build_model

    tfb = tfp.bijectors
    spec = DataSpec("x", (8, 8, 1), 256, 0.0, 255.0)
    for name, kind in (("conv", tn.ConvConditioner), ("resnet", tn.ResNetConditioner)):
        model = build_model(TrainConfig(model="realnvp-image", conditioner=name, filters=4), spec)
        nets = {type(b.conditioner) for b in tn.graph.walk(tfb.Chain(model.steps))
                if isinstance(b, tn.AffineCoupling)}
        assert nets == {kind} and model.get_config()["conditioner"] == name
    with pytest.raises(ValueError, match="`conditioner` applies to model 'realnvp-image' only"):
        TrainConfig(model="glow", conditioner="conv")
    with pytest.raises(ValueError, match="`conditioner` must be one of.*'mlp'"):
        TrainConfig(model="realnvp-image", conditioner="mlp")
    with pytest.raises(ValueError, match="'conv' conditioner has none.*num_blocks=2"):
        TrainConfig(model="realnvp-image", conditioner="conv", num_blocks=2)
    assert "conditioner" not in TrainConfig(model="realnvp-image").to_dict()


def test_image_defaults_are_the_cpu_budget_sizes_without_xla_on_28x28():
    """28x28 / 32x32: realnvp-image 3 scales, Glow's plain conv networks of 16 base filters (32
    on colour images) at Adam 2e-3, Glow L=2 (28) or 3 (32), K=8, 32 filters, both without XLA;
    the 8x8 digits keep RealNVP's ResNet (2 blocks x 16 filters, Adam 1e-3) and XLA."""
    from tfp_nice.data.spec import DataSpec
    from tfp_nice.training.config import TrainConfig, default_hparams

    def hp(model, shape):
        spec = DataSpec("x", tuple(shape), 256, 0.0, 255.0)
        return default_hparams(TrainConfig(model=model), spec)

    mnist, cifar, digits = [28, 28, 1], [32, 32, 3], [8, 8, 1]
    keys = ("num_scales", "filters", "conditioner", "learning_rate", "jit_compile")
    got = {k: hp("realnvp-image", mnist)[k] for k in keys}
    assert got == {"num_scales": 3, "filters": 16, "conditioner": "conv", "learning_rate": 2e-3,
                   "jit_compile": False}
    assert (hp("realnvp-image", cifar)["num_scales"], hp("realnvp-image", cifar)["filters"]
            ) == (3, 32)  # colour images over 16x16: 32 base filters
    assert hp("realnvp-image", [8, 8, 3])["filters"] == 16
    small = hp("realnvp-image", digits)
    assert {k: small[k] for k in ("num_blocks", "conditioner", "learning_rate", "jit_compile")
            } == {"num_blocks": 2, "conditioner": "resnet", "learning_rate": 1e-3,
                  "jit_compile": True}
    g = hp("glow", mnist)
    assert (g["num_scales"], g["num_blocks"], g["filters"], g["learning_rate"],
            g["jit_compile"]) == (2, 8, 32, 2e-3, False)
    assert hp("glow", cifar)["num_scales"] == 3 and hp("glow", digits)["jit_compile"] is True
