"""Glow: the invertible 1x1 convolution, the Glow step and the Glow preset."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import counting, reload

import tfp_nice as tn
from tfp_nice import testing
from tfp_nice._internal import compat
from tfp_nice.layers.invertible import random_rotation_lu

tfb = tfp.bijectors
tfd = tfp.distributions
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _weight(layer) -> np.ndarray:
    """``W = P L (U + diag(sign_s exp(log_s)))`` from the layer's weights, in NumPy."""
    p, lower, upper, sign_s, log_s = (None if w is None else np.asarray(w, np.float64)
                                      for w in layer())
    c = layer.channels
    lo = np.eye(c) if lower is None else np.tril(lower, -1) + np.eye(c)
    up = np.diag(sign_s * np.exp(log_s)) + (0 if upper is None else np.triu(upper, 1))
    return p @ lo @ up


def _perturb(model, scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v.numpy() + scale * rng.standard_normal(v.shape).astype(v.dtype))


# --- Invertible1x1Conv -------------------------------------------------------------------------
def test_initial_weight_is_a_seeded_random_rotation_in_lu_form():
    for c in (1, 2, 5):
        init = random_rotation_lu(c, seed=11)
        p = init["permutation"]
        assert set(np.unique(p)) <= {0.0, 1.0} and np.all(p.sum(0) == 1) and np.all(p.sum(1) == 1)
        np.testing.assert_array_equal(np.diag(init["lower"]), np.ones(c))
        np.testing.assert_array_equal(np.triu(init["lower"], 1), 0)
        np.testing.assert_array_equal(np.tril(init["upper"]), 0)
    layer = tn.Invertible1x1ConvLayer(5, seed=11, dtype="float64")
    w = _weight(layer)
    np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-12)  # a rotation: log-det 0
    assert abs(float(np.sum(layer.log_s.numpy()))) < 1e-12
    assert np.abs(w - np.diag(np.diag(w))).max() > 0.1  # it mixes the channels
    np.testing.assert_allclose(_weight(tn.Invertible1x1ConvLayer(5, seed=11)), w, atol=1e-6)
    assert not np.allclose(_weight(tn.Invertible1x1ConvLayer(5, seed=12)), w)
    trainable = {v.name for v in layer.trainable_weights}
    assert trainable == {"lower", "upper", "log_s"}
    assert {v.name for v in layer.non_trainable_weights} == {"permutation", "sign_s"}


def test_invertible_1x1_conv_is_x_times_w_per_pixel_with_log_det_hw_sum_log_s():
    b = tn.Invertible1x1Conv(layer=tn.Invertible1x1ConvLayer(3, seed=1, dtype="float64"))
    rng = np.random.default_rng(0)
    for v in b.layer.trainable_weights:
        v.assign(v.numpy() + rng.normal(0, 0.3, v.shape))
    w = _weight(b.layer)
    x = rng.normal(size=[2, 4, 5, 3])
    np.testing.assert_allclose(b.forward(x), x @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.inverse(x), x @ np.linalg.inv(w), rtol=1e-10, atol=1e-12)
    _, logdet = np.linalg.slogdet(w)
    np.testing.assert_allclose(b.forward_log_det_jacobian(x, event_ndims=3), 4 * 5 * logdet,
                               rtol=1e-12)
    np.testing.assert_allclose(np.sum(b.layer.log_s.numpy()), logdet, rtol=1e-12)
    vector = tn.Invertible1x1Conv(layer=b.layer, event_ndims=1)
    np.testing.assert_allclose(vector.forward_log_det_jacobian(x[0, 0], event_ndims=1), logdet,
                               rtol=1e-12)


