"""FlowModel: Keras owns every weight, `fit` trains by maximum likelihood, saving round-trips."""

from __future__ import annotations

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import reload, run_on_two_cpus
from sklearn.datasets import make_moons

import tfp_nice as tn
from tfp_nice import testing

tfb = tfp.bijectors
tfd = tfp.distributions


def _moons(n, seed):
    x, _ = make_moons(n, noise=0.05, random_state=seed)
    return ((x - [0.5, 0.25]) / [0.87, 0.5]).astype("float32")


def _flow(kind="affine", num_couplings=4, hidden=(32, 32)):
    steps = []
    for i in range(num_couplings):
        if kind == "affine":
            steps.append(tn.AffineCoupling(tn.MLPConditioner(2, hidden), num_masked=1))
        else:
            steps.append(tn.AdditiveCoupling(tn.MLPConditioner(1, hidden), num_masked=1))
        if i < num_couplings - 1:
            steps.append(tfb.Permute([1, 0]))
    if kind == "additive":
        steps.append(tn.DiagonalScale([2]))
    return tn.FlowModel(tn.priors.standard_normal([2]), steps)


@pytest.mark.parametrize("kind", ["affine", "additive"])
def test_fit_lowers_held_out_nll_on_two_moons(kind):
    train, test = _moons(2048, 0), _moons(512, 1)
    model = _flow(kind)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    before = model.evaluate(test, batch_size=256, verbose=0)
    history = model.fit(train, batch_size=128, epochs=15, verbose=0)
    after = model.evaluate(test, batch_size=256, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.5, (before, after)
    np.testing.assert_allclose(after, float(tf.reduce_mean(model(test))), rtol=1e-4)


def test_call_is_per_example_negative_log_prob():
    model = _flow()
    x = _moons(7, 2)
    nll = model(x)
    assert nll.shape == (7,)
    np.testing.assert_allclose(nll, -model.distribution.log_prob(x), rtol=1e-6)
    np.testing.assert_allclose(nll, -model.log_prob(x), rtol=1e-6)


@pytest.mark.parametrize("kind", ["affine", "additive"])
def test_keras_sees_every_variable_and_each_gets_a_gradient(kind):
    model = _flow(kind, num_couplings=2, hidden=(8,))
    per_coupling = 4 + (1 if kind == "affine" else 0)  # 2 dense layers + tanh scale
    expected = 2 * per_coupling + (1 if kind == "additive" else 0)
    assert len(model.trainable_variables) == expected
    testing.assert_variables_trainable(model, _moons(32, 3))


def test_fit_updates_every_trainable_variable():
    model = _flow("additive", num_couplings=2, hidden=(8,))
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(_moons(256, 4), batch_size=64, epochs=2, verbose=0)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(changed), [v.path for v, c in zip(model.trainable_variables, changed) if not c]


def test_fit_with_jit_compile_matches_eager_loss():
    x = _moons(256, 5)
    losses = []
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        model = _flow(num_couplings=2, hidden=(16,))
        model.compile(optimizer=keras.optimizers.SGD(1e-2), jit_compile=jit)
        losses.append(model.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0)
                      .history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_chain_holding_tfp_batch_normalization_is_refused():
    with pytest.raises(ValueError, match=r"steps\[0\].*Chain.*tf_keras.*Keras 3 cannot"):
        tn.FlowModel(tn.priors.standard_normal([2]), [
            tfb.Chain([tn.AffineCoupling(tn.MLPConditioner(2, (8,)), num_masked=1),
                       tfb.BatchNormalization()]),
        ])


def test_keras_variable_passed_directly_to_a_tfp_bijector_is_refused():
    shift = keras.Variable(np.zeros(2, "float32"), name="shift")
    with pytest.raises(ValueError, match=r"steps\[0\]` \(Shift\).*copies into a constant.*"
                                         r"keras_parameter"):
        tn.FlowModel(tn.priors.standard_normal([2]), [tfb.Shift(shift)])


def test_raw_tf_variable_in_a_tfp_bijector_is_refused():
    with pytest.raises(ValueError, match=r"steps\[1\]` \(Scale\).*raw tf.Variable"):
        tn.FlowModel(tn.priors.standard_normal([2]), [
            tn.AffineCoupling(tn.MLPConditioner(2, (8,)), num_masked=1),
            tfb.Scale(tf.Variable([1.0, 1.0]))])


def test_keras_parameter_used_by_a_tfp_bijector_is_owned_and_trained():
    shift = keras.Variable(np.zeros(2, "float32"), name="shift")
    model = tn.FlowModel(tn.priors.standard_normal([2]), [
        tfb.Shift(tn.keras_parameter(shift)),
        tn.AffineCoupling(tn.MLPConditioner(2, (8,)), num_masked=1)])
    assert any(v is shift for v in model.trainable_variables)
    model.compile(optimizer=keras.optimizers.Adam(5e-2))
    model.fit(_moons(256, 6) + 3.0, batch_size=64, epochs=3, verbose=0)
    assert np.all(shift.numpy() > 0.3)  # moved towards the data's offset


def test_keras_file_round_trip_keeps_log_prob_and_samples(tmp_path):
    model = tn.FlowModel(tn.priors.standard_logistic([4]), [
        tn.AffineCoupling(tn.MLPConditioner(4, (8,)), mask=tn.masks.even_odd(4), scale="sigmoid"),
        tfb.Permute([3, 1, 2, 0]),
        tn.AdditiveCoupling(tn.MLPConditioner(2, (8,)), num_masked=-2),
        tfb.Invert(tfb.Shift([0.5, -1.0, 0.0, 2.0])),
        tn.DiagonalScale([4]),
    ])
    x = np.random.randn(64, 4).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=32, epochs=2, verbose=0)
    loaded = reload(model, tmp_path, "flow.keras")
    assert type(loaded) is tn.FlowModel
    np.testing.assert_array_equal(loaded.log_prob(x), model.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(5, seed=(4, 2)), model.sample(5, seed=(4, 2)))
    assert len(loaded.trainable_variables) == len(model.trainable_variables)


