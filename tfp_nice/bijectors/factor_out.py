"""RealNVP's multi-scale factor-out as a ``tfp.bijectors.Bijector``."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import graph, serialization
from tfp_nice._internal import compat
from tfp_nice._internal.checks import check_floating, check_int

tfb = tfp.bijectors

__all__ = ["FactorOut"]


@serialization.register
class FactorOut(tfb.Bijector):
    """Multi-scale factor-out [2] §3.6: an inner flow on the first channels, identity on the rest.

    Split the last (channel) axis into the first ``k = num_kept`` channels and the rest::

      forward:  y = concat([g(z[..., :k]), z[..., k:]])          (latent -> data)
      inverse:  z = concat([g^-1(x[..., :k]), x[..., k:]])       (data -> latent)
      log|det dy/dz| = log|det dg(z[..., :k])|

    The channels after ``k`` leave the flow at this scale: they go straight to the base
    distribution. With a factorised base over *all* dimensions (``N(0, I)`` in RealNVP) this is
    exactly RealNVP's ``log p(x) = log p(z_1) + log p(h_1) + ...`` with a prior on every factored
    out part, so ``tfd.TransformedDistribution`` gives the exact ``log_prob`` and ``sample``,
    ``encode`` and ``decode`` work unchanged. Nesting one ``FactorOut`` per scale (each inner flow
    ends with the next scale) gives the whole multi-scale architecture; see
    :class:`tfp_nice.RealNVPImage`. Only core TF ops (slice, concat) are added, so the flow
    still exports to a SavedModel. Condition keyword arguments pass through to the inner flow
    unchanged (as ``tfb.Invert`` does), e.g. ``{"name_of_a_coupling": {"context": c}}`` for
    an inner ``tfb.Chain``.

    Args:
      bijector: the inner flow ``g`` acting on ``[..., k]`` events (shape preserving), e.g. a
        ``tfb.Chain`` of couplings of the next scale.
      num_kept: ``k``, the channels that stay in the flow; default half (``C // 2``).
      event_ndims: the rank of the event (3 for ``[H, W, C]`` images, 1 for vectors); the
        inner log-det is summed over that many axes.
      validate_args: passed to ``tfb.Bijector``.
      name: the bijector's name.

    Example:
      >>> import numpy as np, tensorflow_probability as tfp
      >>> b = FactorOut(tfp.bijectors.Scale(2.0), num_kept=1, event_ndims=1)
      >>> b.forward(np.ones([1, 3], "float32")).numpy().tolist()
      [[2.0, 1.0, 1.0]]

    References:
      [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803,
          §3.6 and eq. (15)-(16).
    """

    def __init__(
        self,
        bijector,
        num_kept: int | None = None,
        event_ndims: int = 3,
        validate_args: bool = False,
        name: str = "factor_out",
    ):
        parameters = dict(locals())
        if not isinstance(bijector, tfb.Bijector):
            raise TypeError(
                "FactorOut: `bijector` must be a tfp.bijectors.Bijector (the inner flow). "
                f"Received: bijector={bijector!r}"
            )
        self._bijector = bijector
        self._num_kept = None if num_kept is None else check_int(num_kept, "num_kept")
        self._event_ndims = check_int(event_ndims, "event_ndims", 1, 4)
        super().__init__(
            forward_min_event_ndims=self._event_ndims,
            is_constant_jacobian=False,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        # The batch shape is the inner flow's.
        return dict(bijector=tfp.util.BatchedComponentProperties(
            event_ndims=lambda self, x_event_ndims: x_event_ndims))

    @property
    def bijector(self):
        """The inner flow ``g``."""
        return self._bijector

    @property
    def num_kept(self) -> int | None:
        return self._num_kept

    @property
    def keras_layers(self) -> list:
        """Every Keras layer the inner flow uses (a ``FlowModel`` owns them)."""
        return graph.collect(self._bijector, "bijector").layers

    def _split_point(self, x: tf.Tensor, arg: str) -> int:
        check_floating(x, "FactorOut", arg)
        c = x.shape[-1] if x.shape.rank else None
        if c is None or x.shape.rank < self._event_ndims:
            raise ValueError(
                f"FactorOut: `{arg}` must have a static last (channel) dimension and rank >= "
                f"{self._event_ndims}. Received: {arg}.shape={x.shape}"
            )
        k = self._num_kept if self._num_kept is not None else c // 2
        if not 1 <= k <= c - 1:
            raise ValueError(
                f"FactorOut: `num_kept` must be in [1, C - 1] = [1, {c - 1}] for {c} channels. "
                f"Received: num_kept={k}"
            )
        return k

    def _forward(self, x, **condition):
        b = self._bijector
        return self._run_kept(x, "x", b.forward, b.forward_log_det_jacobian,
                              compat.store_forward_log_det, condition)

    def _inverse(self, y, **condition):
        b = self._bijector
        return self._run_kept(y, "y", b.inverse, b.inverse_log_det_jacobian,
                              compat.store_inverse_log_det, condition)

    def _run_kept(self, t, arg: str, run, log_det, store, condition: dict):
        """Runs the inner flow (``run``) on the kept channels of ``t`` and passes the others;
        its log-det (``log_det``) goes to the cache (``store``) for the same call's ldj."""
        k = self._split_point(t, arg)
        kept, out = t[..., :k], t[..., k:]
        result = run(kept, **condition)  # first: the ldj then comes from the inner cache
        store(self, t, log_det(kept, event_ndims=self._event_ndims, **condition), **condition)
        return tf.concat([result, out], axis=-1)

    def _forward_log_det_jacobian(self, x, **condition):
        k = self._split_point(x, "x")
        return self._bijector.forward_log_det_jacobian(x[..., :k], event_ndims=self._event_ndims,
                                                       **condition)

    def _inverse_log_det_jacobian(self, y, **condition):
        k = self._split_point(y, "y")
        return self._bijector.inverse_log_det_jacobian(y[..., :k], event_ndims=self._event_ndims,
                                                       **condition)

    def get_config(self) -> dict:
        """A JSON-serialisable config (the inner flow through :mod:`tfp_nice.serialization`)."""
        return {
            "bijector": serialization.serialize(self._bijector, "bijector"),
            "num_kept": self._num_kept,
            "event_ndims": self._event_ndims,
            "validate_args": self.validate_args,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> FactorOut:
        config = dict(config)
        config["bijector"] = serialization.deserialize(config["bijector"])
        return cls(**config)
