"""Preprocessing as bijector steps (so likelihoods stay exact), and bits/dim.

Data space conventions. Integer data with ``L`` levels (digits: ``L = 17``; 8-bit images:
``L = 256``) are *uniformly dequantized* by the data pipeline (:mod:`tfp_nice.data`):
``x = k + u``, ``u ~ U[0, 1)``, so the model's density lives on ``[0, L)``. Then
``-log2 P(k) <= -log2 p(x)`` for the discrete data (Theis et al. 2016), and::

  bits/dim = NLL(x) / (D · ln 2)

where ``NLL`` counts every log-det term, including these preprocessing steps. With data
rescaled to ``[0, 1)`` this is the familiar ``(NLL_[0,1] + D·ln L) / (D·ln 2)``.

Steps are listed in ``tfb.Chain`` order (first = nearest the data); each step's *forward*
maps towards the data, so ``log_prob`` applies their inverses:

* :func:`rescale` — ``[0, L) -> [0, 1)`` (NICE's ``(255 x + u) / 256`` for ``L = 256``);
  log-det ``-D ln L`` on the way in;
* :func:`logit` — RealNVP's ``x -> logit(α + (1 - 2α) x)`` with its log-det.

Held-out numbers use a *deterministic* dequantization (:func:`dequantize`): the noise of a
row is a fixed function of the row's values and a seed, so the same image always gets the
same ``u``, whichever batch or process scores it. ``training.evaluate_nll`` (through
``data.as_dataset(training=False)``) and the served ``log_prob`` of :mod:`tfp_nice.export`
both call it with :data:`DEQUANTIZATION_SEED`, so the served bits/dim of a test split equals
``metrics.json``'s ``test_bits_per_dim``.

Example:
  >>> import tensorflow_probability as tfp
  >>> chain = tfp.bijectors.Chain(rescale(17.0) + logit(0.05))
  >>> round(float(chain.inverse(8.5)), 4)   # the middle of the range maps to 0
  0.0
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfb = tfp.bijectors

__all__ = ["DEQUANTIZATION_SEED", "bits_per_dim", "dequantization_noise", "dequantize", "logit",
           "rescale"]

#: The seed of the held-out estimator (``data.as_dataset``'s default seed).
DEQUANTIZATION_SEED = 0


def rescale(scale: float, low: float = 0.0, dtype=np.float32) -> list:
    """Steps whose inverse maps ``[low, low + scale)`` to ``[0, 1)``: ``u = (x - low) / scale``."""
    scale = float(scale)
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"`scale` must be a positive finite float. Received: scale={scale!r}")
    dtype = tf.as_dtype(dtype).as_numpy_dtype
    steps = [tfb.Shift(dtype(low))] if low else []
    return steps + [tfb.Scale(dtype(scale))]


def logit(alpha: float = 0.05, dtype=np.float32) -> list:
    """Steps whose inverse is RealNVP's ``x -> logit(α + (1 - 2α) x)`` on ``x ∈ [0, 1]``.

    Forward (latent side -> data side): ``x = (sigmoid(h) - α) / (1 - 2α)``.
    RealNVP [2] §4.1 uses ``α = 0.05`` on CIFAR-10; MAF uses ``1e-6`` on MNIST.
    """
    alpha = float(alpha)
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"`alpha` must be in (0, 0.5). Received: alpha={alpha!r}")
    dtype = tf.as_dtype(dtype).as_numpy_dtype
    return [tfb.Scale(dtype(1.0 / (1.0 - 2.0 * alpha))), tfb.Shift(dtype(-alpha)), tfb.Sigmoid()]


def bits_per_dim(nll_nats, num_dims: int):
    """``NLL / (D · ln 2)``: nats per example -> bits per dimension (see the module docstring)."""
    if isinstance(nll_nats, (tf.Tensor, tf.Variable)):
        return nll_nats / (num_dims * math.log(2.0))
    return np.asarray(nll_nats, dtype=np.float64) / (num_dims * math.log(2.0))


# --- the deterministic dequantization estimator ------------------------------------------------
_MASK = 0xFFFFFFFF  # values are kept in [0, 2**32) inside int64, so no product overflows
_MIX = 0x45D9F3B  # the multiplier of a 32-bit integer hash with full avalanche
_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive integers


def _mix32(h: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer hash of ``h`` (int64 in ``[0, 2**32)``): xor-shift, multiply, twice."""
    bw = tf.bitwise
    for _ in range(2):
        h = bw.bitwise_and(bw.bitwise_xor(h, bw.right_shift(h, 16)) * _MIX, _MASK)
    return bw.bitwise_xor(h, bw.right_shift(h, 16))


def dequantization_noise(x, seed: int = DEQUANTIZATION_SEED, event_ndims: int = 1) -> tf.Tensor:
    """Noise ``u`` in ``[0, 1)`` with the shape of ``x``, a fixed function of each row and ``seed``.

    A *row* is one example: the last ``event_ndims`` axes of ``x``, whose values are integer
    levels. With ``k_j`` the row's values and ``j`` the flat position::

      p_j = h(j · φ)                       (φ = 2^32 / golden ratio, h a 32-bit integer hash)
      r   = h(h(Σ_j h(k_j xor p_j)) xor h(seed))           (the row's key)
      u_j = (h(h(r xor p_j)) >> 8) / 2^24                  (24 random bits: exact in float32)

    All arithmetic is int64 kept below ``2^32``, so the noise is the same on every platform
    and TensorFlow version; it depends on nothing but the row and the seed (not on the batch,
    the row's index, or the other rows).
    """
    x = tf.convert_to_tensor(x)
    shape = tf.shape(x)
    dims = tf.reduce_prod(shape[tf.size(shape) - event_ndims :])
    rows = tf.bitwise.bitwise_and(tf.cast(tf.reshape(x, [-1, dims]), tf.int64), _MASK)
    pos = _mix32(tf.bitwise.bitwise_and(tf.range(tf.cast(dims, tf.int64)) * _GOLDEN, _MASK))
    row_sum = tf.reduce_sum(_mix32(tf.bitwise.bitwise_xor(rows, pos)), axis=-1)
    seed_key = _mix32(tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK))
    key = _mix32(tf.bitwise.bitwise_xor(_mix32(tf.bitwise.bitwise_and(row_sum, _MASK)), seed_key))
    bits = _mix32(_mix32(tf.bitwise.bitwise_xor(key[:, None], pos[None, :])))
    u = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / 2**24)
    return tf.cast(tf.reshape(u, shape), x.dtype)


def dequantize(x, seed: int = DEQUANTIZATION_SEED, event_ndims: int = 1) -> tf.Tensor:
    """``x + u`` with ``u = dequantization_noise(x, seed, event_ndims)``, kept below ``x + 1``.

    The held-out estimator of ``-log2 P(k)`` (module docstring): ``NLL(k + u(k)) / (D ln 2)``
    is one fixed draw of the uniform-dequantization bound per example, the same in
    evaluation and in the serving export.

    Example:
      >>> y = dequantize([[0.0, 3.0], [0.0, 3.0]], event_ndims=1).numpy()
      >>> bool((y[0] == y[1]).all() and (y >= [0, 3]).all() and (y < [1, 4]).all())
      True
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    y = x + dequantization_noise(x, seed, event_ndims)
    # Rounding can turn x + u into x + 1 for u close to 1: clamp to the float below.
    return tf.minimum(y, tf.math.nextafter(x + 1.0, x))
