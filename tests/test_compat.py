"""The TFP/Keras internals `tfp_nice._internal.compat` relies on, pinned to the installed
versions: if an upgrade moves one of them, these tests say which."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_nice as tn
from tfp_nice._internal import compat

tfb = tfp.bijectors
tfd = tfp.distributions


class _Counting(tfb.Bijector):
    """A bijector that counts its ildj calls and stores its ildj in the cache from `_inverse`."""

    calls = 0

    def __init__(self):
        super().__init__(forward_min_event_ndims=1, is_constant_jacobian=False, name="counting")

    def _forward(self, x):
        return 2.0 * x

    def _inverse(self, y):
        compat.store_inverse_log_det(self, y, -tf.reduce_sum(tf.ones_like(y), -1) * np.log(2.0))
        return y / 2.0

    def _inverse_log_det_jacobian(self, y):
        type(self).calls += 1
        return -tf.reduce_sum(tf.ones_like(y), -1) * np.log(2.0)


def test_the_ldj_stored_by_the_inverse_is_what_log_prob_uses():
    b = _Counting()
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [3]), b)
    _Counting.calls = 0
    lp = dist.log_prob(tf.ones([2, 3]))
    assert _Counting.calls == 0  # served from the cache
    want = tfd.Normal(0.0, 1.0).log_prob(0.5) * 3 - 3 * np.log(2.0)
    np.testing.assert_allclose(lp, [want, want], rtol=1e-6)


def test_forward_ldj_store_is_read_by_forward_log_det_jacobian():
    b = tfb.Scale(3.0)
    x = tf.constant([1.0, 2.0])
    compat.store_forward_log_det(b, x, tf.constant(7.0))
    assert float(b.forward_log_det_jacobian(x, event_ndims=0)) == 7.0


def test_chain_and_invert_of_non_composite_bijectors_are_recognised():
    coupling = tn.AffineCoupling(tn.MLPConditioner(2, (4,)), num_masked=1)
    chain = tfb.Chain([coupling, tfb.Shift(1.0)])
    assert type(chain).__name__ == "_Chain"  # TFP builds its private class here
    assert compat.is_chain(chain) and compat.is_chain(tfb.Chain([tfb.Shift(1.0)]))
    assert compat.is_invert(tfb.Invert(coupling)) and not compat.is_invert(chain)
    assert compat.public_tfp_name(tfb, type(chain)) == "Chain"
    assert compat.public_tfp_name(tfb, tfb.Shift) == "Shift"
    assert compat.public_tfp_name(tfb, tn.AffineCoupling) is None


def test_instance_state_hides_tfp_bookkeeping_and_shows_built_state():
    bn = tfb.BatchNormalization()
    names = dict(compat.instance_state(bn))
    assert "batchnorm" in names and isinstance(names["batchnorm"], tf_keras.layers.Layer)
    assert not {"cache", "parameters", "graph_parents"} & set(names)


def test_tf_keras_layers_and_templates_are_detected():
    assert compat.is_tf_keras_layer(tf_keras.layers.Dense(2))
    assert compat.is_tf_keras_layer(tfb.AutoregressiveNetwork(params=2, event_shape=[2]))
    assert not compat.is_tf_keras_layer(keras.layers.Dense(2))
    template = tfb.real_nvp_default_template(hidden_layers=[4])
    assert compat.is_template(template) and not compat.is_template(lambda x: x)


def test_the_tf_variable_behind_a_keras_variable():
    v = keras.Variable(np.zeros(2, "float32"))
    raw = compat.tf_variable(v)
    assert isinstance(raw, tf.Variable)
    raw.assign([1.0, 2.0])
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    assert compat.tf_variable(raw) is raw


def test_untracked_holders_are_invisible_to_keras():
    class M(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.held = compat.Untracked(layer=keras.layers.Dense(3))
            self.held.layer.build((None, 2))

    assert M().weights == []


# --- XLA scheduling ----------------------------------------------------------------------------
def _op_types(fn, *args) -> set[str]:
    graph = fn.get_concrete_function(*args).graph
    types = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:  # nested and gradient functions
        types |= {node.op for node in f.node_def}
    return types


def test_in_xla_context_is_true_only_while_tracing_for_xla_gradients_included():
    seen = {}

    @tf.custom_gradient
    def spy(x):
        def grad(dy):
            seen["grad"] = compat.in_xla_context()
            return dy
        return tf.identity(x), grad

    def step(x):
        seen["forward"] = compat.in_xla_context()
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = spy(x)
        return tape.gradient(y, x)

    x = tf.ones([2])
    assert compat.in_xla_context() is False  # eager
    tf.function(step)(x)
    assert seen == {"forward": False, "grad": False}
    tf.function(step, jit_compile=True)(x)
    assert seen == {"forward": True, "grad": True}

    @tf.function  # a jit function nested in a plain one, as Keras' fit(jit_compile=True) runs
    def outer(x):
        inner = tf.function(lambda x: tf.constant(compat.in_xla_context()), jit_compile=True)
        return inner(x), tf.constant(compat.in_xla_context())

    assert [bool(v) for v in outer(x)] == [True, False]


def test_ordered_after_keeps_the_value_and_orders_with_a_barrier_under_xla():
    def fn(t, dep):
        return compat.ordered_after(t, [dep, None]) * 2.0

    t, dep = tf.constant([1.0, -2.0]), tf.constant([3.0])
    for jit in (False, True):
        np.testing.assert_array_equal(tf.function(fn, jit_compile=jit)(t, dep), [2.0, -4.0])
    np.testing.assert_array_equal(fn(t, dep), [2.0, -4.0])  # eager
    assert "XlaOptimizationBarrier" in _op_types(tf.function(fn, jit_compile=True), t, dep)
    plain = tf.function(fn).get_concrete_function(t, dep).graph
    assert not any(op.type == "XlaOptimizationBarrier" for op in plain.get_operations())
    (ident,) = [op for op in plain.get_operations() if op.type == "Identity"
                and op.control_inputs]
    assert [op.name for op in ident.control_inputs] == ["dep"]
    assert compat.ordered_after(t, [None]) is t


def test_ordered_after_barrier_passes_gradients_through_under_xla():
    @tf.function(jit_compile=True)
    def grads(t, dep):
        with tf.GradientTape() as tape:
            tape.watch([t, dep])
            y = tf.reduce_sum(compat.ordered_after(t, [dep]) * [1.0, 3.0])
        return tape.gradient(y, [t, dep])

    g_t, g_dep = grads(tf.constant([1.0, 2.0]), tf.constant([5.0]))
    np.testing.assert_array_equal(g_t, [1.0, 3.0])
    assert g_dep is None or np.all(np.asarray(g_dep) == 0)


def test_nested_layers_finds_every_layer_inside_once():
    net = tn.MLPConditioner(2, (4, 4))
    model = tn.FlowModel(tn.priors.standard_normal([2]),
                         [tn.AffineCoupling(net, num_masked=1)])
    names = sorted(type(layer).__name__ for layer in compat.nested_layers(model))
    assert names == ["Dense", "Dense", "Dense", "MLPConditioner", "TanhScale"]
