"""What a run guarantees: it never destroys data, survives kills at any phase, and fails in one
line (issue #10). Each test reproduces one way a run used to lose data or get stuck."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _cli import TINY, digest, error_line, exit_code, run_cli

from tfp_nice.training import run_dir as run_dir_lib

BASE = ["--model", "realnvp", "--data", "moons", "--epochs", "3", *TINY[2:]]


def _train(out, *extra):
    return ["train", *BASE, "--out", out, *extra]


def _epochs(run) -> list[int]:
    with open(os.path.join(run, "history.csv")) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _temps(root) -> list[str]:
    return [os.path.join(r, n) for r, ds, fs in os.walk(root) for n in ds + fs
            if ".tmp-" in n or n.endswith(".overwrite")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (trained in-process once for the module)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert exit_code(_train(out, "--no-export")) == 0
    return out


# --- --overwrite replaces runs, and nothing else ------------------------------------------------
def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    work = tmp_path / "mywork"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("notes")
    (work / "sub" / "data.npy").write_bytes(b"x")
    before = digest(work)
    assert exit_code(_train(work, "--overwrite")) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("tfp-nice: error: --out") and "not a tfp_nice run directory" in line
    assert digest(work) == before


def test_overwrite_refuses_the_working_directory_and_a_folder_of_runs(
        tmp_path, monkeypatch, capsys, finished):
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs / "one")
    (tmp_path / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    for out in (".", "runs", str(tmp_path)):
        assert exit_code(_train(out, "--overwrite")) == 2
        assert "tfp-nice: error:" in error_line(capsys.readouterr().err)
    shutil.copytree(finished, tmp_path / "inner")
    monkeypatch.chdir(tmp_path / "inner")  # a run that is the working directory
    assert exit_code(_train(".", "--overwrite")) == 2
    assert "working directory" in error_line(capsys.readouterr().err)
    assert digest(tmp_path) == {**before, **{f"inner/{k}": v for k, v in
                                             digest(tmp_path / "inner").items()}}


def test_overwrite_refuses_a_symlink_and_a_run_holding_user_files(tmp_path, capsys, finished):
    target = tmp_path / "target"
    shutil.copytree(finished, target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    before = digest(target)
    assert exit_code(_train(link, "--overwrite")) == 2
    assert "symbolic link" in error_line(capsys.readouterr().err)
    (target / "my-notes.txt").write_text("mine")
    assert exit_code(_train(target, "--overwrite")) == 2
    assert "my-notes.txt" in error_line(capsys.readouterr().err)
    assert digest(target) == {**before, "my-notes.txt": digest(target)["my-notes.txt"]}


# --- kills at every phase ------------------------------------------------------------------------
@pytest.mark.parametrize("phase, retrains", [
    ("epoch_end@2", True), ("fit_done", False), ("exported", False), ("before_metrics", False),
])
def test_a_kill_at_any_phase_resumes_with_the_same_command(tmp_path, capsys, phase, retrains):
    out = tmp_path / "run"
    killed = run_cli(*_train(out), env={"TFP_NICE_FAULT": f"kill:{phase}"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    assert exit_code(_train(out)) == 0
    printed = capsys.readouterr().out
    assert ("Training realnvp" in printed) == retrains
    if phase.startswith("epoch_end"):
        assert "after epoch 2" in printed and "Epoch 3/3" in printed and "Epoch 2/3" not in printed
    assert _epochs(out) == [0, 1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["saved_model"] == "saved_model/1"
    assert sorted(os.listdir(out / "saved_model")) == ["1"]
    assert not (out / "checkpoints").exists() and not _temps(tmp_path)


@pytest.fixture(scope="module")
def killed_at_3(tmp_path_factory):
    """A run of 4 epochs killed right after its third checkpoint (epochs 2 and 3 kept)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = run_cli(*_train(out, "--epochs", "4", "--no-export"),
                   env={"TFP_NICE_FAULT": "kill:epoch_end@3"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch-000002.npz", "epoch-000003.npz"]
    return out


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(
        tmp_path, capsys, killed_at_3):
    out = tmp_path / "run"
    shutil.copytree(killed_at_3, out)
    latest = out / "checkpoints" / "epoch-000003.npz"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    assert exit_code(_train(out, "--epochs", "4", "--no-export")) == 0
    captured = capsys.readouterr()
    warning = error_line(captured.err)
    assert warning.startswith("tfp-nice: warning: checkpoint") and str(latest) in warning
    assert "after epoch 2" in captured.out
    assert _epochs(out) == [0, 1, 2, 3]


def test_a_run_resumed_after_the_defaults_changed_keeps_the_sizes_it_started_with(
        tmp_path, capsys, monkeypatch, killed_at_3):
    """A later version's defaults (here: other hidden units and learning rate) must not rebuild
    a resumed run's model in another shape: its checkpoints would no longer fit."""
    from tfp_nice.training import config

    out = tmp_path / "run"
    shutil.copytree(killed_at_3, out)
    resolved = config._vector_hparams
    monkeypatch.setattr(config, "_vector_hparams", lambda cfg, spec: {
        **resolved(cfg, spec), "hidden_units": (8, 8), "learning_rate": 0.5})
    assert exit_code(_train(out, "--epochs", "4", "--no-export")) == 0
    printed = capsys.readouterr().out
    assert "after epoch 3" in printed and (
        "Resuming with the settings the run started with: hidden_units=(16,) (the default now: "
        "(8, 8)), learning_rate=0.001 (the default now: 0.5)") in printed, printed[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hparams"]["hidden_units"] == [16] and metrics["epochs"] == 4
    assert metrics["hparams"]["learning_rate"] == 0.001
    assert _epochs(out) == [0, 1, 2, 3]


def test_no_usable_checkpoint_is_one_line_naming_the_file_and_the_way_out(
        tmp_path, capsys, killed_at_3):
    out = tmp_path / "run"
    shutil.copytree(killed_at_3, out)
    for f in (out / "checkpoints").iterdir():
        f.write_bytes(b"garbage")
    before = digest(out)
    assert exit_code(_train(out, "--epochs", "4", "--no-export")) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("tfp-nice: error: no usable checkpoint in")
    assert "epoch-000003.npz" in line and "--overwrite" in line
    assert digest(out) == before
    assert exit_code(_train(out, "--epochs", "4", "--no-export", "--overwrite")) == 0
    assert _epochs(out) == [0, 1, 2, 3]


# --- every file read is validated ------------------------------------------------------------
@pytest.mark.parametrize("content, what", [
    ("[1]", "expected a JSON object"),
    ('{"config": {"data": 5}, "data": {}, "hparams": {}}', "bad 'config'"),
    (None, "bad 'config'"),  # num_levels: Infinity
    ("\x00\x01garbage", "not valid JSON"),
])
def test_an_unreadable_run_json_is_one_line_naming_it(tmp_path, capsys, finished, content, what):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "metrics.json").unlink()  # unfinished: the run would be resumed
    if content is None:
        meta = json.loads((out / "run.json").read_text())
        meta["config"]["num_levels"] = float("inf")
        content = json.dumps(meta)
    (out / "run.json").write_text(content)
    before = digest(out)
    assert exit_code(_train(out, "--no-export")) == 2
    line = error_line(capsys.readouterr().err)
    assert str(out / "run.json") in line and what in line, line
    assert digest(out) == before


def test_unreadable_metrics_and_model_files_are_named(tmp_path, capsys, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "metrics.json").write_text('{"epochs": "three"}')
    assert exit_code(_train(out, "--epochs", "4", "--resume", "--no-export")) == 2
    assert str(out / "metrics.json") in error_line(capsys.readouterr().err)
    (out / "model.keras").write_bytes((out / "model.keras").read_bytes()[:500])
    for command in (["evaluate", out], ["sample", out, "-n", "2"], ["export", out]):
        assert exit_code(command) == 2
        line = error_line(capsys.readouterr().err)
        assert "not a valid .keras file" in line and "not found" not in line.lower(), line


# --- diverged training is a failure ------------------------------------------------------------
def test_divergence_exits_3_unfinished_and_unexported(tmp_path, capsys):
    x = (np.random.default_rng(0).standard_normal((300, 2)) * 1e37).astype(np.float32)
    np.save(tmp_path / "huge.npy", x)
    out = tmp_path / "run"
    code = exit_code(["train", "--model", "realnvp", "--data", tmp_path / "huge.npy", "--out",
                      out, *TINY])
    line = error_line(capsys.readouterr().err)
    assert code == 3
    assert line.startswith("tfp-nice: error: training diverged at epoch 1: loss ")
    assert line.endswith("no weights were kept")
    assert not any((out / n).exists() for n in ("metrics.json", "model.keras", "saved_model"))


def test_divergence_after_a_good_epoch_keeps_and_names_the_best_weights(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFP_NICE_FAULT", "nan:nan_loss@2")
    out = tmp_path / "run"
    assert exit_code(_train(out)) == 3
    line = error_line(capsys.readouterr().err)
    assert line == (f"tfp-nice: error: training diverged at epoch 2: loss nan; the best "
                    f"weights (epoch 1) are kept in {out / 'best.weights.npz'}")
    assert (out / "best.weights.npz").exists() and not (out / "metrics.json").exists()
    assert _epochs(out) == [0, 1]


# --- a full disk, no permission ------------------------------------------------------------------
@contextlib.contextmanager
def _small_disk(path):
    """A 400 KiB tmpfs at ``path`` (root only); ``None`` where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_is_one_line_leaves_no_temporary_files_and_resumes(tmp_path):
    with _small_disk(tmp_path / "disk") as mounted:
        out = tmp_path / "disk" / "run"
        env = {} if mounted else {"TFP_NICE_FAULT": "enospc:write:samples"}
        full = run_cli(*_train(out), env=env)
        assert full.returncode == 2, full.stderr[-2000:]
        line = error_line(full.stderr)
        assert line.startswith("tfp-nice: error: no space left on device while writing")
        assert "run the same command again to resume" in line
        assert not _temps(tmp_path / "disk") and not (out / "metrics.json").exists()
        if mounted:  # space returns
            subprocess.run(["mount", "-o", "remount,size=64m", str(tmp_path / "disk")],
                           check=True)
        again = run_cli(*_train(out))
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
        assert _epochs(out) == [0, 1, 2] and not _temps(tmp_path / "disk")


@pytest.mark.parametrize("fault, message", [
    ("enospc:write:saved_model", "no space left on device while writing"),
    ("eacces:write:history.csv", "permission denied while accessing"),
])
def test_write_failures_during_export_and_history_are_one_line(
        tmp_path, capsys, monkeypatch, fault, message):
    out = tmp_path / "run"
    monkeypatch.setenv("TFP_NICE_FAULT", fault)
    assert exit_code(_train(out)) == 2
    line = error_line(capsys.readouterr().err)
    assert message in line and fault.rsplit(":", 1)[1] in line, line
    assert not _temps(tmp_path) and not (out / "metrics.json").exists()
    monkeypatch.delenv("TFP_NICE_FAULT")
    assert exit_code(_train(out)) == 0
    assert sorted(os.listdir(out / "saved_model")) == ["1"]


# --- validate, then write ------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["--seed", "4294967296"],
    ["--model", "realnvp-image", "--data", "moons"],
    ["--model", "realnvp-image", "--data", "digits", "--num-scales", "5", "--epochs", "1"],
], ids=["seed", "image-model-on-vectors", "too-many-scales"])
def test_bad_arguments_write_nothing(tmp_path, capsys, args):
    out = tmp_path / "run"
    assert exit_code(["train", "--out", out, *args]) == 2
    err = capsys.readouterr().err
    if err.startswith("usage:"):  # argparse prints its usage block first
        err = err.strip().splitlines()[-1]
    assert error_line(err).startswith("tfp-nice: error:")
    assert not out.exists()


def test_resume_with_an_unloadable_model_leaves_run_json_alone(tmp_path, capsys, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "model.keras").write_bytes(b"PK\x03\x04broken")
    before = digest(out)
    assert exit_code(_train(out, "--epochs", "4", "--resume", "--no-export")) == 2
    assert "model.keras" in error_line(capsys.readouterr().err)
    assert digest(out) == before


# --- bounds, locks -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["sample", "{run}", "-n", "100001"],
    ["sample", "{run}", "--temperature", "10.5"],
    ["sample", "{run}", "--temperature", "0"],
    ["export", "{run}", "--version", "2147483648"],
    ["train", "--time-limit", "0"],
])
def test_out_of_bounds_values_are_refused(finished, capsys, argv):
    assert exit_code([a.replace("{run}", str(finished)) for a in argv]) == 2
    assert "tfp-nice: error:" in capsys.readouterr().err


def test_a_run_in_use_is_refused_and_the_default_out_skips_it(
        tmp_path, capsys, monkeypatch, finished):
    monkeypatch.chdir(tmp_path)
    busy = tmp_path / "runs" / "realnvp-moons-20000101-000000"
    shutil.copytree(finished, busy)
    (busy / "metrics.json").unlink()  # an unfinished run of the same configuration
    before = digest(busy)
    with run_dir_lib.lock(str(busy)):
        assert exit_code(_train(busy, "--no-export")) == 2
        assert "in use by another tfp-nice process" in error_line(capsys.readouterr().err)
        assert exit_code(["train", *BASE, "--no-export"]) == 0  # default --out
    assert digest(busy) == before
    others = [d for d in os.listdir(tmp_path / "runs") if d != busy.name]
    assert len(others) == 1 and (tmp_path / "runs" / others[0] / "metrics.json").exists()


# --- quiet, fast errors -----------------------------------------------------------------------
def test_a_missing_file_is_one_line_before_tensorflow_is_imported(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfp_nice.cli", "train",
                           "--data", str(tmp_path / "missing.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    imported = [ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if "|" in ln]
    assert "tfp_nice.training.config" in imported and not any(
        m.split(".")[0] in ("tensorflow", "keras", "tensorflow_probability") for m in imported)
    messages = [ln for ln in proc.stderr.splitlines() if "|" not in ln]
    assert messages == [f"tfp-nice: error: File not found: '{tmp_path / 'missing.npz'}'."]


def test_errors_after_tensorflow_started_are_one_line_without_its_chatter(tmp_path):
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    proc = run_cli("evaluate", tmp_path / "bad.keras", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert proc.returncode == 2
    assert error_line(proc.stderr) == (f"tfp-nice: error: '{tmp_path / 'bad.keras'}' is not a "
                                       "valid .keras file (not a zip archive; truncated or "
                                       "corrupt?)")


def test_a_tensorflow_op_error_is_the_line_that_says_what_went_wrong():
    """A function's error (a failed collective of a multi-worker peer, a bad index) starts with
    "Graph execution error:" and the op's Python traceback: the one line is the op's message."""
    import tensorflow as tf

    from tfp_nice import cli

    @tf.function
    def gather(x):
        return tf.gather(x, [5])

    with pytest.raises(tf.errors.OpError) as info:
        gather(tf.zeros(3))
    assert info.value.message.startswith("Graph execution error:")
    assert cli._describe(info.value) == (2, "indices[0] = 5 is not in [0, 3)")
    eager = tf.errors.InvalidArgumentError(None, None, "first line\nsecond line")
    assert cli._describe(eager) == (2, "first line")


# --- --time-limit --------------------------------------------------------------------------------
def test_time_limit_stops_cleanly_keeps_the_best_weights_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "realnvp", "--data", "moons", "--out", out, "--epochs", "1000",
            *TINY[2:], "--time-limit", "0.02", "--no-export"]
    assert exit_code(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_limit_reached"] is True and 1 <= metrics["epochs"] < 1000
    assert metrics["train_seconds"] >= 0.02 * 60
    assert metrics["best_epoch"] is not None and (out / "best.weights.npz").exists()
    assert "time limit reached" in capsys.readouterr().out


def test_time_limit_counts_the_training_time_of_earlier_sessions(tmp_path, killed_at_3):
    """After a resume the budget is what is left: a run that already used it stops at once."""
    out = tmp_path / "run"
    shutil.copytree(killed_at_3, out)
    meta = json.loads((out / "run.json").read_text())
    meta["config"]["time_limit"] = 1.0  # the run was started with a 1-minute budget ...
    (out / "run.json").write_text(json.dumps(meta))
    latest = out / "checkpoints" / "epoch-000003.npz"
    with np.load(latest) as npz:
        arrays = dict(npz)
    info = json.loads(arrays["meta"].tobytes())
    info["train_seconds"] = 61.0  # ... and had used it up when it was killed
    arrays["meta"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
    np.savez(latest, **arrays)
    args = _train(out, "--epochs", "4", "--no-export", "--time-limit", "1")
    assert exit_code(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_limit_reached"] is True and metrics["epochs"] == 4
    assert metrics["train_seconds"] >= 61.0
    with open(out / "history.csv") as f:  # the learning rate's decay ended with the budget too
        assert float(list(csv.DictReader(f))[-1]["learning_rate"]) == 0.0
