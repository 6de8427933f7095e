"""The equations of NICE, RealNVP and RevNet couplings as pure tensor functions.

One package, five modules: :mod:`.shapes` (flatten events, split/merge by an index plan),
:mod:`.couplings` (additive, affine, diagonal scale, the scale stabilisers), :mod:`.images`
(squeeze, per-channel affine maps, the LU 1x1 convolution), :mod:`.batch_norm` (batch norm in
TF's fused kernel, with the log-det's gradient) and :mod:`.splines`; callers use
the names re-exported here (``_math.affine_forward``).

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

from tfp_nice._math.batch_norm import fused_batch_norm, fused_batch_norm_applies
from tfp_nice._math.couplings import (
    STABILISERS,
    additive_forward,
    additive_inverse,
    affine_forward,
    affine_inverse,
    broadcast_like,
    check_stabiliser,
    diagonal_scale_forward,
    diagonal_scale_inverse,
    diagonal_scale_log_det,
    stabilise_log_scale,
)
from tfp_nice._math.images import (
    batch_norm_shift_and_log_scale,
    channel_affine_forward,
    channel_affine_inverse,
    channel_affine_log_det,
    channel_matmul,
    lu_inverse_weight,
    lu_weight,
    moments,
    squeeze,
    squeeze_channel_permutation,
    unsqueeze,
)
from tfp_nice._math.shapes import (
    flatten_event,
    leading_shape,
    merge_flat,
    reshape_leading,
    reshape_to,
    split_flat,
    unflatten_event,
)
from tfp_nice._math.splines import (
    rational_quadratic_spline,
    spline_parameters,
)

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
    "fused_batch_norm",
    "fused_batch_norm_applies",
    "lu_weight",
    "lu_inverse_weight",
    "channel_matmul",
    "rational_quadratic_spline",
    "spline_parameters",
]