def test_inverse_uses_triangular_solves_not_a_general_matrix_inverse():
    b = tn.Invertible1x1Conv(channels=4, seed=0)
    graph = tf.function(b.inverse).get_concrete_function(
        tf.TensorSpec([None, 2, 2, 4], tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert "MatrixTriangularSolve" in ops and "MatrixInverse" not in ops


def test_invertible_1x1_conv_checks_its_arguments():
    with pytest.raises(ValueError, match="exactly one of `channels` and `layer`"):
        tn.Invertible1x1Conv()
    with pytest.raises(TypeError, match="`layer` must be a tfp_nice.layers.Invertible1x1Conv"):
        tn.Invertible1x1Conv(layer=tn.ActNormLayer(2))
    with pytest.raises(ValueError, match=r"`channels` must be a positive int. Received: "
                                         r"channels=0"):
        tn.Invertible1x1Conv(channels=0)
    with pytest.raises(ValueError, match="ending in 3 channels"):
        tn.Invertible1x1Conv(channels=3).forward(np.zeros([2, 4, 4, 2], "float32"))
    with pytest.raises(TypeError, match="must be a floating-point tensor"):
        tn.Invertible1x1Conv(channels=2).inverse(np.zeros([2, 4, 4, 2], "int32"))


def _conv_flow():
    steps = [tn.Invertible1x1Conv(channels=3, seed=0),
             tn.AffineCoupling(tn.ConvConditioner(6, filters=(8,)),
                               mask=tn.masks.channel([4, 4, 3]), conditioner_input="masked"),
             tn.Invertible1x1Conv(channels=3, seed=1)]
    return tn.FlowModel(tn.priors.standard_normal([4, 4, 3]), steps)


def test_fit_trains_every_weight_of_the_convolution_but_keeps_p_and_sign_fixed(tmp_path):
    model = _conv_flow()
    x = np.random.default_rng(0).normal(size=[64, 4, 4, 3]).astype("float32") * [2, 1, 0.5]
    testing.assert_variables_trainable(model, x[:8])
    conv = model.steps[0].layer
    before = {v.name: v.numpy().copy() for v in conv.weights}
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=16, epochs=2, verbose=0)
    after = {v.name: v.numpy() for v in conv.weights}
    for name in ("lower", "upper", "log_s"):
        assert not np.allclose(after[name], before[name]), name
    for name in ("permutation", "sign_s"):
        np.testing.assert_array_equal(after[name], before[name])
    # the .keras file restores every factor (P included), so log_prob and samples agree
    loaded = reload(model, tmp_path, "conv.keras")
    assert isinstance(loaded.steps[0], tn.Invertible1x1Conv)
    np.testing.assert_array_equal(_weight(loaded.steps[0].layer), _weight(conv))
    np.testing.assert_array_equal(loaded.log_prob(x[:8]), model.log_prob(x[:8]))
    np.testing.assert_array_equal(loaded.sample(3, seed=(1, 2)), model.sample(3, seed=(1, 2)))


# --- the Glow preset ---------------------------------------------------------------------------
def _tiny_glow(**kwargs):
    kw = dict(num_levels=2, num_steps=2, filters=8, data_scale=17.0, logit_alpha=0.05)
    kw.update(kwargs)
    return tn.Glow([8, 8, 1], **kw)


def _walk(model, cls):
    return [b for b in tn.graph.walk(tfb.Chain(model.steps)) if isinstance(b, cls)]


def _glow_couplings(model):
    """The couplings of the Glow steps (each wrapped in ``tfb.Invert``)."""
    return [b.bijector for b in tn.graph.walk(tfb.Chain(model.steps))
            if compat.is_invert(b) and isinstance(b.bijector, tn.AffineCoupling)]


def test_glow_follows_the_papers_multiscale_architecture():
    model = _tiny_glow()
    steps = model.steps
    assert [type(s).__name__.lstrip("_") for s in steps[:3]] == ["Scale", "Scale", "Shift"]
    assert isinstance(steps[4].bijector, tn.Squeeze)  # level 0: squeeze to [4, 4, 4]
    level0 = steps[5:11]
    assert [type(s).__name__.lstrip("_") for s in level0] == [
        "ActNorm", "Invertible1x1Conv", "Invert"] * 2
    couplings = _glow_couplings(model)
    assert [c.mask.event_shape for c in couplings] == [(4, 4, 4)] * 2 + [(2, 2, 8)] * 2
    assert all(c.mask.kind == "channel" and c.scale == "sigmoid" for c in couplings)
    assert all(c.conditioner.filters == (8, 8) and c.conditioner.kernel_size == 3
               for c in couplings)
    (split,) = [s for s in steps if isinstance(s, tn.FactorOut)]
    assert split.num_kept == 2 and isinstance(steps[-1], tn.Squeeze)
    prior = steps[steps.index(split) - 1]  # the learned prior of the split half (default)
    assert isinstance(prior, tn.AffineCoupling) and prior.mask.kind == "channel"
    assert prior.conditioner.filters == () and prior.scale == "tanh"
    plain = _tiny_glow(split_prior=False).steps  # [..., last coupling, split, unsqueeze]
    assert compat.is_invert(plain[-3]) and isinstance(plain[-2], tn.FactorOut)
    assert len(_walk(model, tn.ActNorm)) == len(_walk(model, tn.Invertible1x1Conv)) == 4
    scales = model.latent_scales()
    assert scales.shape == (8, 8, 1) and (scales == 0).sum() == 32 and (scales == 1).sum() == 32
    assert model.num_levels == model.num_scales == 2
    # every weight is the model's: 4 ActNorms (2), 4 convolutions (3), 4 nets (6), the prior
    # (a conv and the tanh scale: 3)
    assert len(model.trainable_variables) == 4 * (2 + 3 + 6) + 3


def test_glow_checks_its_arguments():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*num_levels = 8"):
        tn.Glow([28, 28, 1], num_levels=3)
    with pytest.raises(ValueError, match=r"must be \[height, width, channels\]"):
        tn.Glow([64])
    with pytest.raises(ValueError, match=r"`coupling` must be one of \['affine', 'additive'\]"):
        tn.Glow([4, 4, 1], num_levels=1, coupling="rational")
    with pytest.raises(ValueError, match=r"`num_steps` must be a positive int.*0"):
        tn.Glow([4, 4, 1], num_levels=1, num_steps=0)
    with pytest.raises(ValueError, match="`scale` must be one of"):
        tn.Glow([4, 4, 1], num_levels=1, scale="softplus")
    with pytest.raises(ValueError, match="`logit_alpha` needs `data_scale`"):
        tn.Glow([4, 4, 1], num_levels=1, logit_alpha=0.05)


def test_glow_log_prob_is_the_exact_change_of_variables():
    model = _tiny_glow()
    _perturb(model)
    x = tf.constant(np.random.default_rng(1).uniform(0, 16.9, [3, 8, 8, 1]), tf.float32)
    z = model.encode(x)
    np.testing.assert_allclose(model.decode(tf.identity(z)), x, rtol=1e-4, atol=1e-3)
    flat = tf.reshape(x, [3, 64])
    with tf.GradientTape() as tape:
        tape.watch(flat)
        zf = tf.reshape(model.bijector.inverse(tf.reshape(flat, [3, 8, 8, 1])), [3, 64])
    _, logdet = np.linalg.slogdet(tape.batch_jacobian(zf, flat).numpy().astype(np.float64))
    base = model.base_distribution.log_prob(z).numpy()
    np.testing.assert_allclose(model.log_prob(x), base + logdet, rtol=1e-4, atol=1e-2)


_Counting = counting(tn.ConvConditioner)


def test_one_conditioner_call_per_glow_coupling_per_log_prob(monkeypatch):
    from tfp_nice.presets import _image, glow

    monkeypatch.setattr(glow, "ConvConditioner", _Counting)
    monkeypatch.setattr(_image, "ConvConditioner", _Counting)  # the split prior's network
    model = _tiny_glow()
    x = tf.constant(np.random.default_rng(2).uniform(0, 16.9, [4, 8, 8, 1]), tf.float32)
    _Counting.total = 0
    model.log_prob(x)
    assert _Counting.total == 5  # 4 couplings and the split prior
    _Counting.total = 0
    tf.function(model.log_prob)(x)
    assert _Counting.total == 5


def test_glow_coupling_contracts_the_data_to_latent_pass_like_glows_sigmoid():
    """Glow scales x2 by sigmoid(h + 2) <= 1 on the way to the latent: log-det <= 0 there."""
    (coupling,) = _glow_couplings(tn.Glow([4, 4, 1], num_levels=1, num_steps=1, filters=4))
    for v in coupling.conditioner.trainable_weights:
        v.assign(np.random.default_rng(0).normal(0, 3.0, v.shape))
    step = tfb.Invert(coupling)  # as in the flow: its inverse is the data -> latent pass
    y = testing.random_input((50,), [2, 2, 4], tf.float32, scale=3.0)
    ildj = step.inverse_log_det_jacobian(y, event_ndims=3).numpy()
    assert ildj.max() < 0 and ildj.min() < -1.0


def test_glow_fit_initialises_actnorm_trains_and_round_trips_through_keras(tmp_path):
    model = _tiny_glow(coupling="additive")
    x = np.random.default_rng(3).uniform(0, 16.9, [64, 8, 8, 1]).astype("float32")
    acts = _walk(model, tn.ActNorm)
    assert not any(a.layer.is_initialized for a in acts)
    testing.assert_variables_trainable(model, x[:8])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, batch_size=32, epochs=3, verbose=0)
    assert all(a.layer.is_initialized for a in acts)
    assert history.history["loss"][-1] < history.history["loss"][0]
    loaded = reload(model, tmp_path, "glow.keras")
    assert type(loaded) is tn.Glow and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.log_prob(x[:8]), model.log_prob(x[:8]))
    np.testing.assert_array_equal(loaded.sample(4, seed=(3, 4), temperature=0.7),
                                  model.sample(4, seed=(3, 4), temperature=0.7))


