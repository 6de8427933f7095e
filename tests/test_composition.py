"""tfp_nice couplings composed with TFP: chains, TransformedDistribution and FlowModel.

Every flow here mixes our couplings with stock TFP bijectors (``Permute``, ``Invert``,
``Shift``, ``Scale``, ``Reshape``, ``MaskedAutoregressiveFlow``) and checks the composition
against first principles: round trips, ``fldj == -ildj``, log-dets against the ``slogdet`` of
the float64 autodiff Jacobian, and ``log_prob`` against the change-of-variables formula
computed step by step by hand.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras
from _factories import counting, mlp

import tfp_nice
from tfp_nice import AdditiveCoupling, AffineCoupling, FlowModel, MLPConditioner, masks, priors
from tfp_nice import testing as kit

tfb = tfp.bijectors
tfd = tfp.distributions

F64 = tf.float64
TOL = 1e-10


# --------------------------------------------------------------------------------------------
# Tiny factories (float64, non-zero output layers so every coupling is a real transform).
# --------------------------------------------------------------------------------------------
_mlp = mlp


def _affine(d2: int, **split) -> AffineCoupling:
    return AffineCoupling(_mlp(2 * d2), **split)


def _additive(d2: int, **split) -> AdditiveCoupling:
    return AdditiveCoupling(_mlp(d2), **split)


def _maf(event_size: int = 4) -> tfb.MaskedAutoregressiveFlow:
    """A float64 MAF. ``tfb.AutoregressiveNetwork(dtype=tf.float64)`` builds its hidden
    ``tf_keras.layers.Activation`` without a dtype, so with tf_keras' default floatx the hidden
    activations are rounded to float32 (~1e-8 relative error, enough to break 1e-10 log-det
    checks of a chain). Building it under floatx float64 keeps every layer in float64."""
    old = tf_keras.backend.floatx()
    tf_keras.backend.set_floatx("float64")
    try:
        net = tfb.AutoregressiveNetwork(
            params=2, hidden_units=[16], event_shape=[event_size], dtype=tf.float64
        )
        net.build((None, event_size))
    finally:
        tf_keras.backend.set_floatx(old)
    return tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=net)


def _x(batch_shape, event_shape, seed: int = 7) -> tf.Tensor:
    return kit.random_input(batch_shape, event_shape, F64, seed=seed)


def vector_chain() -> tfb.Chain:
    """Event shape [4]; our couplings between Permute, Invert, Shift, Scale and a MAF."""
    return tfb.Chain(
        [
            _affine(2, num_masked=2),
            tfb.Permute([3, 1, 0, 2]),
            tfb.Invert(_additive(2, num_masked=2)),
            tfb.Shift(tf.constant([0.3, -0.2, 0.1, 0.5], F64)),
            tfb.Scale(tf.constant([1.5, 0.7, 1.2, 0.9], F64)),
            _maf(),
            tfb.Invert(_affine(2, mask=masks.even_odd(4))),
            _additive(2, mask=masks.even_odd(4, "odd")),
        ],
        name="vector_chain",
    )


def image_chain() -> tfb.Chain:
    """Event shape [2, 2, 1] in and out; inside, a Reshape to [4] and back."""
    return tfb.Chain(
        [
            _affine(2, mask=masks.checkerboard([2, 2, 1])),
            tfb.Reshape(event_shape_out=[2, 2, 1], event_shape_in=[4]),
            _affine(2, num_masked=2),
            tfb.Permute([2, 0, 3, 1]),
            tfb.Scale(tf.constant([1.3, 0.8, 1.1, 0.6], F64)),
            tfb.Reshape(event_shape_out=[4], event_shape_in=[2, 2, 1]),
            tfb.Invert(_additive(2, mask=masks.checkerboard([2, 2, 1], "odd"))),
            tfb.Shift(tf.constant(0.25, F64)),
        ],
        name="image_chain",
    )


def latent_to_image_chain() -> tfb.Chain:
    """Latent event [4] -> data event [2, 2, 1] (the Reshape changes the event rank)."""
    return tfb.Chain(
        [
            _affine(2, mask=masks.checkerboard([2, 2, 1])),
            tfb.Invert(_additive(2, mask=masks.checkerboard([2, 2, 1], "odd"))),
            tfb.Reshape(event_shape_out=[2, 2, 1], event_shape_in=[4]),
            _affine(2, num_masked=2),
            tfb.Permute([1, 3, 0, 2]),
            tfb.Shift(tf.constant([0.3, -0.2, 0.1, 0.5], F64)),
            tfb.Scale(tf.constant([1.5, 0.7, 1.2, 0.9], F64)),
            _maf(),
            tfb.Invert(_affine(2, num_masked=-2)),
        ],
        name="latent_to_image_chain",
    )


SHAPE_PRESERVING_CHAINS = {"vector": (vector_chain, [4]), "image_reshape": (image_chain, [2, 2, 1])}


# --------------------------------------------------------------------------------------------
# Chains: round trip, fldj == -ildj, log-det vs autodiff.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHAPE_PRESERVING_CHAINS))
def test_chain_with_tfp_bijectors_round_trips(name):
    factory, event_shape = SHAPE_PRESERVING_CHAINS[name]
    chain = factory()
    x = _x((5,), event_shape)
    y = chain.forward(x)
    # The chain is a real transform, not the identity.
    assert np.max(np.abs(y.numpy() - x.numpy())) > 1e-2
    kit.assert_round_trip(chain, x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SHAPE_PRESERVING_CHAINS))
def test_chain_forward_log_det_equals_minus_inverse_log_det(name):
    factory, event_shape = SHAPE_PRESERVING_CHAINS[name]
    chain = factory()
    n = len(event_shape)
    x = _x((5,), event_shape)
    fldj = chain.forward_log_det_jacobian(x, event_ndims=n)
    assert fldj.shape == (5,)
    assert np.max(np.abs(fldj.numpy())) > 1e-3  # not volume preserving
    kit.assert_log_det_consistent(chain, x, event_ndims=n, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SHAPE_PRESERVING_CHAINS))
def test_chain_log_det_matches_autodiff(name):
    factory, event_shape = SHAPE_PRESERVING_CHAINS[name]
    chain = factory()
    kit.assert_log_det_matches_autodiff(
        chain, _x((4,), event_shape), event_ndims=len(event_shape), atol=TOL, rtol=TOL
    )


@pytest.mark.parametrize("name", sorted(SHAPE_PRESERVING_CHAINS))
def test_chain_batch_shapes_match_per_example_results(name):
    factory, event_shape = SHAPE_PRESERVING_CHAINS[name]
    kit.assert_batch_shapes(factory(), event_shape, F64, rtol=1e-9, atol=1e-9)


def test_inverted_coupling_log_det_matches_autodiff():
    for bij in (tfb.Invert(_affine(2, num_masked=2)), tfb.Invert(_additive(2, num_masked=-2))):
        x = _x((4,), [4])
        kit.assert_round_trip(bij, x, rtol=1e-9, atol=1e-9)
        kit.assert_log_det_matches_autodiff(bij, x, event_ndims=1)


def test_rank_changing_chain_round_trips_and_log_dets_are_consistent():
    chain = latent_to_image_chain()
    z = _x((5,), [4])
    x = chain.forward(z)
    assert x.shape == (5, 2, 2, 1)
    z_back = chain.inverse(tf.identity(x))
    np.testing.assert_allclose(z_back.numpy(), z.numpy(), rtol=1e-9, atol=1e-9)
    fldj = chain.forward_log_det_jacobian(tf.identity(z), event_ndims=1)
    ildj = chain.inverse_log_det_jacobian(tf.identity(x), event_ndims=3)
    np.testing.assert_allclose(fldj.numpy(), -ildj.numpy(), rtol=1e-9, atol=1e-9)
    # fldj against slogdet of the autodiff Jacobian of the flattened map [4] -> [4]. A fresh
    # tensor: `chain.forward(z)` would return the cached x, a constant to the tape.
    z_fresh = tf.constant(z.numpy())
    with tf.GradientTape() as tape:
        tape.watch(z_fresh)
        x_flat = tf.reshape(chain.forward(z_fresh), [5, 4])
    jac = tape.batch_jacobian(x_flat, z_fresh).numpy()
    sign, logdet = np.linalg.slogdet(jac)
    assert np.all(sign != 0)
    np.testing.assert_allclose(fldj.numpy(), logdet, rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------------------------
# TransformedDistribution: log_prob by hand, sampling.
# --------------------------------------------------------------------------------------------
def _hand_log_prob(base, steps, x: tf.Tensor) -> tuple[np.ndarray, tf.Tensor]:
    """``base.log_prob(z) + sum_i log|det d step_i^-1 / dy|`` with each step's Jacobian by
    autodiff (``slogdet`` in numpy), applying the steps' inverses one at a time, data first."""
    batch = x.shape[0]
    y = x
    total_ildj = np.zeros([batch])
    for step in steps:
        event_in = y.shape[1:]
        d = event_in.num_elements()
        flat = tf.reshape(y, [batch, d])
        with tf.GradientTape(persistent=True) as tape:  # persistent: eager loop, no pfor trace
            tape.watch(flat)
            z = step.inverse(tf.reshape(flat, [batch] + event_in.as_list()))
            z_flat = tf.reshape(z, [batch, -1])
        assert z_flat.shape[-1] == d
        jac = tape.batch_jacobian(z_flat, flat, experimental_use_pfor=False).numpy()
        del tape
        sign, logdet = np.linalg.slogdet(jac)
        assert np.all(sign != 0), f"singular Jacobian in step {step.name}"
        total_ildj += logdet
        y = tf.identity(z)
    return base.log_prob(y).numpy() + total_ildj, y


