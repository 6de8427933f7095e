"""The README's Python examples run as written."""

from __future__ import annotations

import pathlib
import re

import keras
import numpy as np

import tfp_nice as tn

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs_and_round_trips(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    usage = next(b for b in blocks if "FlowModel(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(usage, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model, x = namespace["model"], namespace["x"]
    loaded = keras.models.load_model(tmp_path / "flow.keras")
    np.testing.assert_array_equal(loaded.log_prob(x[:16]), model.log_prob(x[:16]))


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def test_readme_image_example_trains_samples_and_redraws_one_scale():
    namespace: dict = {}
    exec(compile(_block("RealNVPImage("), "README.md", "exec"), namespace)  # noqa: S102
    model, x = namespace["image_model"], namespace["x"]
    assert model.sample(2, seed=(1, 2), temperature=0.7).shape == (2, 8, 8, 1)
    z = model.encode(x[:4])
    fine = model.latent_scales() == 0
    again = model.encode(model.resample_scale(z, scale=0, seed=(3, 4)))
    np.testing.assert_allclose(np.asarray(again)[:, ~fine], np.asarray(z)[:, ~fine], atol=1e-3)
    assert np.abs(np.asarray(again)[:, fine] - np.asarray(z)[:, fine]).max() > 0.1


def test_readme_reversible_example_trains_with_memory_saving_on():
    namespace: dict = {}
    exec(compile(_block("ReversibleSequential("), "README.md", "exec"), namespace)  # noqa: S102
    classifier, flow = namespace["classifier"], namespace["flow"]
    assert classifier.layers[0].memory_saving and flow.memory_saving
    assert len(classifier.trainable_variables) == 16 * 4 + 2


def test_readme_glow_example_trains_and_samples_at_temperature():
    namespace: dict = {}
    exec(compile(_block("tn.Glow("), "README.md", "exec"), namespace)  # noqa: S102
    glow = namespace["glow"]
    assert all(a.layer.is_initialized for a in glow.steps if isinstance(a, tn.ActNorm))
    assert glow.sample(2, seed=(1, 2), temperature=0.7).shape == (2, 8, 8, 1)
    assert np.isfinite(glow.log_prob(namespace["x"][:8]).numpy()).all()


def test_readme_conditional_example_trains_classifies_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_block("num_classes=10"), "README.md", "exec"), namespace)  # noqa: S102
    model, x, y = namespace["cond_model"], namespace["x"], namespace["y"]
    assert model.num_classes == 10
    assert np.mean(model.classify(x[1500:]).numpy() == y[1500:]) > 0.5  # 10 classes: chance 0.1
    loaded = keras.models.load_model(tmp_path / "conditional.keras")
    np.testing.assert_array_equal(loaded.log_prob(x[:8], y[:8]), model.log_prob(x[:8], y[:8]))
    np.testing.assert_array_equal(loaded.class_log_prior, model.class_log_prior)
