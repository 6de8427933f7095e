"""Parity with ``tfb.RealNVP``: each difference issue #12 found, now closed, has a test here.

* conditioner outputs broadcast against ``x2`` (a ``[1]``-shaped shift is accepted);
* ``fraction_masked`` splits as TFP's ``np.round``;
* ``experimental_batch_shape()`` works on every tfp_nice bijector;
* condition keyword arguments reach the conditioner, through ``tfb.Chain`` and
  ``TransformedDistribution(bijector_kwargs=...)``, with TFP's ldj cache still hit;
* ``FlowModel`` owns the Keras layers a ``tfb.RealNVP`` callable closes over, and refuses
  (naming the step) the ones it cannot find, instead of training nothing.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_nice as tn
from tfp_nice import masks, testing

tfb = tfp.bijectors
tfd = tfp.distributions


def _x(*shape, seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal(shape), tf.float32)


# ---------------------------------------------------------------------------------------------
# The same numbers as tfb.RealNVP for the same function.
# ---------------------------------------------------------------------------------------------
def _shift_and_log_scale(x1, a=None):
    """A fixed (weightless) function of x1 and an optional condition ``a``."""
    h = tf.tanh(x1[..., :2]) + (0.0 if a is None else a[..., :2])
    return 0.5 * h, 0.3 * h[..., ::-1]


@pytest.mark.parametrize("split", [{"num_masked": 3}, {"num_masked": -3},
                                   {"fraction_masked": 0.7}, {"fraction_masked": -0.7}])
def test_affine_coupling_computes_what_tfb_real_nvp_computes(split):
    d = 5 if "num_masked" in split else 8  # D = 8, fraction 0.7: TFP keeps 6 (np.round)
    x = _x(4, d)
    a = _x(4, 2, seed=1)
    ours = tn.AffineCoupling(_shift_and_log_scale, scale="exp", **split)
    theirs = tfb.RealNVP(shift_and_log_scale_fn=lambda x1, units, **c: _shift_and_log_scale(
        x1, **c), **split)
    np.testing.assert_allclose(ours.forward(x, a=a), theirs.forward(x, a=a), rtol=1e-6)
    np.testing.assert_allclose(ours.inverse(x, a=a), theirs.inverse(x, a=a), rtol=1e-6)
    np.testing.assert_allclose(ours.forward_log_det_jacobian(x, event_ndims=1, a=a),
                               theirs.forward_log_det_jacobian(x, event_ndims=1, a=a), rtol=1e-6)
    assert ours._masked_size == theirs._masked_size  # TFP's private name, kept for parity


# ---------------------------------------------------------------------------------------------
# Broadcasting conditioner outputs.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[1], [], [4, 1], [1, 3], [3]])
def test_broadcast_shift_and_log_scale_equal_their_full_shape(shape):
    x = _x(4, 5)
    shift = tf.fill(shape, 0.25)
    log_scale = tf.fill(shape, -0.4)
    small = tn.AffineCoupling(lambda x1: (shift, log_scale), num_masked=2, scale="exp")
    full = tn.AffineCoupling(lambda x1: (tf.fill([4, 3], 0.25), tf.fill([4, 3], -0.4)),
                             num_masked=2, scale="exp")
    np.testing.assert_allclose(small.forward(x), full.forward(x), rtol=1e-6)
    # the log-det counts a broadcast log-scale once per transformed unit: 3 * -0.4
    np.testing.assert_allclose(small.forward_log_det_jacobian(x, event_ndims=1), [-1.2] * 4,
                               rtol=1e-6)
    np.testing.assert_allclose(small.inverse(small.forward(x)), x, atol=1e-6)


def test_additive_coupling_accepts_a_one_unit_shift_and_none_means_zero():
    x = _x(2, 4)
    b = tn.AdditiveCoupling(lambda x1: tf.constant([0.5]), num_masked=1)
    np.testing.assert_allclose(b.forward(x)[:, 1:], x[:, 1:] + 0.5, rtol=1e-6)
    no_scale = tn.AffineCoupling(lambda x1: (x1[:, :1], None), num_masked=1, scale="tanh")
    np.testing.assert_allclose(no_scale.forward(x)[:, 1:], x[:, 1:] + x[:, :1], rtol=1e-6)
    assert float(tf.reduce_max(tf.abs(no_scale.forward_log_det_jacobian(x, 1)))) == 0.0


def test_output_that_does_not_broadcast_names_the_allowed_shapes():
    b = tn.AffineCoupling(lambda x1: (tf.zeros([2, 2]), tf.zeros([2, 2])), num_masked=1)
    with pytest.raises(ValueError, match=r"broadcast against \[batch, 3\].*\[\(2, 2\), \(2, 2\)\]"):
        b.forward(_x(2, 4))


# ---------------------------------------------------------------------------------------------
# fraction_masked rounds as TFP.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, fraction, kept", [(8, 0.7, 6), (8, -0.7, -6), (5, 0.5, 2),
                                               (7, 0.5, 4), (10, 0.25, 2), (3, 0.5, 2)])
def test_fraction_masked_rounds_like_tfb_real_nvp(d, fraction, kept):
    mask = masks.half(d, fraction_masked=fraction)
    assert mask.num_masked == abs(kept)
    nvp = tfb.RealNVP(fraction_masked=fraction,
                      shift_and_log_scale_fn=lambda x, u: (x[..., :1], x[..., :1]))
    nvp.forward(tf.zeros([1, d]))
    assert nvp._masked_size == kept
    b = tn.AdditiveCoupling(tn.MLPConditioner(hidden_units=(4,)), fraction_masked=fraction)
    b.forward(tf.zeros([1, d]))
    assert b._masked_size == kept and b.conditioner.output_units == d - abs(kept)


def test_coupling_saved_before_tfp_rounding_keeps_truncating_when_loaded():
    b = tn.AffineCoupling(tn.MLPConditioner(6, (4,)), fraction_masked=0.7)  # as saved: 5 / 3
    config = b.get_config()
    config.pop("fraction_rounding")  # what an older tfp_nice wrote
    old = tn.AffineCoupling.from_config(config)
    old.forward(tf.zeros([1, 8]))
    assert old.mask.num_masked == 5  # int(8 * 0.7), so the saved 2 * 3 outputs still fit


# ---------------------------------------------------------------------------------------------
# experimental_batch_shape on every tfp_nice bijector.
# ---------------------------------------------------------------------------------------------
def _bijectors():
    coupling = tn.AffineCoupling(tn.MLPConditioner(hidden_units=(4,)), num_masked=2)
    return {
        "AffineCoupling": coupling,
        "AdditiveCoupling": tn.AdditiveCoupling(tn.MLPConditioner(hidden_units=(4,)),
                                                num_masked=2),
        "SplineCoupling": tn.SplineCoupling(tn.MLPConditioner(hidden_units=(4,)),
                                            num_masked=2),
        "Coupling": tn.Coupling(lambda x1: tfb.Shift(x1[..., :1]), num_masked=2),
        "DiagonalScale": tn.DiagonalScale([4]),
        "ActNorm": tn.ActNorm(channels=2),
        "BatchNorm": tn.BatchNorm(channels=2),
        "Squeeze": tn.Squeeze(),
        "FactorOut": tn.FactorOut(tn.ActNorm(channels=1), num_kept=1),
        "ContextAffine": tn.ContextAffine([4]),
        "ReversibleFlow": tn.ReversibleFlow([coupling, tfb.Permute([3, 2, 1, 0])]),
    }


@pytest.mark.parametrize("name", sorted(_bijectors()))
def test_experimental_batch_shape_is_scalar_for_every_tfp_nice_bijector(name):
    b = _bijectors()[name]
    assert b.experimental_batch_shape() == tf.TensorShape([])
    assert b.experimental_batch_shape_tensor().numpy().tolist() == []


def test_batch_shape_of_a_flow_model_distribution_is_scalar():
    model = tn.RealNVP([4], num_couplings=2, hidden_units=(4,), num_classes=3,
                       conditioning="both")
    assert model.bijector.experimental_batch_shape() == tf.TensorShape([])
    assert model.distribution.batch_shape == tf.TensorShape([])


# ---------------------------------------------------------------------------------------------
# Condition keyword arguments: tfb.Chain routing, TransformedDistribution, the ldj cache.
# ---------------------------------------------------------------------------------------------
class _Counting(tn.MLPConditioner):
    calls = 0

    def call(self, inputs):
        type(self).calls += 1
        return super().call(inputs)


@pytest.mark.parametrize("cls", [tn.AffineCoupling, tn.SplineCoupling])
def test_bijector_kwargs_reach_each_coupling_once_per_log_prob(cls):
    steps = [cls(_Counting(hidden_units=(8,)), num_masked=2, name="c0"),
             tfb.Permute([3, 2, 1, 0], name="p"),
             cls(_Counting(hidden_units=(8,)), num_masked=2, name="c1")]
    dist = tfd.TransformedDistribution(tn.priors.standard_normal([4]), tfb.Chain(steps))
    x, c = _x(5, 4), _x(5, 3, seed=2)
    kwargs = {"c0": {"context": c}, "c1": {"context": c}}
    dist.log_prob(x, bijector_kwargs=kwargs)  # builds the layers (for x1 and c: 2 + 3 inputs)
    assert steps[0].conditioner.hidden[0].kernel.shape == (5, 8)
    _Counting.calls = 0
    lp = dist.log_prob(tf.identity(x), bijector_kwargs=kwargs)
    assert _Counting.calls == 2  # the ldj comes from TFP's cache, keyed by the kwargs too
    manual = dist.distribution.log_prob(tfb.Chain(steps).inverse(x, **kwargs))
    manual += tfb.Chain(steps).inverse_log_det_jacobian(x, event_ndims=1, **kwargs)
    np.testing.assert_allclose(lp, manual, rtol=1e-5, atol=1e-5)


def test_condition_routes_through_invert_and_factor_out():
    def net():
        return tn.MLPConditioner(hidden_units=(4,), zero_init_output=False)

    inner = tfb.Chain([tn.AffineCoupling(net(), mask=masks.checkerboard([2, 2, 2]),
                                         name="inner")])
    flow = tfb.Chain([tfb.Invert(tn.AdditiveCoupling(net(),
                                                     mask=masks.checkerboard([2, 2, 4]),
                                                     name="outer")),
                      tn.FactorOut(inner, num_kept=2, name="fo")])
    route = tn.graph.route_condition(flow, {"context": "c"})
    # tfb.Chain routes by step name: the Invert's, then FactorOut's inner Chain by its steps'
    assert route == {"invert_outer": {"context": "c"}, "fo": {"inner": {"context": "c"}}}
    x, c = _x(3, 2, 2, 4), _x(3, 2, seed=3)
    with_c = tn.graph.route_condition(flow, {"context": c})
    testing.assert_round_trip(flow, x, condition=with_c)
    y0 = flow.forward(x, **tn.graph.route_condition(flow, {"context": tf.zeros([3, 2])}))
    assert np.max(np.abs(flow.forward(x, **with_c) - y0)) > 1e-4  # the context is used


def test_route_condition_refuses_sibling_steps_sharing_a_name():
    steps = [tn.AffineCoupling(tn.MLPConditioner(hidden_units=(4,)), num_masked=1, name="s"),
             tfb.Shift(1.0, name="s")]
    with pytest.raises(ValueError, match="named 's'.*unique names"):
        tn.graph.route_condition(tfb.Chain(steps), {"context": 1})


# ---------------------------------------------------------------------------------------------
# FlowModel and tfb.RealNVP callables around Keras 3 layers.
# ---------------------------------------------------------------------------------------------
def _net():
    return keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])


def test_real_nvp_lambda_around_a_keras_layer_is_owned_and_trained():
    net = _net()
    nvp = tfb.RealNVP(num_masked=1,
                      shift_and_log_scale_fn=lambda x, units: tf.split(net(x), 2, axis=-1))
    model = tn.FlowModel(tn.priors.standard_normal([2]), [tfb.Permute([1, 0]), nvp])
    assert {v.path for v in net.trainable_variables} <= {
        v.path for v in model.trainable_variables}
    before = [w.numpy().copy() for w in net.trainable_variables]
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(0).standard_normal([128, 2]).astype("float32") * [1.0, 0.2]
    model.fit(x, batch_size=32, epochs=2, verbose=0)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, net.trainable_variables))


class _Hidden:
    """A callable object: FlowModel does not search its attributes."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, units):
        return tf.split(self.net(x), 2, axis=-1)


def test_real_nvp_callable_hiding_a_keras_layer_is_refused_naming_the_step():
    nvp = tfb.RealNVP(num_masked=1, shift_and_log_scale_fn=_Hidden(_net()))
    with pytest.raises(ValueError, match=r"`steps\[1\]` \(RealNVP\).*trainable variable.*"
                                         r"Keras cannot see"):
        tn.FlowModel(tn.priors.standard_normal([2]), [tfb.Permute([1, 0]), nvp])


def test_bijector_fn_closure_over_a_keras_layer_is_owned():
    net = tn.MLPConditioner(2, (4,))
    step = tn.Coupling(lambda x1: tfb.Shift(net(x1)), num_masked=2)
    model = tn.FlowModel(tn.priors.standard_normal([4]), [step])
    owned = {id(v) for v in model.trainable_variables}
    assert net.trainable_variables and all(id(v) in owned for v in net.trainable_variables)