def test_stateless_sample_is_reproducible_and_has_event_shape():
    model = _flow()
    a = model.sample(6, seed=(1, 2))
    b = model.sample(6, seed=(1, 2))
    assert a.shape == (6, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.decode(model.encode(a)), a, atol=1e-5)


_MIRRORED = textwrap.dedent(
    """
    import json, sys
    import numpy as np, tensorflow as tf
    import keras, tensorflow_probability as tfp
    import tfp_nice as tn
    tfb = tfp.bijectors

    def build():
        keras.utils.set_random_seed(0)
        return tn.FlowModel(tn.priors.standard_normal([2]), [
            tn.AffineCoupling(tn.MLPConditioner(2, (16,), zero_init_output=False), num_masked=1),
            tfb.Permute([1, 0]),
            tn.AdditiveCoupling(tn.MLPConditioner(1, (16,), zero_init_output=False), num_masked=1),
        ])

    rng = np.random.default_rng(0)
    x = (rng.standard_normal([512, 2]) * [1.0, 0.3]).astype("float32")
    single = build()
    weights = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.05))
    h1 = single.fit(x, batch_size=64, epochs=3, shuffle=False, verbose=0).history["loss"]
    e1 = single.evaluate(x, batch_size=64, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
        mirrored.set_weights(weights)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.05))
    h2 = mirrored.fit(x, batch_size=64, epochs=3, shuffle=False, verbose=0).history["loss"]
    e2 = mirrored.evaluate(x, batch_size=64, verbose=0)
    kind = type(mirrored.trainable_variables[0].value).__name__
    print(json.dumps({"single": h1 + [e1], "mirrored": h2 + [e2],
                      "replicas": strategy.num_replicas_in_sync, "var": kind}))
    """
)


def test_mirrored_strategy_on_two_cpus_matches_single_device():
    result = run_on_two_cpus(_MIRRORED)
    assert result["replicas"] == 2
    assert "Mirrored" in result["var"] or "Distributed" in result["var"], result["var"]
    np.testing.assert_allclose(result["mirrored"], result["single"], rtol=1e-4)


def test_encode_decode_use_the_latent_shape_when_it_differs_from_the_data_shape():
    """NICE on [8, 8, 1] images flattens inside: its latent is [64]."""
    model = tn.NICE([8, 8, 1], hidden_units=(8,), data_scale=17.0)
    x = np.random.default_rng(0).uniform(0, 17, [3, 8, 8, 1]).astype("float32")
    z = model.encode(x)
    assert z.shape == (3, 64)
    np.testing.assert_allclose(model.decode(z), x, atol=1e-4)
    with pytest.raises(ValueError, match=r"`z` must have shape \[batch, 64\].*Received: z.shape"):
        model.decode(x)