HAND_CASES = {
    "vector": (vector_chain, [4], [4]),
    "image_reshape": (image_chain, [2, 2, 1], [2, 2, 1]),
    "latent_to_image": (latent_to_image_chain, [4], [2, 2, 1]),
}


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_transformed_distribution_log_prob_equals_change_of_variables_by_hand(name):
    factory, latent_shape, data_shape = HAND_CASES[name]
    chain = factory()
    base = priors.standard_normal(latent_shape, F64)
    dist = tfd.TransformedDistribution(base, chain)
    assert tuple(dist.event_shape) == tuple(data_shape)
    x = _x((6,), data_shape, seed=11)
    want, z = _hand_log_prob(base, chain.bijectors, x)
    got = dist.log_prob(x).numpy()
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    # The flow matters: log_prob differs from the base density of the data.
    if latent_shape == data_shape:
        assert np.max(np.abs(got - base.log_prob(x).numpy())) > 1e-2
    np.testing.assert_allclose(chain.inverse(tf.identity(x)).numpy(), z.numpy(), atol=1e-12)


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_transformed_distribution_sample_is_reproducible_with_tensor_seed(name):
    factory, latent_shape, data_shape = HAND_CASES[name]
    chain = factory()
    base = priors.standard_normal(latent_shape, F64)
    dist = tfd.TransformedDistribution(base, chain)
    seed = tf.constant([1, 2], tf.int32)
    s1 = dist.sample(7, seed=seed)
    s2 = dist.sample(7, seed=seed)
    s3 = dist.sample(7, seed=(1, 2))
    s_other = dist.sample(7, seed=(3, 4))
    assert tuple(s1.shape) == (7, *data_shape)
    assert s1.dtype == F64
    np.testing.assert_array_equal(s1.numpy(), s2.numpy())
    np.testing.assert_array_equal(s1.numpy(), s3.numpy())
    assert not np.allclose(s1.numpy(), s_other.numpy())


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_log_prob_of_sample_equals_base_log_prob_minus_forward_log_det(name):
    factory, latent_shape, data_shape = HAND_CASES[name]
    chain = factory()
    base = priors.standard_normal(latent_shape, F64)
    dist = tfd.TransformedDistribution(base, chain)
    x = dist.sample(6, seed=(1, 2))
    z = base.sample(6, seed=(1, 2))  # the same stateless seed: the z the sample came from
    np.testing.assert_allclose(chain.forward(z).numpy(), x.numpy(), rtol=0, atol=1e-12)
    fldj = chain.forward_log_det_jacobian(tf.identity(z), event_ndims=len(latent_shape))
    want = base.log_prob(z).numpy() - fldj.numpy()
    # Through the bijector cache (x is the tensor forward returned) and without it.
    np.testing.assert_allclose(dist.log_prob(x).numpy(), want, rtol=0, atol=TOL)
    np.testing.assert_allclose(dist.log_prob(tf.identity(x)).numpy(), want, rtol=0, atol=TOL)
    x_joint, lp_joint = dist.experimental_sample_and_log_prob(6, seed=(1, 2))
    np.testing.assert_allclose(x_joint.numpy(), x.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lp_joint.numpy(), want, rtol=0, atol=TOL)


