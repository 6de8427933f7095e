"""Conditional flows ``p(x | context)``: labels or vectors, fit, sample, save, classify."""

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

tfb = tfp.bijectors
tfd = tfp.distributions


def _moons(n, seed):
    x, y = make_moons(n, noise=0.05, random_state=seed)
    return ((x - [0.5, 0.25]) / [0.87, 0.5]).astype("float32"), y.astype("int64")


def _flow(num_classes=2, context_shape=None, prior=False, memory_saving=False, couplings=4,
          hidden=(32, 32), zero_init=True):
    steps = []
    for i in range(couplings):
        net = tn.MLPConditioner(hidden_units=hidden, zero_init_output=zero_init)
        steps += [tn.AffineCoupling(net, num_masked=1, name=f"coupling_{i}"),
                  tfb.Permute([1, 0], name=f"permute_{i}")]
    if prior:
        steps.append(tn.ContextAffine([2], name="prior"))
    return tn.FlowModel(tn.priors.standard_normal([2]), steps, memory_saving=memory_saving,
                        num_classes=num_classes, context_shape=context_shape)


@pytest.fixture(scope="module")
def trained():
    """A class-conditional flow fitted on the two moons (label = moon)."""
    keras.utils.set_random_seed(0)
    x, y = _moons(2048, 0)
    model = _flow(prior=True)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    history = model.fit(x, y, batch_size=128, epochs=12, verbose=0,
                        validation_data=_moons(256, 1))
    return model, history


def test_fit_on_label_arrays_learns_each_moon_and_classifies_held_out_points(trained):
    model, history = trained
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.5
    assert np.isfinite(history.history["val_loss"]).all()
    x, y = _moons(512, 2)
    assert np.mean(model.classify(x).numpy() == y) >= 0.97
    # each class's density is high on its own moon and low on the other one
    own = model.log_prob(x, y).numpy()
    other = model.log_prob(x, 1 - y).numpy()
    assert np.mean(own > other) >= 0.97


