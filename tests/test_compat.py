"""Pins the private TensorFlow details `tfp_nice._internal.compat` relies on (XLA scheduling)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_nice._internal import compat


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