# --------------------------------------------------------------------------------------------
# FlowModel over mixed steps, with a Keras variable as a tfb.Shift parameter.
# --------------------------------------------------------------------------------------------
def _mixed_flow():
    shift = keras.Variable(np.array([0.5, -0.3, 0.2, 0.1]), dtype="float64", name="flow_shift")
    first, inverted, additive = _affine(2, num_masked=2), _affine(2, num_masked=-2), _additive(
        2, mask=masks.even_odd(4)
    )
    steps = [
        first,
        tfb.Permute([2, 3, 0, 1]),
        tfb.Shift(tfp_nice.keras_parameter(shift)),
        tfb.Invert(inverted),
        additive,
    ]
    base = priors.standard_normal([4], F64)
    model = FlowModel(base, steps)
    return model, base, steps, shift, (first, inverted, additive)


def test_flow_model_log_prob_equals_transformed_distribution_log_prob():
    model, base, steps, _, _ = _mixed_flow()
    x = _x((6,), [4], seed=3)
    want = tfd.TransformedDistribution(base, tfb.Chain(steps)).log_prob(x).numpy()
    got = model.log_prob(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # ... and the hand-computed change of variables.
    hand, _ = _hand_log_prob(base, steps, x)
    np.testing.assert_allclose(got, hand, rtol=0, atol=TOL)


def test_flow_model_call_on_a_float64_flow_is_the_float64_negative_log_prob():
    # `model(x)` is what fit/evaluate minimise; on a float64 flow it must not round x to float32.
    model, base, steps, _, _ = _mixed_flow()
    x = _x((6,), [4], seed=3)
    want = tfd.TransformedDistribution(base, tfb.Chain(steps)).log_prob(x).numpy()
    nll = model(x)
    assert nll.dtype == F64
    np.testing.assert_allclose(nll.numpy(), -want, rtol=0, atol=1e-12)


def test_flow_model_owns_exactly_the_conditioner_tanh_scale_and_shift_variables():
    model, _, _, shift, (first, inverted, additive) = _mixed_flow()
    expected = []
    for coupling in (first, inverted, additive):
        expected += coupling.conditioner.trainable_variables
    tanh_scales = [c.keras_layers[-1] for c in (first, inverted)]
    assert all(isinstance(t, tfp_nice.TanhScale) for t in tanh_scales)
    for t in tanh_scales:
        expected += t.trainable_variables
    expected.append(shift)
    assert len(model.trainable_variables) == len(expected) == 3 * 4 + 2 + 1
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in expected}
    assert any(v is shift for v in model.trainable_variables)


