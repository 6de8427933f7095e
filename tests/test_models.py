"""Presets NICE and RealNVP: architecture, preprocessing log-dets, bits/dim, saving."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import reload

import tfp_nice as tn
from tfp_nice import preprocessing, testing

tfb = tfp.bijectors


def test_nice_with_784_dims_is_the_papers_mnist_model():
    model = tn.NICE([784])
    couplings = [s for s in model.steps if isinstance(s, tn.AdditiveCoupling)]
    assert len(couplings) == 4
    assert all(c.conditioner.hidden_units == (1000,) * 5 for c in couplings)
    assert all(c.conditioner.activation == "relu" for c in couplings)
    masks = [c.mask.pattern for c in couplings]
    np.testing.assert_array_equal(masks[0], np.arange(784) % 2 == 0)  # odd/even partition
    np.testing.assert_array_equal(masks[1], ~masks[0])  # the halves swap
    assert isinstance(model.steps[-1], tn.DiagonalScale)
    assert "Logistic" in type(model.base_distribution.distribution).__name__
    per_coupling = 392 * 1000 + 4 * 1000 * 1000 + 1000 * 392 + 5 * 1000 + 392
    assert model.count_params() == 4 * per_coupling + 784


@pytest.mark.parametrize("cls, kwargs", [
    (tn.NICE, dict(hidden_units=(16,), data_scale=17.0)),
    (tn.RealNVP, dict(hidden_units=(16,), data_scale=17.0, logit_alpha=0.05, scale="soft_clamp")),
    (tn.RealNVP, dict(num_couplings=3, hidden_units=(8, 8), mask="even_odd", prior="logistic")),
])
def test_preset_keras_round_trip_gives_identical_log_prob_and_samples(tmp_path, cls, kwargs):
    shape = [4, 4, 1] if "data_scale" in kwargs else [6]
    model = cls(shape, **kwargs)
    x = np.random.default_rng(0).uniform(0, 16.9, [32, *shape]).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=16, epochs=2, verbose=0)
    loaded = reload(model, tmp_path, "preset.keras")
    assert type(loaded) is cls and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.log_prob(x), model.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(4, seed=(3, 4)), model.sample(4, seed=(3, 4)))


def test_preprocessing_log_dets_are_part_of_the_likelihood():
    """log p(x) = log p_u(x / L) - D log L for the rescale step, computed by hand."""
    model = tn.NICE([4, 4, 1], hidden_units=(8,), data_scale=17.0)
    x = np.random.default_rng(1).uniform(0, 17, [5, 4, 4, 1]).astype("float32")
    inner = tfp.distributions.TransformedDistribution(model.base_distribution,
                                                      tfb.Chain(model.steps[1:]))
    want = inner.log_prob(x / 17.0) - 16 * math.log(17.0)
    np.testing.assert_allclose(model.log_prob(x), want, rtol=1e-5)


def test_logit_steps_match_realnvp_formula_and_log_det():
    chain = tfb.Chain(preprocessing.logit(0.05, dtype=tf.float64))
    x = tf.constant([[0.0, 0.3, 0.999]], tf.float64)
    want = np.log((0.05 + 0.9 * x) / (1 - 0.05 - 0.9 * x))
    np.testing.assert_allclose(chain.inverse(x), want, rtol=1e-6)
    testing.assert_log_det_matches_autodiff(chain, x, event_ndims=1, atol=1e-5, rtol=1e-5)


def test_bits_per_dim_matches_the_documented_formula():
    d, nll_unit = 64, 100.0  # NLL of data rescaled to [0, 1)
    nll_raw = nll_unit + d * math.log(256)  # the rescale log-det adds D ln 256
    np.testing.assert_allclose(preprocessing.bits_per_dim(nll_raw, d),
                               (nll_unit + d * math.log(256)) / (d * math.log(2)))
    assert preprocessing.bits_per_dim(d * math.log(256), d) == pytest.approx(8.0)


def test_temperature_shrinks_samples_towards_the_mode():
    model = tn.RealNVP([3], num_couplings=2, hidden_units=(8,))
    hot = model.sample(4000, seed=(1, 1)).numpy()
    cold = model.sample(4000, seed=(1, 1), temperature=0.5).numpy()
    np.testing.assert_allclose(cold, 0.5 * hot, rtol=1e-5, atol=1e-6)  # identity flow at init
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0.0)


def test_preset_arguments_are_checked():
    with pytest.raises(ValueError, match=r"`num_couplings` must be a positive int.*0"):
        tn.NICE([4], num_couplings=0)
    with pytest.raises(ValueError, match=r"`mask` must be 'even_odd' or 'half'.*'diagonal'"):
        tn.RealNVP([4], mask="diagonal")
    with pytest.raises(ValueError, match=r"`logit_alpha` needs `data_scale`"):
        tn.RealNVP([4], logit_alpha=0.05)
    with pytest.raises(ValueError, match=r"at least 2 dimensions"):
        tn.NICE([1])


def test_nice_data_dependent_scale_init_matches_the_prior_spread():
    rng = np.random.default_rng(2)
    x = (rng.uniform(0, 1, [512, 6]) * [1, 2, 4, 0.1, 1e-5, 3]).astype("float32")
    model = tn.NICE([6], hidden_units=(8,))
    before = float(tf.reduce_mean(model(x)))
    model.initialize_scale(x)
    z = model.encode(x).numpy()
    logistic_std = math.pi / math.sqrt(3)
    np.testing.assert_allclose(z[:, [0, 1, 2, 3, 5]].std(0), logistic_std, rtol=1e-3)
    assert 0 < z[:, 4].std() < logistic_std  # the 1e-3 floor: no huge scale for constant dims
    assert float(tf.reduce_mean(model(x))) < before - 5