def test_call_evaluate_and_log_prob_agree_and_equal_tfp_with_bijector_kwargs(trained):
    model, _ = trained
    x, y = _moons(64, 3)
    nll = model((x, y))
    np.testing.assert_allclose(nll, -model.log_prob(x, y), rtol=1e-6)
    one_hot = tf.one_hot(y, 2)
    kwargs = {s.name: {"context": one_hot} for s in model.steps if getattr(s, "conditional", 0)}
    dist = tfd.TransformedDistribution(model.base_distribution, tfb.Chain(model.steps))
    np.testing.assert_allclose(nll, -dist.log_prob(x, bijector_kwargs=kwargs), rtol=1e-5,
                               atol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    np.testing.assert_allclose(model.evaluate(ds, verbose=0), np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(model.predict((x, y), verbose=0), nll, rtol=1e-5)


def test_log_prob_per_class_and_classify_with_a_class_prior(trained):
    model, _ = trained
    x, _ = _moons(32, 4)
    per_class = model.log_prob_per_class(x).numpy()
    assert per_class.shape == (32, 2)
    for k in range(2):
        np.testing.assert_allclose(per_class[:, k], model.log_prob(x, k), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.classify(x), np.argmax(per_class, -1))
    skewed = np.log([1e-30, 1.0])  # class 1 almost surely: the prior decides
    assert np.all(model.classify(x, class_log_prior=skewed).numpy() == 1)
    log_prior = model.set_class_prior(labels=[0, 0, 0, 1])
    np.testing.assert_allclose(np.exp(log_prior), [0.75, 0.25])
    np.testing.assert_allclose(model.class_log_prior.numpy(), log_prior, rtol=1e-6)
    model.set_class_prior(counts=[1, 1])


def test_sample_at_labels_with_temperature_and_round_trip_encode_decode(trained):
    model, _ = trained
    a = model.sample(200, seed=(1, 2), context=0)
    b = model.sample(200, seed=(1, 2), context=np.zeros(200, "int64"))
    np.testing.assert_array_equal(a, b)
    ones = model.sample(200, seed=(1, 2), context=1)
    # the two moons: samples of class 0 are classified 0, of class 1 as 1
    assert np.mean(model.classify(a).numpy() == 0) >= 0.9
    assert np.mean(model.classify(ones).numpy() == 1) >= 0.9
    cold = model.sample(200, seed=(1, 2), context=0, temperature=0.3)
    assert np.mean(model.log_prob(cold, 0)) > np.mean(model.log_prob(a, 0))
    x, y = _moons(8, 5)
    z = model.encode(x, y)
    np.testing.assert_allclose(model.decode(z, y), x, atol=1e-4)
    assert np.max(np.abs(model.encode(x, 1 - y) - z)) > 1e-2


def test_keras_file_round_trip_keeps_the_condition_and_class_prior(trained, tmp_path):
    model, _ = trained
    model.set_class_prior(counts=[3, 1])
    loaded = reload(model, tmp_path, "conditional.keras")
    x, y = _moons(16, 6)
    assert loaded.num_classes == 2 and loaded.conditional
    np.testing.assert_array_equal(loaded.log_prob(x, y), model.log_prob(x, y))
    np.testing.assert_array_equal(loaded.class_log_prior, model.class_log_prior)
    np.testing.assert_array_equal(loaded.sample(4, seed=(3, 4), context=[0, 1, 0, 1]),
                                  model.sample(4, seed=(3, 4), context=[0, 1, 0, 1]))
    model.set_class_prior(counts=[1, 1])


def test_fit_on_a_dataset_of_pairs_with_validation_dataset():
    x, y = _moons(512, 7)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512, seed=0).batch(64)
    val = tf.data.Dataset.from_tensor_slices(_moons(128, 8)).batch(64)
    model = _flow(couplings=2, hidden=(16,))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(train, validation_data=val, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert len(history.history["val_loss"]) == 3
    weights = tf.data.Dataset.from_tensor_slices((x, y, np.ones(512, "float32"))).batch(64)
    assert np.isfinite(model.evaluate(weights, verbose=0))


def test_vector_context_conditions_the_density():
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, [1024, 3]).astype("float32")
    x = (c[:, :2] * 2.0 + 0.1 * rng.standard_normal([1024, 2])).astype("float32")
    model = _flow(num_classes=None, context_shape=[3], couplings=2, hidden=(32,))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, c, batch_size=128, epochs=15, verbose=0)
    right = model.log_prob(x[:256], c[:256]).numpy()
    wrong = model.log_prob(x[:256], c[256:512]).numpy()
    assert np.mean(right) > np.mean(wrong) + 1.0
    samples = model.sample(64, seed=(5, 6), context=np.array([0.5, -0.5, 0.0], "float32"))
    np.testing.assert_allclose(np.mean(samples, 0), [1.0, -1.0], atol=0.3)
    with pytest.raises(ValueError, match=r"must have shape \[batch, 3\].*Received: context"):
        model.log_prob(x[:2], np.zeros([2, 4], "float32"))


