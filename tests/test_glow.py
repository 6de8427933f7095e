"""Glow: the invertible 1x1 convolution."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_nice as tn
from tfp_nice import testing
from tfp_nice.layers.invertible import random_rotation_lu

tfb = tfp.bijectors


def _weight(layer) -> np.ndarray:
    """``W = P L (U + diag(sign_s exp(log_s)))`` from the layer's weights, in NumPy."""
    p, lower, upper, sign_s, log_s = (None if w is None else np.asarray(w, np.float64)
                                      for w in layer())
    c = layer.channels
    lo = np.eye(c) if lower is None else np.tril(lower, -1) + np.eye(c)
    up = np.diag(sign_s * np.exp(log_s)) + (0 if upper is None else np.triu(upper, 1))
    return p @ lo @ up


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
    model.save(tmp_path / "conv.keras")
    loaded = keras.models.load_model(tmp_path / "conv.keras")
    assert isinstance(loaded.steps[0], tn.Invertible1x1Conv)
    np.testing.assert_array_equal(_weight(loaded.steps[0].layer), _weight(conv))
    np.testing.assert_array_equal(loaded.log_prob(x[:8]), model.log_prob(x[:8]))
    np.testing.assert_array_equal(loaded.sample(3, seed=(1, 2)), model.sample(3, seed=(1, 2)))
