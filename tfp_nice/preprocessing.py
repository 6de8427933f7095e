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

__all__ = ["rescale", "logit", "bits_per_dim"]


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
