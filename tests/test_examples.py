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