def test_flow_model_shift_keras_variable_gets_a_gradient():
    model, _, _, shift, _ = _mixed_flow()
    x = _x((8,), [4], seed=5) + 2.0
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x))
    (grad,) = tape.gradient(loss, [shift])
    assert grad is not None, "the tfb.Shift Keras variable is not on the gradient path"
    assert np.any(np.asarray(grad) != 0)


def test_flow_model_fit_updates_the_shift_keras_variable():
    model, _, _, shift, (first, _, _) = _mixed_flow()
    before = shift.numpy().copy()
    kernel_before = first.conditioner.out.kernel.numpy().copy()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    data = np.random.default_rng(0).standard_normal([64, 4]) + 3.0
    model.fit(data, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(first.conditioner.out.kernel.numpy(), kernel_before)
    assert not np.allclose(shift.numpy(), before), (
        "model.fit left the tfb.Shift Keras variable unchanged: the step does not use it"
    )


def test_flow_model_refuses_a_keras_variable_passed_directly_to_tfb_shift():
    # TFP copies a raw keras.Variable into a constant, so the model must refuse it rather than
    # silently never train it.
    shift = keras.Variable(np.zeros(4), dtype="float64", name="raw_shift")
    with pytest.raises(ValueError, match="keras_parameter"):
        FlowModel(priors.standard_normal([4], F64), [_affine(2, num_masked=2), tfb.Shift(shift)])


def test_flow_model_with_shift_keras_variable_passes_variables_trainable_check():
    model, *_ = _mixed_flow()
    kit.assert_variables_trainable(model, _x((8,), [4], seed=5))


# --------------------------------------------------------------------------------------------
# One conditioner call per coupling per log_prob.
# --------------------------------------------------------------------------------------------
def CountingConditioner(output_units: int) -> MLPConditioner:  # noqa: N802 - a class-like factory
    """An MLPConditioner that counts its calls (``.calls``)."""
    return counting(MLPConditioner)(output_units, (8,), dtype="float64", zero_init_output=False)


@pytest.mark.parametrize("kind", ["affine", "additive"])
def test_transformed_distribution_log_prob_calls_each_conditioner_once(kind):
    if kind == "affine":
        conds = [CountingConditioner(4) for _ in range(3)]
        couplings = [AffineCoupling(c, num_masked=2) for c in conds]
    else:
        conds = [CountingConditioner(2) for _ in range(3)]
        couplings = [AdditiveCoupling(c, num_masked=2) for c in conds]
    chain = tfb.Chain(
        [couplings[0], tfb.Permute([3, 2, 1, 0]), couplings[1], tfb.Permute([1, 0, 3, 2]),
         couplings[2]]
    )
    dist = tfd.TransformedDistribution(priors.standard_normal([4], F64), chain)
    dist.log_prob(_x((3,), [4], seed=1))  # builds the layers
    for c in conds:
        c.calls = 0
    lp = dist.log_prob(_x((5,), [4], seed=2))
    assert lp.shape == (5,) and np.all(np.isfinite(lp.numpy()))
    assert [c.calls for c in conds] == [1, 1, 1]
    assert sum(c.calls for c in conds) == 3


def test_flow_model_log_prob_calls_each_conditioner_once():
    conds = [CountingConditioner(4) for _ in range(3)]
    steps = [AffineCoupling(conds[0], num_masked=2), tfb.Permute([3, 2, 1, 0]),
             tfb.Invert(AffineCoupling(conds[1], num_masked=2)), tfb.Permute([1, 0, 3, 2]),
             AffineCoupling(conds[2], num_masked=-2)]
    model = FlowModel(priors.standard_normal([4], F64), steps)  # builds the layers
    for c in conds:
        c.calls = 0
    model.log_prob(_x((5,), [4], seed=2))
    assert [c.calls for c in conds] == [1, 1, 1]
