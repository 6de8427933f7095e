"""_math: the equations and scale stabilisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfp_nice import _math


def test_additive_and_affine_inverses_undo_forwards():
    x2 = tf.constant([[0.3, -1.2]], tf.float64)
    shift = tf.constant([[1.0, 2.0]], tf.float64)
    log_scale = tf.constant([[0.5, -0.25]], tf.float64)
    np.testing.assert_allclose(_math.additive_inverse(_math.additive_forward(x2, shift), shift), x2)
    y2, fldj = _math.affine_forward(x2, shift, log_scale)
    np.testing.assert_allclose(y2, x2 * np.exp(log_scale) + shift)
    back, ildj = _math.affine_inverse(y2, shift, log_scale)
    np.testing.assert_allclose(back, x2, rtol=1e-14)
    np.testing.assert_allclose(fldj, [0.25])
    np.testing.assert_allclose(ildj, [-0.25])


def test_stabilisers_map_zero_to_identity_except_glow_sigmoid():
    h = tf.zeros([3], tf.float32)
    for name in ("exp", "soft_clamp"):
        np.testing.assert_array_equal(_math.stabilise_log_scale(h, name), 0.0)
    np.testing.assert_array_equal(_math.stabilise_log_scale(h, "tanh", tanh_scale=2.0), 0.0)
    np.testing.assert_allclose(_math.stabilise_log_scale(h, "sigmoid"),
                               math.log(1 / (1 + math.exp(-2))), rtol=1e-6)


def test_bounded_stabilisers_stay_bounded_for_huge_inputs():
    h = tf.constant([-1e6, -30.0, 30.0, 1e6], tf.float32)
    np.testing.assert_array_less(np.abs(_math.stabilise_log_scale(h, "soft_clamp", clamp=2.0)),
                                 2.0 + 1e-6)
    np.testing.assert_array_less(np.abs(_math.stabilise_log_scale(h, "tanh", tanh_scale=1.5)),
                                 1.5 + 1e-6)
    sig = _math.stabilise_log_scale(h, "sigmoid").numpy()
    assert np.all(sig <= 0) and np.all(np.isfinite(sig))


def test_soft_clamp_has_unit_slope_at_zero():
    h = tf.constant(1e-4, tf.float64)
    np.testing.assert_allclose(_math.stabilise_log_scale(h, "soft_clamp", clamp=3.0), 1e-4,
                               rtol=1e-8)


def test_unknown_stabiliser_is_refused():
    with pytest.raises(ValueError, match=r"`scale` must be one of .*Received: scale='softplus'"):
        _math.stabilise_log_scale(tf.zeros([1]), "softplus")
