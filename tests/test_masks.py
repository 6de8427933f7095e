"""Masks: patterns, complements, split/merge round trips."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfp_nice import masks


def test_half_masks_like_tfb_realnvp():
    np.testing.assert_array_equal(masks.half(5, num_masked=2).pattern, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(masks.half(5, num_masked=-2).pattern, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(masks.half(5, fraction_masked=0.5).pattern, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(masks.half(5, fraction_masked=-0.5).pattern, [0, 0, 0, 1, 1])


def test_even_odd_checkerboard_and_channel_patterns():
    np.testing.assert_array_equal(masks.even_odd(5).pattern, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(masks.even_odd(5, "odd").pattern, [0, 1, 0, 1, 0])
    cb = masks.checkerboard([2, 3, 2]).pattern
    np.testing.assert_array_equal(cb[..., 0], [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(cb[..., 0], cb[..., 1])
    ch = masks.channel([2, 2, 4]).pattern
    np.testing.assert_array_equal(ch[1, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(masks.channel([2, 2, 4], "odd").pattern[0, 1], [0, 0, 1, 1])


@pytest.mark.parametrize("mask", [
    masks.half(6, num_masked=2), masks.half(6, num_masked=-4), masks.even_odd(7),
    masks.checkerboard([4, 4, 3], "odd"), masks.channel([2, 4, 6]),
], ids=repr)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_split_then_merge_is_identity_and_split_follows_the_pattern(mask, batch_shape):
    x = tf.reshape(tf.range(np.prod(batch_shape + mask.event_shape), dtype=tf.float32),
                   batch_shape + mask.event_shape)
    x1, x2 = mask.split(x)
    assert x1.shape == batch_shape + (mask.num_masked,)
    assert x2.shape == batch_shape + (mask.num_transformed,)
    np.testing.assert_array_equal(mask.merge(x1, x2), x)
    flat = np.reshape(x.numpy(), batch_shape + (-1,))
    np.testing.assert_array_equal(x1, flat[..., mask.pattern.reshape(-1)])
    np.testing.assert_array_equal(x2, flat[..., ~mask.pattern.reshape(-1)])


def test_complement_swaps_roles_and_config_round_trips():
    m = masks.checkerboard([4, 4, 1])
    c = m.complement()
    np.testing.assert_array_equal(c.pattern, ~m.pattern)
    assert (c.num_masked, c.num_transformed) == (m.num_transformed, m.num_masked)
    assert masks.Mask.from_config(m.get_config()) == m
    assert masks.as_mask(m.pattern.tolist()) == m


def test_contiguous_masks_use_slicing_and_others_gather():
    assert isinstance(masks.half(6, num_masked=2)._index1, slice)
    assert isinstance(masks.channel([2, 2, 4])._index1, np.ndarray)  # interleaved in memory
    assert isinstance(masks.even_odd(6)._index1, np.ndarray)
