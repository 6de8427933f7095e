"""The equations of NICE, RealNVP and RevNet couplings as pure tensor functions.

Everything here is stateless: it takes tensors (and, for the learned ``tanh``
stabiliser, the learned scale as a tensor) and returns tensors. Bijectors and
Keras layers call these functions; no other module writes the algebra again.

Notation (TFP's direction: ``forward`` maps latent -> data):

* additive coupling (NICE, RevNet):  ``y2 = x2 + m(x1)``,   ``x2 = y2 - m(y1)``,
  log-det ``0``;
* affine coupling (RealNVP):         ``y2 = x2 * exp(s) + t``, ``x2 = (y2 - t) * exp(-s)``,
  log-det ``sum(s)`` over the transformed units;
* diagonal scaling (NICE):           ``y = x * exp(s)``, log-det ``sum(s)``;
* per-channel affine (ActNorm, batch norm): ``y = x * exp(s_c) + t_c`` over ``[H, W, C]``,
  log-det ``H * W * sum_c(s_c)``;
* squeeze (RealNVP): ``[H, W, C] -> [H/2, W/2, 4C]``, a permutation (log-det ``0``);
* invertible 1x1 convolution (Glow): ``y = x W`` over the channels, ``W = P L (U + diag(s))``,
  log-det ``H * W * sum(log|s|)``.
* rational-quadratic spline (neural spline flows [5]): a monotone spline with ``K`` bins on
  ``[-B, B]`` per unit, the identity outside, log-det ``sum(log dy/dx)`` over the units.

References:
  [1] Dinh, Krueger, Bengio. NICE: Non-linear Independent Components Estimation. arXiv:1410.8516.
  [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803.
  [3] Gomez, Ren, Urtasun, Grosse. The Reversible Residual Network. arXiv:1707.04585.
  [4] Kingma, Dhariwal. Glow. arXiv:1807.03039 (the ``sigmoid(h + 2)`` scale).
  [5] Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. arXiv:1906.04032.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = [
    "STABILISERS",
    "additive_forward",
    "broadcast_like",
    "additive_inverse",
    "affine_forward",
    "affine_inverse",
    "diagonal_scale_forward",
    "diagonal_scale_inverse",
    "diagonal_scale_log_det",
    "flatten_event",
    "leading_shape",
    "reshape_leading",
    "reshape_to",
    "unflatten_event",
    "split_flat",
    "merge_flat",
    "stabilise_log_scale",
    "check_stabiliser",
    "squeeze",
    "unsqueeze",
    "squeeze_channel_permutation",
    "channel_affine_forward",
    "channel_affine_inverse",
    "channel_affine_log_det",
    "batch_norm_shift_and_log_scale",
    "moments",
    "lu_weight",
    "lu_inverse_weight",
    "channel_matmul",
    "rational_quadratic_spline",
    "spline_parameters",
]

#: Names accepted by :func:`stabilise_log_scale`.
STABILISERS = ("exp", "tanh", "sigmoid", "soft_clamp")


# --------------------------------------------------------------------------------------------
# Shapes: flatten the event part of a tensor, split/merge it by a static index plan.
# --------------------------------------------------------------------------------------------
def leading_shape(x: tf.Tensor, event_ndims: int):
    """The batch part of ``x``'s shape: a list when static, else a dynamic shape tensor."""
    batch = x.shape[: x.shape.rank - event_ndims]
    if batch.is_fully_defined():
        return batch.as_list()
    return tf.shape(x)[: tf.rank(x) - event_ndims]


def reshape_leading(x: tf.Tensor, lead, tail_ndims: int) -> tf.Tensor:
    """Reshapes ``x`` (``[N, *tail]`` or any shape ending in the ``tail_ndims`` static axes
    ``tail``) to ``lead + tail``; ``lead`` comes from :func:`leading_shape`."""
    tail = x.shape[x.shape.rank - tail_ndims :].as_list() if tail_ndims else []
    return reshape_to(x, lead, tail)


