"""Glow's ActNorm as a ``tfp.bijectors.Bijector``, with its data-dependent initialisation."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math, serialization
from tfp_nice._internal.checks import (
    check_channels_event,
    check_finite,
    check_floating,
    check_int,
)
from tfp_nice.bijectors._base import LayerBijector
from tfp_nice.layers import ActNormLayer

tfb = tfp.bijectors

__all__ = ["ActNorm", "data_initialization"]

# The active data_initialization() state: {"force", "count", "done"} or None.
_INIT: contextvars.ContextVar = contextvars.ContextVar("tfp_nice_act_norm_init", default=None)


@contextlib.contextmanager
def data_initialization(force: bool = False) -> Iterator[dict]:
    """Within this block, every :class:`ActNorm` whose inverse runs eagerly initialises itself
    (once) on the data-side batch it receives, before transforming it.

    Run a flow's ``inverse`` on a batch of data inside it, and each ActNorm is initialised on
    the activations that reach it, in data-to-latent order, so later steps already see
    normalised inputs (Glow's data-dependent initialisation). Uninitialised ActNorms only,
    unless ``force``. Yields a dict whose ``"count"`` is the number initialised.
    """
    state = {"force": bool(force), "count": 0, "done": set()}
    token = _INIT.set(state)
    try:
        yield state
    finally:
        _INIT.reset(token)


@serialization.register
class ActNorm(LayerBijector):
    """Activation normalisation (Glow [4] §3.1): a per-channel affine map, Keras weights.

    With per-channel ``t_c`` (``loc``) and ``s_c`` (``log_scale``) over an event ``[H, W, C]``::

      forward:  y = x * exp(s_c) + t_c            (latent -> data)
      inverse:  x = (y - t_c) * exp(-s_c)         (data -> latent)
      log|det dy/dx| = H * W * sum_c s_c

    Data-dependent initialisation: :meth:`initialize` sets ``t_c`` and ``s_c`` to the mean and
    log standard deviation of a batch of data-side activations, so the inverse maps that batch to
    zero mean and unit variance per channel. It runs once: the layer's non-trainable
    ``initialized`` weight records it (and is saved with the model). In a
    :class:`tfp_nice.FlowModel`, ``model.initialize_from_data(x)`` initialises every ActNorm
    step in order on the activations ``x`` produces there, and ``model.fit`` does it
    automatically on its first batch if any ActNorm is still uninitialised. Before
    initialisation an ActNorm is the identity.

    Args:
      channels: ``C``; creates an :class:`tfp_nice.layers.ActNormLayer`. Give this or ``layer``.
      layer: an existing :class:`~tfp_nice.layers.ActNormLayer`.
      event_ndims: the event rank (3 for ``[H, W, C]`` images, 1 for vectors).
      validate_args: if ``True``, non-finite inputs raise ``InvalidArgumentError``.
      name: the bijector's name.

    Example:
      >>> import numpy as np
      >>> b = ActNorm(channels=2)
      >>> x = np.random.default_rng(0).normal(3.0, 2.0, [64, 4, 4, 2]).astype("float32")
      >>> b.initialize(x)
      >>> z = b.inverse(x).numpy()
      >>> bool(abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3)
      True

    References:
      [4] Kingma, Dhariwal. Glow: Generative flow with invertible 1x1 convolutions.
          arXiv:1807.03039, §3.1.
    """

    _layer_args = ("layer",)

    def __init__(
        self,
        channels: int | None = None,
        layer: ActNormLayer | None = None,
        event_ndims: int = 3,
        validate_args: bool = False,
        name: str = "act_norm",
    ):
        parameters = dict(locals())
        if (channels is None) == (layer is None):
            raise ValueError(
                "ActNorm: exactly one of `channels` and `layer` must be given. "
                f"Received: channels={channels!r}, layer={layer!r}"
            )
        if layer is None:
            layer = ActNormLayer(channels, name=f"{name}_layer")
        elif not isinstance(layer, ActNormLayer):
            raise TypeError(
                f"ActNorm: `layer` must be a tfp_nice.layers.ActNormLayer. Received: {layer!r}"
            )
        self._layer = layer
        self._event_ndims = check_int(event_ndims, "event_ndims", 1, 4)
        super().__init__(
            forward_min_event_ndims=self._event_ndims,
            is_constant_jacobian=True,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    @property
    def layer(self) -> ActNormLayer:
        """The layer holding ``loc``, ``log_scale`` and ``initialized``."""
        return self._layer

    def _params(self, x: tf.Tensor, arg: str):
        check_floating(x, "ActNorm", arg)
        event = check_channels_event(x, self._event_ndims, self._layer.channels, "ActNorm", arg)
        loc, log_scale = self._layer()
        return tf.cast(loc, x.dtype), tf.cast(log_scale, x.dtype), event

    def _forward(self, x):
        loc, log_scale, _ = self._params(x, "x")
        x = check_finite(x, "ActNorm", "x") if self.validate_args else x
        return _math.channel_affine_forward(x, loc, log_scale)

    def _inverse(self, y):
        state = _INIT.get()
        if state is not None and id(self) not in state["done"] and tf.executing_eagerly() and (
                state["force"] or not self._layer.is_initialized):
            self.initialize(y, force=True)
            state["done"].add(id(self))
            state["count"] += 1
        loc, log_scale, _ = self._params(y, "y")
        y = check_finite(y, "ActNorm", "y") if self.validate_args else y
        return _math.channel_affine_inverse(y, loc, log_scale)

    def _forward_log_det_jacobian(self, x):
        _, log_scale, event = self._params(x, "x")
        return _math.channel_affine_log_det(log_scale, event)

    def _inverse_log_det_jacobian(self, y):
        _, log_scale, event = self._params(y, "y")
        return -_math.channel_affine_log_det(log_scale, event)

    # --- data-dependent initialisation -------------------------------------------------------
    def initialize(self, y, force: bool = False, min_std: float = 1e-6) -> None:
        """Sets ``loc``/``log_scale`` from a batch ``y`` of data-side activations (eagerly).

        ``t_c = mean(y_c)``, ``s_c = log(max(std(y_c), min_std))`` over every axis but the
        channels. Skipped if already initialised, unless ``force``.
        """
        if self._layer.is_initialized and not force:
            return
        y = tf.convert_to_tensor(y)
        check_channels_event(y, self._event_ndims, self._layer.channels, "ActNorm", "y")
        mean, variance = _math.moments(y)
        std = tf.maximum(tf.sqrt(variance), tf.constant(min_std, y.dtype))
        self._layer.initialize(mean, tf.math.log(std))

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return self._config(layer=self._layer, event_ndims=self._event_ndims)
