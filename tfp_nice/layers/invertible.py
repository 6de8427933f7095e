"""The weights of Glow's invertible 1x1 convolution: an LU-factored ``[C, C]`` matrix."""

from __future__ import annotations

import keras
import numpy as np

from tfp_nice._internal.checks import check_int
from tfp_nice.layers._config import ConfigFields
from tfp_nice.layers._self_built import SelfBuiltLayer, weight_property

__all__ = ["Invertible1x1ConvLayer", "random_rotation_lu"]


def random_rotation_lu(channels: int, seed: int | None = None) -> dict[str, np.ndarray]:
    """Glow's initialisation: the LU factors of a random rotation (QR of a seeded Gaussian).

    Returns float64 arrays ``permutation`` (``P``), ``lower`` (``L``, unit lower triangular),
    ``upper`` (strictly upper ``U``), ``sign_s`` and ``log_s`` with
    ``Q = P L (U + diag(sign_s * exp(log_s)))`` orthogonal, so ``sum(log_s) = 0``.
    ``seed=None`` draws the seed from NumPy's global generator (which
    ``keras.utils.set_random_seed`` seeds).
    """
    c = check_int(channels, "channels")
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    q = q * np.sign(np.diag(r))  # a Haar-distributed rotation (or reflection)
    perm, lower, upper = _lu_partial_pivoting(q)
    s = np.diag(upper).copy()
    return {
        "permutation": np.eye(c)[perm].T,  # q[perm] = L U  <=>  q = P L U with P = I[perm]^T
        "lower": lower,
        "upper": np.triu(upper, 1),
        "sign_s": np.sign(s),
        "log_s": np.log(np.abs(s)),
    }


def _lu_partial_pivoting(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(perm, L, U)`` with ``a[perm] = L @ U`` (Doolittle with row pivoting)."""
    n = a.shape[0]
    upper, lower, perm = a.astype(np.float64).copy(), np.eye(n), np.arange(n)
    for k in range(n - 1):
        p = k + int(np.argmax(np.abs(upper[k:, k])))
        upper[[k, p]] = upper[[p, k]]
        lower[[k, p], :k] = lower[[p, k], :k]
        perm[[k, p]] = perm[[p, k]]
        for i in range(k + 1, n):
            lower[i, k] = upper[i, k] / upper[k, k]
            upper[i] -= lower[i, k] * upper[k]
    return perm, lower, np.triu(upper)


@keras.saving.register_keras_serializable(package="tfp_nice")
class Invertible1x1ConvLayer(ConfigFields, SelfBuiltLayer):
    """The weights of :class:`tfp_nice.bijectors.Invertible1x1Conv` (Glow [4] §3.2).

    ``W = P L (U + diag(sign_s * exp(log_s)))``, stored as

    * ``permutation`` ``P`` (``[C, C]``, non-trainable: fixed at initialisation),
    * ``lower`` (``[C, C]``, trainable; only its strictly lower triangle is used, ``L`` has a
      unit diagonal) and ``upper`` (``[C, C]``, trainable; only its strictly upper triangle),
      both absent for ``C = 1``,
    * ``log_s`` (``[C]``, trainable) and ``sign_s`` (``[C]``, non-trainable, ``±1``).

    They start as the LU factors of a random rotation (:func:`random_rotation_lu`), so a new
    convolution mixes the channels and has log-det 0. Calling the layer returns
    ``(permutation, lower, upper, sign_s, log_s)`` (``lower``/``upper`` ``None`` for one
    channel).

    Args:
      channels: ``C``, the last axis of the event.
      seed: seeds the initial rotation (``None``: from NumPy's global generator).
      **kwargs: ``keras.layers.Layer`` arguments.

    Example:
      >>> layer = Invertible1x1ConvLayer(3, seed=0)
      >>> [tuple(w.shape) for w in layer()]
      [(3, 3), (3, 3), (3, 3), (3,), (3,)]

    References:
      [4] Kingma, Dhariwal. Glow: Generative flow with invertible 1x1 convolutions.
          arXiv:1807.03039, §3.2.
    """

    config_fields = ("channels", "seed")

    def __init__(self, channels: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_int(channels, "channels")
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)

    def create_weights(self) -> dict:
        c = self.channels
        init = random_rotation_lu(c, self.seed)
        weights = {
            "permutation": self.add_weight(name="permutation", shape=(c, c),
                                           initializer="zeros", trainable=False),
            "sign_s": self.add_weight(name="sign_s", shape=(c,), initializer="zeros",
                                      trainable=False),
            "log_s": self.add_weight(name="log_s", shape=(c,), initializer="zeros"),
        }
        if c > 1:
            weights["lower"] = self.add_weight(name="lower", shape=(c, c), initializer="zeros")
            weights["upper"] = self.add_weight(name="upper", shape=(c, c), initializer="zeros")
        for name, variable in weights.items():
            variable.assign(init[name].astype(variable.dtype))
        return weights

    log_s = weight_property("log_s", "The trainable log-magnitudes of ``U``'s diagonal.")

    def call(self, inputs=None):
        get = self.weight
        lower = get("lower").value if self.channels > 1 else None
        upper = get("upper").value if self.channels > 1 else None
        return (get("permutation").value, lower, upper, get("sign_s").value, get("log_s").value)
