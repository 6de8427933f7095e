"""Budgeted runs: the learning rate's decay over a run (``--lr-decay``), to 0 at the end of the
time budget (or of the epochs), continued across resumptions; no epoch bound but the budget."""

from __future__ import annotations

import csv
import json
import math

import keras
import numpy as np
import pytest
from _cli import TINY, exit_code

from tfp_nice.training import TrainConfig, default_hparams
from tfp_nice.training.callbacks import Guard, LearningRateDecay, decay_factor


@pytest.mark.parametrize("shape, progress, expected", [
    ("none", 0.7, 1.0), ("linear", 0.0, 1.0), ("linear", 0.25, 0.75), ("linear", 1.0, 0.0),
    ("linear", 3.0, 0.0), ("linear", -1.0, 1.0), ("cosine", 0.5, 0.5), ("cosine", 1.0, 0.0),
    ("cooldown", 0.0, 1.0), ("cooldown", 0.8, 1.0), ("cooldown", 0.9, 0.5), ("cooldown", 1.0, 0.0),
    ("cosine", 0.25, 0.5 * (1 + math.cos(math.pi / 4))),
])
def test_decay_factor(shape, progress, expected):
    assert decay_factor(shape, progress) == pytest.approx(expected, abs=1e-12)


def _fit_with(decay: LearningRateDecay, epochs: int, steps: int) -> list[float]:
    """Fits a one-weight model; returns the learning rate set before each batch."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    seen = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: seen.append(
        float(model.optimizer.learning_rate.numpy())))
    x = np.zeros([4 * steps, 1], "float32")
    model.fit(x, x, batch_size=4, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[decay.guard, decay, probe])
    return seen


def test_without_a_budget_the_rate_falls_over_the_epochs_batch_by_batch():
    seen = _fit_with(LearningRateDecay(0.1, "linear", Guard()), epochs=2, steps=5)
    assert seen == pytest.approx([0.1 * (1 - i / 10) for i in range(10)], rel=1e-6)


def test_with_a_budget_the_rate_follows_the_training_seconds_of_every_session():
    """A run resumed with half its budget spent starts at half the rate (a 100-minute budget:
    the model's build and trace before the first step move the rate by under 1 %)."""
    guard = Guard(elapsed_before=3000.0, time_limit=6000.0)
    seen = _fit_with(LearningRateDecay(0.1, "linear", guard), epochs=1, steps=3)
    assert all(0.049 < lr <= 0.05 for lr in seen) and seen == sorted(seen, reverse=True)
    spent = Guard(elapsed_before=61.0, time_limit=60.0)
    assert _fit_with(LearningRateDecay(0.1, "cosine", spent), epochs=1, steps=1) == [0.0]


def test_the_rate_in_use_ends_each_epochs_logs():
    decay = LearningRateDecay(0.1, "linear", Guard())
    logged = []
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    x = np.zeros([8, 1], "float32")
    model.fit(x, x, batch_size=4, epochs=2, verbose=0, callbacks=[decay, keras.callbacks.
              LambdaCallback(on_epoch_end=lambda e, logs: logged.append(logs["learning_rate"]))])
    assert logged == pytest.approx([0.1 * 3 / 4, 0.1 * 1 / 4], rel=1e-6)


@pytest.mark.parametrize("time_limit, given, expected", [
    (None, None, "none"), (15.0, None, "cooldown"), (15.0, "none", "none"),
    (None, "cosine", "cosine"),
])
def test_default_is_a_cooldown_on_a_time_budget_only(time_limit, given, expected):
    cfg = TrainConfig(model="realnvp", data="moons", time_limit=time_limit, lr_decay=given)

    class Spec:
        num_dims, event_shape = 2, [2]
    assert default_hparams(cfg, Spec)["lr_decay"] == expected
    assert ("lr_decay" in cfg.to_dict()) == (given is not None)  # run.json of older runs matches


def test_a_time_limit_without_epochs_is_bounded_by_the_budget_only():
    from tfp_nice.training.config import UNBOUNDED_EPOCHS

    class Spec:
        num_dims, event_shape = 2, [2]
    hp = default_hparams(TrainConfig(model="realnvp", data="moons", time_limit=15.0), Spec)
    assert hp["epochs"] == hp["patience"] == UNBOUNDED_EPOCHS  # no early stop before the cooldown
    hp = default_hparams(TrainConfig(model="realnvp", data="moons", time_limit=15.0, patience=3),
                         Spec)
    assert hp["patience"] == 3
    hp = default_hparams(TrainConfig(model="realnvp", data="moons", time_limit=15.0, epochs=8),
                         Spec)
    assert hp["epochs"] == 8 and hp["patience"] == 10


def test_bad_lr_decay_is_refused_naming_the_value():
    with pytest.raises(ValueError, match="lr_decay.*'step'"):
        TrainConfig(lr_decay="step")
    with pytest.raises(ValueError, match="workers of a multi-worker run.*lr_decay='cooldown'"):
        TrainConfig(lr_decay="cooldown", strategy="multiworker")

    class Spec:
        num_dims, event_shape = 2, [2]
    cfg = TrainConfig(model="realnvp", data="moons", strategy="multiworker", time_limit=5.0)
    assert default_hparams(cfg, Spec)["lr_decay"] == "none"


def test_a_budgeted_cli_run_decays_to_its_budget_and_records_it(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "realnvp", "--data", "moons", "--out", out, "--epochs", "1000",
            *TINY[2:], "--batch-size", "2048", "--learning-rate", "0.01", "--time-limit", "0.2",
            "--no-export"]  # ten steps an epoch: several epochs fit the budget on a loaded machine
    assert exit_code(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hparams"]["lr_decay"] == "cooldown" and metrics["time_limit_reached"]
    with open(out / "history.csv") as f:
        rates = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    assert len(rates) >= 3 and rates == sorted(rates, reverse=True)
    assert rates[0] == pytest.approx(0.01) and 0.0 <= rates[-1] < 0.01 * 0.2


def test_lr_decay_none_keeps_the_rate_constant(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "realnvp", "--data", "moons", "--out", out, *TINY,
            "--time-limit", "5", "--lr-decay", "none", "--no-export"]
    assert exit_code(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hparams"]["lr_decay"] == "none"
    assert metrics["config"]["lr_decay"] == "none"
    with open(out / "history.csv") as f:
        assert "learning_rate" not in next(csv.reader(f))


def test_a_budget_bounded_run_says_how_much_of_the_budget_each_epoch_starts_at(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "realnvp", "--data", "moons", "--out", out, *TINY[2:],
            "--batch-size", "2048", "--time-limit", "0.2", "--no-export"]  # short epochs, and a
    # budget that holds a second one even with the tests running in two processes
    assert exit_code(args) == 0
    printed = capsys.readouterr().out
    assert "Epoch 1 (0.0 of 0.2 minutes used)" in printed, printed[-2000:]
    assert "/1000000" not in printed and "until the 0.2-minute time limit" in printed
    assert "Epoch 2 (" in printed  # one line per epoch, with the time used so far


def test_an_epoch_bounded_run_keeps_keras_epoch_lines(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "realnvp", "--data", "moons", "--out", out, "--epochs", "2",
            *TINY[2:], "--time-limit", "5", "--no-export"]
    assert exit_code(args) == 0
    printed = capsys.readouterr().out
    assert "Epoch 1/2" in printed and "Epoch 2/2" in printed and "minutes used" not in printed