@pytest.mark.parametrize("context_shape", [None, [3]])
def test_memory_saving_matches_plain_backprop_with_a_context(context_shape):
    x, y = _moons(16, 9)
    context = (np.random.default_rng(1).standard_normal([16, 3]).astype("float32")
               if context_shape else y)
    models = []
    for memory_saving in (False, True):
        keras.utils.set_random_seed(4)
        models.append(_flow(num_classes=None if context_shape else 2, context_shape=context_shape,
                            memory_saving=memory_saving, couplings=3, hidden=(16,),
                            zero_init=False))
    models[1].set_weights(models[0].get_weights())
    results = []
    for model in models:
        c = tf.constant(context)
        with tf.GradientTape() as tape:
            tape.watch(c)
            loss = tf.reduce_mean(model((x, c)))
        grads = tape.gradient(loss, model.trainable_variables + ([c] if context_shape else []))
        results.append((loss, grads))
    assert any(isinstance(s, tn.ReversibleFlow) for s in tn.graph.walk(models[1].bijector))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for g_plain, g_saving in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(g_saving, g_plain, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("conditioning, couplings_see_context, prior", [
    ("couplings", True, False), ("prior", False, True), ("both", True, True)])
def test_preset_conditioning_choice_wires_the_context(conditioning, couplings_see_context, prior):
    model = tn.RealNVP([4], num_couplings=2, hidden_units=(8,), num_classes=3,
                       conditioning=conditioning)
    couplings = [s for s in model.steps if isinstance(s, tn.AffineCoupling)]
    width = couplings[0].conditioner.hidden[0].kernel.shape[0]
    assert width == 2 + (3 if couplings_see_context else 0)
    assert any(isinstance(s, tn.ContextAffine) for s in model.steps) == prior
    config = model.get_config()
    assert config["num_classes"] == 3 and config["conditioning"] == conditioning
    clone = tn.RealNVP.from_config(config)
    assert len(clone.trainable_variables) == len(model.trainable_variables)


def test_unconditional_preset_config_is_unchanged():
    config = tn.RealNVP([4], num_couplings=2, hidden_units=(8,)).get_config()
    assert not {"num_classes", "context_shape", "conditioning", "class_mean_stddev"} & set(config)


def _prior_means(model, k):
    """The class means of a preset's ContextAffine prior: its forward image of 0 per class."""
    prior = [s for s in model.steps if isinstance(s, tn.ContextAffine)][0]
    shape = prior.parameters["event_shape"]
    y = prior.forward(np.zeros([k, *shape], "float32"), context=np.eye(k, dtype="float32"))
    return tf.reshape(y, [k, -1])


@pytest.mark.parametrize("make, default", [
    (lambda d, **kw: tn.NICE([d * d], hidden_units=(8,), **kw), "prior"),
    (lambda d, **kw: tn.RealNVP([d * d], num_couplings=2, hidden_units=(8,), **kw), "prior"),
    (lambda d, **kw: tn.NSF([d * d], num_couplings=2, hidden_units=(8,), **kw), "prior"),
    (lambda d, **kw: tn.RealNVPImage([d, d, 1], num_scales=1, num_blocks=1, filters=4, **kw),
     "both"),
    (lambda d, **kw: tn.Glow([d, d, 1], num_levels=1, num_steps=1, filters=4, **kw), "both"),
])
def test_class_conditional_presets_start_their_class_means_apart(make, default):
    """By default the means are spread (stddev 1.5) on latents of 64 units or more (8x8) and
    start at 0 below (4x4); an explicit class_mean_stddev holds at any size."""
    keras.utils.set_random_seed(0)
    model = make(8, num_classes=3)
    config = model.get_config()
    assert config["conditioning"] == default and config["class_mean_stddev"] is None
    means = _prior_means(model, 3).numpy()
    assert np.std(means) == pytest.approx(1.5, rel=0.25)
    assert np.abs(means[0] - means[1]).max() > 0.5
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    flat = make(8, num_classes=3, class_mean_stddev=0.0)
    assert flat.get_config()["class_mean_stddev"] == 0.0
    np.testing.assert_array_equal(_prior_means(flat, 3), np.zeros_like(means))
    np.testing.assert_array_equal(_prior_means(make(4, num_classes=3), 3), np.zeros([3, 16]))
    small = _prior_means(make(4, num_classes=3, class_mean_stddev=1.5), 3).numpy()
    assert np.std(small) > 0.5


def test_vector_contexts_start_at_the_identity_and_bad_spreads_are_refused():
    model = tn.RealNVP([4], num_couplings=2, hidden_units=(8,), context_shape=[3])
    assert "class_mean_stddev" not in model.get_config()
    np.testing.assert_array_equal(_prior_means(model, 3), np.zeros([3, 4]))
    with pytest.raises(ValueError, match=r"`class_mean_stddev` must be a float >= 0 \(or None: "
                                         r"by latent size\). Received: class_mean_stddev=-0.5"):
        tn.RealNVP([4], num_couplings=2, hidden_units=(8,), num_classes=3,
                   class_mean_stddev=-0.5)


def test_fit_initialises_act_norm_on_its_first_labelled_batch():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64)
    x = (rng.standard_normal([64, 2]) * [2.0, 0.5] + [1.0, -3.0]).astype("float32")
    act_norm = tn.ActNorm(channels=2, event_ndims=1)
    steps = [act_norm, tn.AffineCoupling(tn.MLPConditioner(hidden_units=(4,)), num_masked=1)]
    model = tn.FlowModel(tn.priors.standard_normal([2]), steps, num_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert act_norm.layer.is_initialized
    np.testing.assert_allclose(act_norm.layer.loc.numpy(), x[:32].mean(0), rtol=1e-4)
    assert model.initialize_from_data(x[:8], context=y[:8]) == 0  # nothing left to do


def test_conditional_image_model_takes_labels_as_feature_maps_and_in_its_prior():
    x = np.random.default_rng(0).uniform(0, 17, [3, 4, 4, 1]).astype("float32")
    model = tn.RealNVPImage([4, 4, 1], num_blocks=1, filters=4, data_scale=17.0, num_classes=3,
                            conditioning="both")
    first = next(s for s in tn.graph.walk(model.bijector) if isinstance(s, tn.AffineCoupling))
    assert first.conditioner.conv_in.v.shape[2] == 1 + 1 + 3  # [x * mask, mask, one-hot]
    assert model.log_prob_per_class(x).shape == (3, 3)
    assert model.latent_scales().shape == (4, 4, 1)
    assert model.sample(2, seed=(1, 1), context=[0, 2]).shape == (2, 4, 4, 1)
    z = model.encode(x, [0, 1, 2])
    np.testing.assert_allclose(model.decode(z, [0, 1, 2]), x, atol=1e-3)


def test_conditional_nice_initialises_its_scale_with_labels():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 17, [64, 8]).astype("float32")
    model = tn.NICE([8], num_couplings=2, hidden_units=(8,), data_scale=17.0, num_classes=2)
    s = model.initialize_scale(x, context=rng.integers(0, 2, 64))
    assert s.shape == (8,) and np.all(np.isfinite(s))


