"""The examples run (with tiny settings) and do what they say."""

from __future__ import annotations

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_2d_flow_example_improves_log_likelihood(capsys):
    ll = _load("fit_2d_flow").main(["--epochs", "20", "--num-couplings", "2", "--hidden", "32",
                                    "--samples", "2048"])
    out = capsys.readouterr().out
    before = float(out.split("held-out log-likelihood: ")[1].split(" ->")[0])
    assert ll > before + 0.3, out


def test_train_nice_digits_example_beats_the_uniform_baseline(capsys):
    bpd = _load("train_nice_digits").main(["--epochs", "8", "--hidden", "32", "--layers", "2"])
    assert 0 < bpd < 4.09, capsys.readouterr().out  # log2(17) = 4.09: uniform over the levels


def test_train_realnvp_2d_example_learns_and_writes_a_plot(tmp_path, capsys):
    out = tmp_path / "plot.png"
    after = _load("train_realnvp_2d").main(["--epochs", "3", "--num-samples", "4000",
                                            "--out", str(out)])
    text = capsys.readouterr().out
    before = float(text.split("held-out NLL ")[1].split(" ->")[0])
    assert after < before - 0.3, text
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_conditional_digits_example_classifies_far_above_chance_and_samples_each_class(
        tmp_path, capsys):
    out = tmp_path / "by_class.png"
    result = _load("conditional_digits").main(["--epochs", "4", "--hidden", "64", "--couplings",
                                               "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert result["accuracy"] > 0.4, text  # chance: 0.1 (0.58 measured at 4 epochs)
    assert 0 < result["bits_per_dim"] < 4.09, text  # log2(17): uniform over the levels
    assert out.read_bytes()[:4] == b"\x89PNG"