def test_glow_samples_at_temperature_and_redraws_one_scale():
    model = _tiny_glow(logit_alpha=None, data_scale=None)
    _perturb(model, 0.02)
    for t in (1.0, 0.6):
        x = model.sample(400, seed=(1, 2), temperature=t)
        assert x.shape == (400, 8, 8, 1) and np.isfinite(x.numpy()).all()
        np.testing.assert_allclose(model.encode(x).numpy().std(), t, rtol=0.1)
    z = model.encode(model.sample(4, seed=(5, 6)))
    fine = model.latent_scales() == 0
    again = model.encode(model.resample_scale(z, scale=0, seed=(3, 4)))
    np.testing.assert_allclose(np.asarray(again)[:, ~fine], np.asarray(z)[:, ~fine], atol=1e-3)
    assert np.abs(np.asarray(again)[:, fine] - np.asarray(z)[:, fine]).max() > 0.1


@pytest.mark.parametrize("conditioning", ["couplings", "prior", "both"])
def test_class_conditional_glow_fits_on_labels_and_round_trips(conditioning, tmp_path):
    model = tn.Glow([8, 8, 1], num_levels=2, num_steps=1, filters=4, data_scale=17.0,
                    logit_alpha=0.05, num_classes=3, conditioning=conditioning)
    prior = [s for s in model.steps if isinstance(s, tn.ContextAffine)]
    assert len(prior) == (conditioning != "couplings")
    routed = tn.graph.route_condition(model.bijector, {"context": "c"})
    assert bool(set(routed) - {"context_prior"}) == (conditioning != "prior")
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 16.9, [48, 8, 8, 1]).astype("float32")
    y = rng.integers(0, 3, 48)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # ActNorm initialised on (x, y)
    lp = {c: model.log_prob(x[:4], np.full(4, c)).numpy() for c in range(3)}
    assert not np.allclose(lp[0], lp[1])  # the label matters once trained
    path = tmp_path / "cglow.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config() == model.get_config() and loaded.num_classes == 3
    np.testing.assert_allclose(loaded.log_prob(x[:4], y[:4]), model.log_prob(x[:4], y[:4]),
                               rtol=1e-6)
    s = model.sample(3, seed=(1, 2), context=[0, 1, 2], temperature=0.7)
    np.testing.assert_allclose(model.encode(s, [0, 1, 2]).shape, [3, 8, 8, 1])