# ---------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return _flow(couplings=1, hidden=(4,))


@pytest.mark.parametrize("labels, error, match", [
    ([0, 2], ValueError, r"class labels in \[0, 2\).*Received labels from 0 to 2"),
    ([-1, 0], ValueError, r"Received labels from -1 to 0"),
    ([0.0, 1.0], TypeError, r"integer class labels.*Received: context.dtype=float64"),
    (None, ValueError, r"conditional \(num_classes=2\): `context` is required"),
    ([0, 1, 1], ValueError, r"must match the batch: labels \[batch\] for a batch of shape \[2\]"),
])
def test_bad_labels_are_clear_python_errors(small, labels, error, match):
    with pytest.raises(error, match=match):
        small.log_prob(np.zeros([2, 2], "float32"), labels)


def test_bad_label_in_a_graph_is_an_invalid_argument_error(small):
    fn = tf.function(small.log_prob, input_signature=[tf.TensorSpec([None, 2], tf.float32),
                                                      tf.TensorSpec([None], tf.int32)])
    assert fn(tf.zeros([2, 2]), tf.constant([0, 1])).shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class labels in \[0, 2\)"):
        fn(tf.zeros([2, 2]), tf.constant([0, 5]))


def test_context_for_an_unconditional_flow_and_missing_pairs_are_refused(small):
    plain = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    with pytest.raises(ValueError, match="`context` was given but the flow is not conditional"):
        plain.log_prob(np.zeros([1, 2], "float32"), [0])
    with pytest.raises(ValueError, match=r"inputs are pairs \(x, context\)"):
        small(np.zeros([1, 2], "float32"))
    small.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"fitted on \(x, context\)"):
        small.fit(np.zeros([4, 2], "float32"), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"yield \(x, context\) pairs"):
        small.fit(tf.data.Dataset.from_tensor_slices(np.zeros([4, 2], "float32")).batch(2))


def test_conditional_flow_without_a_conditional_step_is_refused():
    with pytest.raises(ValueError, match="no step takes a condition"):
        tn.FlowModel(tn.priors.standard_normal([2]), [tfb.Shift([1.0, 2.0])], num_classes=2)
    with pytest.raises(ValueError, match="at most one of `num_classes`.*`context_shape`"):
        _flow(num_classes=2, context_shape=[2])
    plain = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
    with pytest.raises(ValueError, match="needs a class-conditional flow"):
        plain.classify(np.zeros([1, 2], "float32"))


def test_coupling_built_unconditional_gets_no_context():
    steps = [tn.AffineCoupling(tn.MLPConditioner(hidden_units=(4,)), num_masked=1,
                               conditional=False, name="shared"),
             tn.ContextAffine([2], name="prior")]
    model = tn.FlowModel(tn.priors.standard_normal([2]), steps, num_classes=4)
    assert steps[0].conditioner.hidden[0].kernel.shape[0] == 1
    assert tn.graph.route_condition(model.bijector, {"context": 1}) == {"prior": {"context": 1}}


