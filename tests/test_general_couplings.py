"""tn.Coupling (any elementwise bijector) and tn.SplineCoupling (neural splines), NSF preset.

The conformance kit runs over both in ``test_bijector_contract.py``; here: what the kit does
not check (out-of-bound inputs, identity start, memory-saving gradients, errors, saving).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import reload

import tfp_nice as tn

tfb = tfp.bijectors


def _spline(zero_init=False, **kwargs):
    net = tn.MLPConditioner(hidden_units=(8,), zero_init_output=zero_init)
    return tn.SplineCoupling(net, **{"num_masked": 2, "num_bins": 4, "bound": 2.0, **kwargs})


@keras.saving.register_keras_serializable(package="tests")
def shift_and_scale(h):
    shift, log_scale = tf.split(h, 2, axis=-1)
    return tfb.Shift(shift)(tfb.Scale(log_scale=0.5 * tf.tanh(log_scale)))


def test_spline_values_far_outside_the_bound_are_the_identity_with_finite_gradients():
    b = _spline()
    big = np.array([[0.3, -0.7, 1e30, -1e30, 5.0],
                    [0.1, 0.2, 1.5, -1.99, 1e6]], "float32")
    x = tf.constant(big)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = b.forward(x)
        fldj = b.forward_log_det_jacobian(x, event_ndims=1)
        back = b.inverse(tf.identity(y))
        ildj = b.inverse_log_det_jacobian(tf.identity(y), event_ndims=1)
        loss = tf.reduce_sum(tf.where(tf.abs(y) < 1e5, y, 0.0)) + tf.reduce_sum(fldj + ildj)
    np.testing.assert_array_equal(y.numpy()[0, 2:], big[0, 2:])  # outside [-2, 2]: identity
    np.testing.assert_array_equal(y.numpy()[1, 4], big[1, 4])
    assert np.max(np.abs(y.numpy()[1, 2:4] - big[1, 2:4])) > 1e-3  # inside: transformed
    np.testing.assert_allclose(back, big, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(fldj)) and np.all(np.isfinite(ildj))
    grads = tape.gradient(loss, [x] + b.conditioner.trainable_variables)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_fresh_spline_coupling_is_the_identity():
    b = _spline(zero_init=True)
    x = tf.constant(np.random.default_rng(0).uniform(-3, 3, [6, 5]), tf.float32)
    np.testing.assert_allclose(b.forward(x), x, atol=1e-5)
    np.testing.assert_allclose(b.forward_log_det_jacobian(x, event_ndims=1), 0.0, atol=1e-5)
    assert b.conditioner.output_units == 3 * (3 * 4 - 1)  # set from the split: d2 (3K - 1)


@pytest.mark.parametrize("kind", ["spline", "coupling-keras", "coupling-tfp"])
def test_memory_saving_flow_matches_plain_backprop(kind):
    def steps():
        keras.utils.set_random_seed(7)
        out = []
        for _ in range(3):
            net = tn.MLPConditioner(hidden_units=(8,), zero_init_output=False)
            if kind == "spline":
                out.append(tn.SplineCoupling(net, num_masked=2, num_bins=4, bound=3.0))
            elif kind == "coupling-keras":
                out.append(tn.Coupling(shift_and_scale, num_masked=2, conditioner=net,
                                       units_per_dim=2))
            else:
                dense = keras.layers.Dense(2)
                out.append(tn.Coupling(lambda x1, d=dense: tfb.Shift(d(x1)), num_masked=2))
            out.append(tfb.Permute([3, 2, 1, 0]))
        return out

    x = np.random.default_rng(1).standard_normal([16, 4]).astype("float32")
    results = []
    for memory_saving in (False, True):
        model = tn.FlowModel(tn.priors.standard_normal([4]), steps(), memory_saving=memory_saving)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x))
        results.append((loss, tape.gradient(loss, model.trainable_variables)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    assert len(results[0][1]) == len(results[1][1]) > 0
    for g0, g1 in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(g1, g0, rtol=1e-3, atol=1e-5)


def test_nsf_preset_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal([512, 4]) * [1.0, 0.5, 0.3, 1.0]).astype("float32")
    x[:, 1] += np.sin(2 * x[:, 0])
    model = tn.NSF([4], num_couplings=2, hidden_units=(16,), num_bins=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, batch_size=64, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    loaded = reload(model, tmp_path, "nsf.keras")
    assert type(loaded) is tn.NSF
    np.testing.assert_array_equal(loaded.log_prob(x[:8]), model.log_prob(x[:8]))


def test_coupling_keras_form_config_round_trip_keeps_outputs():
    b = tn.Coupling(shift_and_scale, num_masked=1, conditioner=tn.MLPConditioner(
        hidden_units=(4,), zero_init_output=False), units_per_dim=2)
    x = np.random.default_rng(2).standard_normal([3, 3]).astype("float32")
    y = b.forward(x)
    clone = tn.Coupling.from_config(b.get_config())
    clone.forward(x)
    clone.conditioner.set_weights(b.conditioner.get_weights())
    np.testing.assert_allclose(clone.forward(x), y, rtol=1e-6)


def test_coupling_errors_name_the_argument():
    with pytest.raises(TypeError, match="`bijector_fn` must be callable"):
        tn.Coupling(3, num_masked=1)
    b = tn.Coupling(lambda x1: x1, num_masked=1)
    with pytest.raises(TypeError, match="must return a tfp.bijectors.Bijector"):
        b.forward(np.zeros([1, 2], "float32"))
    with pytest.raises(TypeError, match="`bijector_fn` must be registered to be saved"):
        tn.Coupling(lambda x1: tfb.Shift(x1), num_masked=1).get_config()


@pytest.mark.parametrize("kwargs, match", [
    ({"num_bins": 1}, r"`num_bins` must be an int >= 2. Received: num_bins=1"),
    ({"bound": 0.0}, r"`bound` must be a float > 0. Received: bound=0.0"),
    ({"min_bin_width": 1.5}, r"`min_bin_width` must be a float in \(0, 2 \* bound / num_bins"),
    ({"min_slope": 1.0}, r"`min_slope` must be a float in \(0, 1\). Received: min_slope=1.0"),
])
def test_spline_coupling_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _spline(**kwargs)
