"""Glow's ActNorm as a ``tfp.bijectors.Bijector``, and the data-dependent initialisation walk."""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _math
from tfp_nice.bijectors._coupling import check_finite, check_floating
from tfp_nice.layers import ActNormLayer

tfb = tfp.bijectors

__all__ = ["ActNorm", "initialize_from_data", "find_act_norms"]


def _is(b, name: str) -> bool:
    """``isinstance(b, tfb.<name>)``, also for TFP's private non-composite base (``_Chain``).

    ``tfb.Chain([...])`` and ``tfb.Invert(...)`` of bijectors that are not composite tensors
    (tfp_nice's) are instances of ``_Chain`` / ``_Invert``, not of ``tfb.Chain`` / ``tfb.Invert``.
    """
    return any(c.__name__ in (name, f"_{name}") for c in type(b).__mro__)


def _check_event_ndims(event_ndims) -> int:
    if isinstance(event_ndims, bool) or event_ndims not in (1, 2, 3, 4):
        raise ValueError(
            f"`event_ndims` must be an int in [1, 4]. Received: event_ndims={event_ndims!r}"
        )
    return int(event_ndims)


def _event_shape(x: tf.Tensor, event_ndims: int, channels: int, owner: str, arg: str):
    """The static event shape of ``x`` (last ``event_ndims`` axes), checking the channels."""
    if x.shape.rank is None or x.shape.rank < event_ndims:
        raise ValueError(
            f"{owner}: `{arg}` must have rank >= {event_ndims} (the event rank). "
            f"Received: {arg}.shape={x.shape}"
        )
    event = x.shape[x.shape.rank - event_ndims :]
    if not event.is_fully_defined() or event[-1] != channels:
        raise ValueError(
            f"{owner}: `{arg}` must have a static event shape ending in {channels} channels. "
            f"Received: {arg}.shape={x.shape}"
        )
    return event.as_list()


class ActNorm(tfb.Bijector):
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
        self._event_ndims = _check_event_ndims(event_ndims)
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

    @property
    def keras_layers(self) -> list:
        return [self._layer]

    def _params(self, x: tf.Tensor, arg: str):
        check_floating(x, "ActNorm", arg)
        event = _event_shape(x, self._event_ndims, self._layer.channels, "ActNorm", arg)
        loc, log_scale = self._layer()
        return tf.cast(loc, x.dtype), tf.cast(log_scale, x.dtype), event

    def _forward(self, x):
        loc, log_scale, _ = self._params(x, "x")
        x = check_finite(x, "ActNorm", "x") if self.validate_args else x
        return _math.channel_affine_forward(x, loc, log_scale)

    def _inverse(self, y):
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
        _event_shape(y, self._event_ndims, self._layer.channels, "ActNorm", "y")
        mean, variance = _math.moments(y)
        std = tf.maximum(tf.sqrt(variance), tf.constant(min_std, y.dtype))
        self._layer.initialize(mean, tf.math.log(std))

    def get_config(self) -> dict:
        """A JSON-serialisable config; :meth:`from_config` rebuilds the bijector."""
        return {
            "layer": keras.saving.serialize_keras_object(self._layer),
            "event_ndims": self._event_ndims,
            "validate_args": self.validate_args,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> ActNorm:
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def initialize_from_data(bijector, y, force: bool = False) -> tuple[tf.Tensor, int]:
    """Glow's data-dependent initialisation of every :class:`ActNorm` inside ``bijector``.

    Runs the data-side batch ``y`` through ``bijector.inverse`` step by step (through
    ``tfb.Chain`` in order, into :class:`~tfp_nice.bijectors.FactorOut`'s inner flow), and
    initialises each uninitialised ActNorm on the activations that reach it, so later steps
    see already-normalised inputs. Run it eagerly, before training.

    Returns:
      ``(z, count)``: ``bijector.inverse(y)`` after initialisation and the number of ActNorm
      steps initialised.
    """
    from tfp_nice.bijectors.factor_out import FactorOut

    count = 0

    def walk(b, y):
        nonlocal count
        if isinstance(b, ActNorm):
            if force or not b.layer.is_initialized:
                b.initialize(y, force=True)
                count += 1
            return b.inverse(y)
        if _is(b, "Chain"):
            for inner in b.bijectors:  # Chain.inverse applies bijectors[0] first
                y = walk(inner, y)
            return y
        if isinstance(b, FactorOut):
            k = b.num_kept if b.num_kept is not None else int(y.shape[-1]) // 2
            return tf.concat([walk(b.bijector, y[..., :k]), y[..., k:]], axis=-1)
        return b.inverse(y)

    z = walk(bijector, tf.convert_to_tensor(y))
    return z, count


def find_act_norms(bijector) -> list:
    """Every :class:`ActNorm` reachable from ``bijector`` (through Chain, Invert, FactorOut)."""
    from tfp_nice.bijectors.factor_out import FactorOut

    found = []

    def walk(b):
        if isinstance(b, ActNorm):
            found.append(b)
        elif _is(b, "Chain"):
            for inner in b.bijectors:
                walk(inner)
        elif isinstance(b, FactorOut):
            walk(b.bijector)
        elif _is(b, "Invert"):
            walk(b.bijector)

    walk(bijector)
    return found