def test_mlp_conditioner_without_output_units_outside_a_coupling_says_so():
    with pytest.raises(ValueError, match="`output_units` is not set.*Received: output_units=None"):
        tn.MLPConditioner(hidden_units=(4,))(np.zeros([1, 3], "float32"))


# ---------------------------------------------------------------------------------------------
# tf.distribute: two logical CPUs.
# ---------------------------------------------------------------------------------------------
_MIRRORED = textwrap.dedent(
    """
    import json
    import numpy as np, tensorflow as tf
    import keras
    import tfp_nice as tn

    def build():
        keras.utils.set_random_seed(0)
        return tn.RealNVP([2], num_couplings=2, hidden_units=(16,), num_classes=2,
                          conditioning="both")

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 512)
    x = (rng.standard_normal([512, 2]) * 0.3 + np.stack([y, -y], 1)).astype("float32")
    single = build()
    weights = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.05))
    h1 = single.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0).history["loss"]
    e1 = single.evaluate(x, y, batch_size=64, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
        mirrored.set_weights(weights)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.05))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    h2 = mirrored.fit(ds, epochs=3, verbose=0).history["loss"]
    e2 = mirrored.evaluate(x, y, batch_size=64, verbose=0)
    acc = float(np.mean(mirrored.classify(x).numpy() == y))
    print(json.dumps({"single": h1 + [e1], "mirrored": h2 + [e2], "accuracy": acc,
                      "replicas": strategy.num_replicas_in_sync}))
    """
)


def test_mirrored_strategy_on_two_cpus_trains_a_conditional_flow_like_one_device():
    result = run_on_two_cpus(_MIRRORED)
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["mirrored"], result["single"], rtol=1e-4)
    assert result["accuracy"] > 0.9


# --- FlowGMM's random class means (ContextAffine(mean_stddev=...)) ---------------------------

def test_random_class_means_start_apart_with_the_given_spread_and_unit_scale():
    b = tn.ContextAffine([400], mean_stddev=1.5, seed=7)
    onehot = np.eye(5, dtype="float32")
    zeros = np.zeros([5, 400], "float32")
    means = b.forward(zeros, context=onehot).numpy()           # x = 0 -> y = t(c)
    assert np.std(means) == pytest.approx(1.5, rel=0.1)
    assert abs(np.mean(means)) < 0.1
    assert np.min(np.linalg.norm(means[:, None] - means[None], axis=-1)
                  + 1e9 * np.eye(5)) > 1.5 * np.sqrt(2 * 400) * 0.8   # classes apart
    np.testing.assert_array_equal(
        b.forward_log_det_jacobian(zeros, event_ndims=1, context=onehot), np.zeros(5))
    np.testing.assert_allclose(b.inverse(means, context=onehot), zeros, atol=1e-6)
    same = tn.ContextAffine([400], mean_stddev=1.5, seed=7).forward(zeros, context=onehot)
    other = tn.ContextAffine([400], mean_stddev=1.5, seed=8).forward(zeros, context=onehot)
    np.testing.assert_array_equal(same, means)
    assert not np.allclose(other, means)
    identity = tn.ContextAffine([400]).forward(zeros, context=onehot)
    np.testing.assert_array_equal(identity, zeros)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean_stddev=-1.0), r"`mean_stddev` must be a float >= 0. Received: mean_stddev=-1.0"),
    (dict(mean_stddev=float("nan")), r"`mean_stddev` must be a float >= 0"),
    (dict(mean_stddev=1.0, conditioner=tn.MLPConditioner(4, hidden_units=())),
     r"`mean_stddev` and `seed` initialise the default conditioner"),
])
def test_bad_mean_stddev_is_refused_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tn.ContextAffine([2], **kwargs)


def test_random_class_means_survive_a_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(3)
    model = tn.FlowModel(tn.priors.standard_normal([2]),
                         [tn.ContextAffine([2], mean_stddev=2.0, name="prior")], num_classes=4)
    loaded = reload(model, tmp_path)
    x = np.random.default_rng(0).normal(size=[6, 2]).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(loaded.log_prob(x, labels), model.log_prob(x, labels))
    means = model.decode(np.zeros([4, 2], "float32"), np.arange(4)).numpy()
    assert np.abs(means).min() > 0 and np.std(means) > 0.5