def flatten_event(x: tf.Tensor, event_ndims: int) -> tf.Tensor:
    """Reshapes ``x`` from ``batch + event_shape`` to ``batch + [prod(event_shape)]``."""
    if event_ndims == 1:
        return x
    size = x.shape[x.shape.rank - event_ndims :].num_elements()
    return reshape_to(x, leading_shape(x, event_ndims), [size])


def unflatten_event(x: tf.Tensor, event_shape: Sequence[int]) -> tf.Tensor:
    """Inverse of :func:`flatten_event`: ``batch + [D]`` back to ``batch + event_shape``."""
    event_shape = list(event_shape)
    if len(event_shape) == 1:
        return x
    return reshape_to(x, leading_shape(x, 1), event_shape)


def reshape_to(x: tf.Tensor, lead, tail: list) -> tf.Tensor:
    """Reshapes ``x`` to ``lead + tail`` (``lead`` from :func:`leading_shape`)."""
    if isinstance(lead, list):
        return tf.reshape(x, lead + tail)
    return tf.reshape(x, tf.concat([lead, tf.constant(tail, lead.dtype)], axis=0))


def split_flat(x: tf.Tensor, index1, index2) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits the last axis of ``x`` into ``(x1, x2)``.

    ``index1``/``index2`` are either ``slice`` objects (contiguous halves, the
    fast path) or integer index arrays (gathers).
    """
    if isinstance(index1, slice):
        return x[..., index1], x[..., index2]
    return tf.gather(x, index1, axis=-1), tf.gather(x, index2, axis=-1)


def merge_flat(x1: tf.Tensor, x2: tf.Tensor, first_is_x1: bool, inverse_permutation) -> tf.Tensor:
    """Inverse of :func:`split_flat`.

    ``first_is_x1`` says which part comes first on the contiguous path;
    ``inverse_permutation`` (or ``None`` on the contiguous path) undoes the gather.
    """
    if inverse_permutation is None:
        parts = [x1, x2] if first_is_x1 else [x2, x1]
        return tf.concat(parts, axis=-1)
    return tf.gather(tf.concat([x1, x2], axis=-1), inverse_permutation, axis=-1)


# --------------------------------------------------------------------------------------------
# Couplings.
# --------------------------------------------------------------------------------------------
def additive_forward(x2: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """NICE / RevNet additive coupling, transformed half: ``y2 = x2 + m(x1)``."""
    return x2 + shift


def additive_inverse(y2: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`additive_forward`: ``x2 = y2 - m(y1)``."""
    return y2 - shift


def broadcast_like(t: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """``t`` broadcast against ``x`` (``t`` itself when the static shapes already agree)."""
    if t.shape.rank is not None and t.shape.as_list() == x.shape.as_list():
        return t
    return tf.broadcast_to(t, tf.broadcast_dynamic_shape(tf.shape(t), tf.shape(x)))


def affine_forward(
    x2: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """RealNVP affine coupling, transformed half.

    ``y2 = x2 * exp(s) + t``; returns ``(y2, fldj)`` with ``fldj = sum(s)`` over
    the last axis (the flattened transformed units). ``t`` and ``s`` broadcast against
    ``x2`` (a ``[1]``-shaped ``s`` counts once per unit in the log-det).
    """
    log_scale = broadcast_like(log_scale, x2)
    y2 = x2 * tf.exp(log_scale) + shift
    return y2, tf.reduce_sum(log_scale, axis=-1)


def affine_inverse(
    y2: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inverse of :func:`affine_forward`: ``x2 = (y2 - t) * exp(-s)``; returns ``(x2, ildj)``."""
    log_scale = broadcast_like(log_scale, y2)
    x2 = (y2 - shift) * tf.exp(-log_scale)
    return x2, -tf.reduce_sum(log_scale, axis=-1)


def diagonal_scale_forward(
    x: tf.Tensor, log_scale: tf.Tensor, event_ndims: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """NICE's final scaling ``y = x * exp(s)``; returns ``(y, fldj)``, ``fldj = sum(s)``.

    ``log_scale`` has the event shape; the log-det is a scalar (it does not
    depend on ``x``) and broadcasts against any batch shape.
    """
    return x * tf.exp(log_scale), diagonal_scale_log_det(log_scale, event_ndims)


def diagonal_scale_log_det(log_scale: tf.Tensor, event_ndims: int) -> tf.Tensor:
    """``log|det d(x * exp(s))/dx| = sum(s)`` over the event axes (a scalar)."""
    return tf.reduce_sum(log_scale, axis=list(range(-event_ndims, 0)))


def diagonal_scale_inverse(
    y: tf.Tensor, log_scale: tf.Tensor, event_ndims: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inverse of :func:`diagonal_scale_forward`: ``x = y * exp(-s)``; returns ``(x, ildj)``."""
    return y * tf.exp(-log_scale), -diagonal_scale_log_det(log_scale, event_ndims)


# --------------------------------------------------------------------------------------------
# Scale stabilisers: raw network output h -> log-scale s.
# --------------------------------------------------------------------------------------------
def check_stabiliser(name: str) -> str:
    """Returns ``name`` if it is a known stabiliser, else raises a ``ValueError``."""
    if name not in STABILISERS:
        raise ValueError(
            f"`scale` must be one of {list(STABILISERS)}. Received: scale={name!r}"
        )
    return name


def stabilise_log_scale(
    h: tf.Tensor,
    name: str,
    tanh_scale: tf.Tensor | None = None,
    clamp: float = 2.0,
) -> tf.Tensor:
    """Maps a conditioner's raw output ``h`` to a log-scale ``s``.

    * ``"exp"``: ``s = h`` (the plain RealNVP equation; can explode).
    * ``"tanh"``: ``s = c * tanh(h)`` with a learned per-unit ``c`` (RealNVP's code).
    * ``"sigmoid"``: ``s = log(sigmoid(h + 2))`` (Glow): scale in ``(0, 1)``,
      ``0.88`` at ``h = 0``, so a zero-initialised coupling starts as a mild contraction.
    * ``"soft_clamp"``: ``s = (2c/pi) * atan(pi h / (2c))`` with ``c = clamp``: ``|s| < c``,
      slope 1 at 0 (like FrEIA's atan clamp, rescaled so small ``h`` pass unchanged).

    Args:
      h: raw conditioner output.
      name: one of :data:`STABILISERS`.
      tanh_scale: the learned ``c`` for ``"tanh"``; broadcast against ``h``.
      clamp: the bound ``c`` for ``"soft_clamp"``.

    Returns:
      The log-scale ``s`` with the shape and dtype of ``h``.
    """
    check_stabiliser(name)
    if name == "exp":
        return h
    if name == "tanh":
        if tanh_scale is None:
            raise ValueError("`tanh_scale` is required for scale='tanh'. Received: None")
        return tf.cast(tanh_scale, h.dtype) * tf.tanh(h)
    if name == "sigmoid":
        return tf.math.log_sigmoid(h + tf.constant(2.0, h.dtype))
    c = tf.constant(clamp, h.dtype)
    return (2.0 / math.pi) * c * tf.atan((math.pi / 2.0) * h / c)


# --------------------------------------------------------------------------------------------
# Squeeze: space -> channels (RealNVP [2] §3.6, Fig. 3), a pure permutation of the units.
# --------------------------------------------------------------------------------------------
#: ``(dh, dw)`` order of the 2x2 block positions in RealNVP's ``squeeze_2x2_ordered``: the two
#: positions of one checkerboard colour ((0, 0), (1, 1)) first, then the other ((0, 1), (1, 0)).
_CHECKERBOARD_POSITIONS = ((0, 0), (1, 1), (0, 1), (1, 0))


def squeeze_channel_permutation(channels: int, factor: int, channel_order: str):
    """Gather indices from the ``"channel_major"`` squeeze order to ``channel_order``.

    ``"channel_major"``: output channel ``c * f * f + dh * f + dw`` holds input channel ``c`` at
    block offset ``(dh, dw)`` (RealNVP's ``squeeze_2x2``, Glow's ``squeeze2d``); returns ``None``.
    ``"checkerboard"`` (``factor=2``): RealNVP's ``squeeze_2x2_ordered``: the ``C`` channels of
    offset ``(0, 0)``, then ``(1, 1)``, ``(0, 1)``, ``(1, 0)``, so the first ``2C`` output
    channels are one colour of the input's checkerboard and the last ``2C`` the other.
    """
    if channel_order == "channel_major":
        return None
    f = factor
    return np.array(
        [c * f * f + dh * f + dw for dh, dw in _CHECKERBOARD_POSITIONS for c in range(channels)],
        dtype=np.int32,
    )


def squeeze(x: tf.Tensor, factor: int, permutation=None) -> tf.Tensor:
    """``batch + [H, W, C] -> batch + [H/f, W/f, f*f*C]`` (reshape, transpose, optional gather)."""
    h, w, c = (int(d) for d in x.shape[-3:])
    f = int(factor)
    lead = leading_shape(x, 3)
    y = tf.reshape(x, [-1, h // f, f, w // f, f, c])
    y = tf.transpose(y, [0, 1, 3, 5, 2, 4])
    y = tf.reshape(y, [-1, h // f, w // f, c * f * f])
    if permutation is not None:
        y = tf.gather(y, permutation, axis=-1)
    return reshape_to(y, lead, [h // f, w // f, c * f * f])


def unsqueeze(y: tf.Tensor, factor: int, inverse_permutation=None) -> tf.Tensor:
    """Inverse of :func:`squeeze`: ``batch + [H, W, f*f*C] -> batch + [H*f, W*f, C]``."""
    h, w, cf = (int(d) for d in y.shape[-3:])
    f = int(factor)
    c = cf // (f * f)
    lead = leading_shape(y, 3)
    x = tf.reshape(y, [-1, h, w, cf])
    if inverse_permutation is not None:
        x = tf.gather(x, inverse_permutation, axis=-1)
    x = tf.reshape(x, [-1, h, w, c, f, f])
    x = tf.transpose(x, [0, 1, 4, 2, 5, 3])
    return reshape_to(x, lead, [h * f, w * f, c])


# --------------------------------------------------------------------------------------------
# Per-channel affine maps: ActNorm (Glow [4]) and batch normalisation (RealNVP [2] §3.7).
# --------------------------------------------------------------------------------------------
def channel_affine_log_det(log_scale: tf.Tensor, event_shape: Sequence[int]) -> tf.Tensor:
    """``log|det|`` of ``y = x * exp(s_c) + t_c`` over an event ``[..., C]``: ``prod * sum(s)``.

    For an image event ``[H, W, C]`` this is ``H * W * sum_c s_c``; a scalar, or a batch of
    scalars if ``log_scale`` has batch dimensions (``[..., C]``).
    """
    positions = 1
    for d in list(event_shape)[:-1]:
        positions *= int(d)
    return positions * tf.reduce_sum(log_scale, axis=-1)


def channel_affine_forward(
    x: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tf.Tensor:
    """``y = x * exp(s_c) + t_c``, broadcasting ``[C]`` parameters over the last axis."""
    return x * tf.exp(log_scale) + shift


def channel_affine_inverse(
    y: tf.Tensor, shift: tf.Tensor, log_scale: tf.Tensor
) -> tf.Tensor:
    """Inverse of :func:`channel_affine_forward`: ``x = (y - t_c) * exp(-s_c)``."""
    return (y - shift) * tf.exp(-log_scale)


def batch_norm_shift_and_log_scale(
    mean: tf.Tensor,
    variance: tf.Tensor,
    epsilon: float,
    log_gamma: tf.Tensor | None = None,
    beta: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch norm as a per-channel affine map in TFP's direction (latent -> data).

    Normalising (data ``x`` -> latent ``z``) is ``z = (x - mu) / sqrt(var + eps) * gamma + beta``;
    so ``x = z * exp(s) + t`` with ``s = log(var + eps) / 2 - log(gamma)`` and
    ``t = mu - beta * exp(s)``. Returns ``(t, s)`` for :func:`channel_affine_forward`.
    """
    log_scale = 0.5 * tf.math.log(variance + tf.cast(epsilon, variance.dtype))
    if log_gamma is not None:
        log_scale = log_scale - log_gamma
    shift = mean if beta is None else mean - beta * tf.exp(log_scale)
    return shift, log_scale


def moments(x: tf.Tensor, synchronized: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and (biased) variance of ``x`` over every axis but the last.

    With ``synchronized=True`` inside a ``tf.distribute`` replica context with more than one
    replica, the sums are all-reduced first, so every replica gets the statistics of the
    global batch (synchronised batch norm); elsewhere it is the local computation.
    """
    axes = list(range(x.shape.rank - 1))
    ctx = tf.distribute.get_replica_context() if synchronized else None
    if ctx is None or ctx.num_replicas_in_sync == 1:
        mean = tf.reduce_mean(x, axis=axes)
        variance = tf.reduce_mean(tf.square(x - mean), axis=axes)
        return mean, variance
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
    total, total_sq, count = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.reduce_sum(x, axis=axes), tf.reduce_sum(tf.square(x), axis=axes), count],
    )
    mean = total / count
    variance = tf.maximum(total_sq / count - tf.square(mean), tf.zeros([], x.dtype))
    return mean, variance


# --------------------------------------------------------------------------------------------
# Invertible 1x1 convolution (Glow [4] §3.2): an LU-factored linear map over the channels.
# --------------------------------------------------------------------------------------------
def _lu_factors(lower: tf.Tensor, upper: tf.Tensor, sign_s: tf.Tensor, log_s: tf.Tensor):
    """``L = tril(lower, -1) + I`` and ``U' = triu(upper, 1) + diag(sign_s * exp(log_s))``.

    ``lower``/``upper`` may be ``None`` (one channel: ``L = I``, ``U' = s``).
    """
    c = int(log_s.shape[-1])
    diag = tf.linalg.diag(sign_s * tf.exp(log_s))
    if lower is None:
        return tf.eye(c, dtype=log_s.dtype), diag
    eye = tf.eye(c, dtype=lower.dtype)
    tril = tf.linalg.band_part(lower, -1, 0) - tf.linalg.band_part(lower, 0, 0)
    triu = tf.linalg.band_part(upper, 0, -1) - tf.linalg.band_part(upper, 0, 0)
    return tril + eye, triu + diag


def lu_weight(permutation: tf.Tensor, lower, upper, sign_s: tf.Tensor,
              log_s: tf.Tensor) -> tf.Tensor:
    """Glow's LU-decomposed weight ``W = P L (U + diag(sign_s * exp(log_s)))``, ``[C, C]``.

    ``P`` is a permutation matrix, ``L`` unit lower triangular (the strictly lower part of
    ``lower``), ``U`` strictly upper triangular (of ``upper``), so
    ``log|det W| = sum(log_s)``.
    """
    lo, up = _lu_factors(lower, upper, sign_s, log_s)
    return tf.matmul(permutation, tf.matmul(lo, up))


def lu_inverse_weight(permutation: tf.Tensor, lower, upper, sign_s: tf.Tensor,
                      log_s: tf.Tensor) -> tf.Tensor:
    """``W^-1 = U'^-1 L^-1 P^T`` from two triangular solves (no general matrix inverse)."""
    lo, up = _lu_factors(lower, upper, sign_s, log_s)
    eye = tf.eye(int(log_s.shape[-1]), dtype=log_s.dtype)
    lo_inv = tf.linalg.triangular_solve(lo, eye, lower=True)
    up_inv = tf.linalg.triangular_solve(up, eye, lower=False)
    return tf.matmul(up_inv, tf.matmul(lo_inv, permutation, transpose_b=True))


def channel_matmul(x: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """``y[..., j] = sum_i x[..., i] W[i, j]``: a 1x1 convolution over the last axis."""
    c = int(weight.shape[0])
    y = tf.matmul(tf.reshape(x, [-1, c]), weight)
    return reshape_to(y, leading_shape(x, 1), [int(weight.shape[1])])


# Rational-quadratic splines (Neural Spline Flows [5]) with identity tails.
# --------------------------------------------------------------------------------------------
def spline_parameters(
    raw: tf.Tensor, num_bins: int, bound: float, min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3, min_slope: float = 1e-3,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Raw conditioner outputs ``[..., 3K - 1]`` -> the spline's bins and interior slopes.

    With ``K = num_bins`` and ``raw = [w (K), h (K), d (K - 1)]``::

      widths  = m_w + (2B - K m_w) * softmax(w)       (sum to 2B: the interval [-B, B])
      heights = m_h + (2B - K m_h) * softmax(h)
      slopes  = m_d + softplus(d + log(exp(1 - m_d) - 1))

    The shift inside ``softplus`` makes ``raw = 0`` give equal bins and unit slopes: the
    identity, so a zero-initialised conditioner starts a spline coupling as the identity
    (the boundary slopes are 1, matching the identity tails).

    Returns:
      ``(widths [..., K], heights [..., K], slopes [..., K - 1])``.
    """
    k = int(num_bins)
    w, h, d = raw[..., :k], raw[..., k : 2 * k], raw[..., 2 * k :]
    span = tf.constant(2.0 * bound, raw.dtype)

    def bins(u, minimum):
        m = tf.constant(minimum, raw.dtype)
        return m + (span - k * m) * tf.nn.softmax(u, axis=-1)

    m_d = tf.constant(min_slope, raw.dtype)
    offset = tf.constant(math.log(math.expm1(1.0 - min_slope)), raw.dtype)
    return bins(w, min_bin_width), bins(h, min_bin_height), m_d + tf.nn.softplus(d + offset)


def rational_quadratic_spline(
    x: tf.Tensor, widths: tf.Tensor, heights: tf.Tensor, slopes: tf.Tensor, bound: float,
    inverse: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``tfb.RationalQuadraticSpline`` on ``[-B, B]``, the identity outside; ``(y, log-det)``.

    Each unit of ``x [..., d]`` has its own spline (``widths``/``heights [..., d, K]``,
    ``slopes [..., d, K - 1]``). Inputs are clipped to ``[-B, B]`` *before* the spline math and
    the identity is selected outside, so out-of-bound values (however large) never produce
    NaN or Inf in the unused branch, in the values or in their gradients (the failure of
    nflows #62, flowjax #240, bayesflow #759). ``inverse=True`` applies the inverse spline.

    Returns:
      ``(y, ldj)``: the transformed ``x`` and ``sum(log|dy/dx|)`` over the last axis (for
      ``inverse=True``, of the inverse map).
    """
    b = tf.constant(bound, x.dtype)
    spline = tfp.bijectors.RationalQuadraticSpline(widths, heights, slopes, range_min=-b)
    inside = (x > -b) & (x < b)
    clipped = tf.clip_by_value(x, -b, b)
    if inverse:
        y, ldj = spline.inverse(clipped), spline.inverse_log_det_jacobian(clipped, event_ndims=0)
    else:
        y, ldj = spline.forward(clipped), spline.forward_log_det_jacobian(clipped, event_ndims=0)
    y = tf.where(inside, y, x)
    ldj = tf.where(inside, ldj, tf.zeros([], x.dtype))
    return y, tf.reduce_sum(ldj, axis=-1)
