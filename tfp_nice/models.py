"""Flows as Keras 3 models: ``FlowModel`` owns every weight, ``fit`` trains by maximum likelihood.

A :class:`FlowModel` is a base distribution ``p_z`` and a list of bijector steps, read like
``tfb.Chain(steps)``: the first step is nearest the data. Its distribution is
``tfd.TransformedDistribution(p_z, tfb.Chain(steps))`` whose ``forward`` maps latent ``z`` to
data ``x``, so by the change of variables::

  log p(x) = log p_z(f^-1(x)) + log|det d f^-1(x) / dx|

``model(x)`` returns the per-example negative log-likelihood ``-log p(x)`` and
``model.fit(x)`` minimises its mean; no ``y`` and no hand-written loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _ownership, layers, masks, preprocessing, priors, reversible, serialization
from tfp_nice.bijectors import AdditiveCoupling, AffineCoupling, DiagonalScale

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["FlowModel", "NICE", "RealNVP", "RealNVPImage"]


class _Untracked:
    """Holds TFP objects out of sight of Keras/TF auto-tracking (the model owns their layers)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@keras.saving.register_keras_serializable(package="tfp_nice")
class FlowModel(keras.Model):
    """A normalizing flow as a Keras model: ``call(x)`` is the per-example NLL.

    Args:
      base_distribution: the latent distribution ``p_z`` (e.g.
        :func:`tfp_nice.priors.standard_normal`), with a fully defined event shape.
      steps: ``tfp.bijectors.Bijector`` objects in ``tfb.Chain`` order (first = nearest
        the data): tfp_nice couplings mixed with any TFP bijector (``tfb.Permute``,
        ``tfb.Shift``, ``tfb.Scale``, ``tfb.Reshape``, ``tfb.Invert(...)``...). Every Keras
        layer or variable they use becomes the model's own.
      memory_saving: if ``True``, each run of consecutive couplings (with any ``tfb.Permute``
        / ``DiagonalScale`` / ``ActNorm`` between them) becomes one
        :class:`tfp_nice.reversible.ReversibleFlow` whose backward pass reconstructs
        activations instead of storing them: activation memory flat in depth, about one
        extra forward pass per step, the same gradients (see :mod:`tfp_nice.reversible`).
      **kwargs: ``keras.Model`` arguments (``name``...).

    Raises:
      TypeError: if a step is not a bijector or the base is not a distribution.
      ValueError: if a step holds state Keras cannot train (``tfb.BatchNormalization``'s
        tf_keras layer, ``tfb.real_nvp_default_template``, a raw ``tf.Variable``), naming
        the step and why; or if the base event shape is not fully defined.

    Example:
      >>> import numpy as np, tensorflow_probability as tfp
      >>> from tfp_nice import AffineCoupling, MLPConditioner, priors
      >>> tfb = tfp.bijectors
      >>> model = FlowModel(priors.standard_normal([2]), [
      ...     AffineCoupling(MLPConditioner(2, (16,)), num_masked=1), tfb.Permute([1, 0]),
      ...     AffineCoupling(MLPConditioner(2, (16,)), num_masked=1)])
      >>> model.compile(optimizer="adam")
      >>> h = model.fit(np.random.randn(64, 2).astype("float32"), epochs=1, verbose=0)
      >>> model(np.zeros([3, 2], "float32")).shape
      TensorShape([3])
    """

    def __init__(self, base_distribution, steps: Sequence, memory_saving: bool = False, **kwargs):
        if not isinstance(base_distribution, tfd.Distribution):
            raise TypeError(
                "FlowModel: `base_distribution` must be a tfp.distributions.Distribution. "
                f"Received: base_distribution={base_distribution!r}"
            )
        # Keras casts inputs to the model's dtype before `call`: keep the flow's precision.
        kwargs.setdefault("dtype", tf.as_dtype(base_distribution.dtype).name)
        super().__init__(**kwargs)
        if isinstance(steps, tfb.Bijector):
            steps = [steps]
        try:
            steps = list(steps)
        except TypeError:
            raise TypeError(
                "FlowModel: `steps` must be a list of tfp.bijectors.Bijector. "
                f"Received: steps={steps!r}"
            ) from None
        for i, step in enumerate(steps):
            if not isinstance(step, tfb.Bijector):
                raise TypeError(
                    f"FlowModel: `steps[{i}]` must be a tfp.bijectors.Bijector. "
                    f"Received: {step!r}"
                )
        base_event = base_distribution.event_shape
        if not base_event.is_fully_defined():
            raise ValueError(
                "FlowModel: `base_distribution` must have a fully defined event shape. "
                f"Received: event_shape={base_event}"
            )
        found = _ownership.Ownership()
        _ownership.collect(base_distribution, "base_distribution", found)
        for i, step in enumerate(steps):
            _ownership.collect(step, f"steps[{i}]", found)
        if found.foreign:
            path, what = found.foreign[0]
            idx = path.split("]")[0] + "]" if path.startswith("steps[") else path
            desc = (f"`{idx}` ({type(steps[int(idx[6:-1])]).__name__})"
                    if path.startswith("steps[") else "`base_distribution`")
            raise _ownership.foreign_variable_error(desc, path, what)
        # Keras tracks these lists, so it sees, trains and saves every weight.
        self.flow_layers = _unique(found.layers)
        self.flow_variables = _unique(found.variables)
        if not isinstance(memory_saving, bool):
            raise TypeError(
                f"FlowModel: `memory_saving` must be a bool. Received: {memory_saving!r}"
            )
        self.memory_saving = memory_saving
        chain_steps = (reversible.memory_saving_steps(steps, base_event) if memory_saving
                       else steps)
        chain = tfb.Chain(chain_steps, name="flow") if len(chain_steps) != 1 else chain_steps[0]
        self._flow = _Untracked(
            base=base_distribution,
            steps=steps,
            distribution=tfd.TransformedDistribution(base_distribution, chain),
        )
        dist = self._flow.distribution
        self._event_shape = tuple(int(d) for d in dist.event_shape)
        self._flow_dtype = tf.as_dtype(base_distribution.dtype)
        # Build every layer now, eagerly (under the active strategy's scope if any), so no
        # variable is first created inside a traced training step.
        dist.log_prob(tf.zeros((1,) + self._event_shape, self._flow_dtype))
        self.built = True

    # --- the flow ----------------------------------------------------------------------------
    @property
    def distribution(self) -> tfd.TransformedDistribution:
        """``tfd.TransformedDistribution(base_distribution, tfb.Chain(steps))``."""
        return self._flow.distribution

    @property
    def bijector(self) -> tfb.Bijector:
        """The flow's bijector (latent -> data in its forward direction)."""
        return self._flow.distribution.bijector

    @property
    def base_distribution(self) -> tfd.Distribution:
        return self._flow.base

    @property
    def steps(self) -> list:
        return list(self._flow.steps)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The data event shape."""
        return self._event_shape

    def _check_x(self, x, arg: str = "x", event_shape: tuple[int, ...] | None = None
                 ) -> tf.Tensor:
        """``x`` as a tensor of the flow's dtype; a clear error unless it is ``[batch, *event]``.

        ``event_shape`` defaults to the data's (use the base distribution's for latents).
        """
        event_shape = self._event_shape if event_shape is None else tuple(event_shape)
        if isinstance(x, (np.ndarray, list, tuple, float, int)):
            x = np.asarray(x)
            if np.issubdtype(x.dtype, np.floating):
                x = x.astype(self._flow_dtype.as_numpy_dtype)
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(
                f"FlowModel: `{arg}` must be floating point ({self._flow_dtype.name}); convert or "
                f"dequantize integer data first. Received: {arg}.dtype={x.dtype.name}"
            )
        n = len(event_shape)
        got = tuple(x.shape[x.shape.rank - n :]) if x.shape.rank is not None else None
        if x.shape.rank is None or x.shape.rank < n or got != event_shape:
            raise ValueError(
                f"FlowModel: `{arg}` must have shape "
                f"[batch, {', '.join(map(str, event_shape))}] "
                f"(event shape {list(event_shape)}). Received: {arg}.shape={x.shape}"
            )
        return tf.cast(x, self._flow_dtype) if x.dtype != self._flow_dtype else x

    def log_prob(self, x) -> tf.Tensor:
        """``log p(x)`` per example."""
        return self.distribution.log_prob(self._check_x(x))

    def sample(self, n: int, seed: Any = None, temperature: float = 1.0) -> tf.Tensor:
        """``n`` samples ``x = f(T · z)``, ``z ~ p_z``.

        Args:
          n: number of samples.
          seed: ``None``, an int, or a stateless seed (shape ``[2]`` ints; the same seed gives
            the same samples).
          temperature: ``T``; ``T < 1`` draws from the base distribution shrunk towards its
            mode at 0 (Glow's "temperature"), giving cleaner but less diverse samples.
        """
        if isinstance(n, bool) or not (isinstance(n, (int, np.integer)) or tf.is_tensor(n)):
            raise TypeError(f"FlowModel.sample: `n` must be an int >= 0. Received: n={n!r}")
        if isinstance(n, (int, np.integer)) and n < 0:
            raise ValueError(f"FlowModel.sample: `n` must be >= 0. Received: n={n}")
        if isinstance(temperature, (int, float)) and not temperature > 0:
            raise ValueError(
                f"FlowModel.sample: `temperature` must be > 0. Received: temperature={temperature}"
            )
        if isinstance(temperature, (int, float)) and temperature == 1.0:
            return self.distribution.sample(n, seed=seed)
        z = self.base_distribution.sample(n, seed=seed)
        return self.bijector.forward(z * tf.cast(temperature, z.dtype))

    def encode(self, x) -> tf.Tensor:
        """Data -> latent: ``z = f^-1(x)``."""
        return self.bijector.inverse(self._check_x(x))

    def decode(self, z) -> tf.Tensor:
        """Latent -> data: ``x = f(z)``; ``z`` has the base distribution's event shape."""
        latent = tuple(int(d) for d in self.base_distribution.event_shape)
        return self.bijector.forward(self._check_x(z, "z", latent))

    # --- data-dependent initialisation (ActNorm) ---------------------------------------------
    def initialize_from_data(self, x, force: bool = False) -> int:
        """Glow's data-dependent initialisation of every :class:`~tfp_nice.bijectors.ActNorm` step.

        Runs the batch ``x`` from the data side through the steps in order; each ActNorm not
        yet initialised (or every one, with ``force``) gets the per-channel mean and log-std of
        the activations reaching it, so the flow starts with normalised activations. Run it
        eagerly on a batch of (dequantized) training data before training; ``fit`` calls it
        on its first batch when needed. The ``initialized`` flags are weights, so a saved and
        reloaded model is not initialised again. Returns the number of steps initialised.
        """
        from tfp_nice.bijectors.act_norm import initialize_from_data

        return initialize_from_data(tfb.Chain(self.steps), self._check_x(x), force=force)[1]

    def _needs_data_init(self) -> bool:
        from tfp_nice.bijectors.act_norm import find_act_norms

        return any(not a.layer.is_initialized for a in find_act_norms(tfb.Chain(self.steps)))

    def fit(self, x=None, *args, **kwargs):
        """``keras.Model.fit``; first initialises uninitialised ActNorm steps on the first batch.

        The first batch is ``x[:batch_size]`` (default 32) for arrays and tensors, or the first
        element of a ``tf.data.Dataset``; see :meth:`initialize_from_data`.
        """
        if x is not None and self._needs_data_init():
            batch = _first_batch(x, kwargs.get("batch_size") or (args[1] if len(args) > 1
                                                                  else None))
            if batch is not None:
                self.initialize_from_data(batch)
        return super().fit(x, *args, **kwargs)

    # --- Keras -------------------------------------------------------------------------------
    def call(self, x, training: bool | None = None):
        """Per-example negative log-likelihood ``-log p(x)``."""
        return -self.log_prob(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean NLL (plus any regularisation losses), scaled for ``tf.distribute``.

        Keras sums the per-replica losses, so each replica returns its share: the mean
        divided by ``num_replicas_in_sync`` (Keras' own ``Loss`` objects do the same).
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        if sample_weight is not None:
            w = tf.cast(tf.reshape(sample_weight, tf.shape(y_pred)), y_pred.dtype)
            loss = tf.math.divide_no_nan(tf.reduce_sum(w * y_pred), tf.reduce_sum(w))
        else:
            loss = tf.reduce_mean(y_pred)
        if self.losses:
            loss = loss + tf.add_n([tf.cast(v, loss.dtype) for v in self.losses])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss / tf.cast(replicas, loss.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[: len(input_shape) - len(self._event_shape)]

    def get_config(self) -> dict:
        """Serialises the base distribution and steps (see :mod:`tfp_nice.serialization`)."""
        config = super().get_config()
        config.update(
            base_distribution=serialization.serialize(self._flow.base, "base_distribution"),
            steps=[
                serialization.serialize(s, f"steps[{i}]") for i, s in enumerate(self._flow.steps)
            ],
        )
        if self.memory_saving:
            config["memory_saving"] = True
        return config

    @classmethod
    def from_config(cls, config: dict) -> FlowModel:
        config = dict(config)
        base = serialization.deserialize(config.pop("base_distribution"))
        steps = [serialization.deserialize(s) for s in config.pop("steps")]
        return cls(base, steps, **config)


class _Preset(FlowModel):
    """A FlowModel built from a few hyper-parameters; its config is those hyper-parameters."""

    def get_config(self) -> dict:
        config = keras.Model.get_config(self)
        config.update(self._preset_config)
        if self.memory_saving:
            config["memory_saving"] = True
        return config

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _event_shape(event_shape) -> tuple[int, ...]:
    if isinstance(event_shape, (int, np.integer)):
        event_shape = (int(event_shape),)
    try:
        shape = tuple(int(d) for d in event_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(
            "`event_shape` must be a non-empty sequence of positive ints, e.g. [784] or "
            f"[8, 8, 1]. Received: event_shape={event_shape!r}"
        )
    if int(np.prod(shape)) < 2:
        raise ValueError(f"A coupling flow needs at least 2 dimensions. Received: {list(shape)}")
    return shape


def _check_count(value, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value!r}")
    return int(value)


def _vector_mask(kind: str, size: int) -> masks.Mask:
    if kind == "even_odd":
        return masks.even_odd(size)
    if kind == "half":
        return masks.half(size, num_masked=size // 2)
    raise ValueError(f"`mask` must be 'even_odd' or 'half'. Received: mask={kind!r}")


def _alternating_couplings(num, first, hidden_units, activation, make, units_per_unit) -> list:
    """``num`` couplings whose masks alternate ``first`` / its complement (the halves swap)."""
    steps = []
    for i in range(num):
        m = first if i % 2 == 0 else first.complement()
        net = layers.MLPConditioner(units_per_unit * m.num_transformed, tuple(hidden_units),
                                    activation, name=f"coupling_{i}_net")
        steps.append(make(net, m, i))
    return steps


def _data_side_steps(event_shape, data_scale, data_low, logit_alpha) -> list:
    """Preprocessing (nearest the data) and the flatten to a vector, in tfb.Chain order."""
    steps = []
    if data_scale is not None:
        steps += preprocessing.rescale(data_scale, data_low)
    if logit_alpha is not None:
        steps += preprocessing.logit(logit_alpha)
    if len(event_shape) > 1:
        size = int(np.prod(event_shape))
        steps.append(tfb.Reshape(event_shape_out=list(event_shape), event_shape_in=[size]))
    return steps


@keras.saving.register_keras_serializable(package="tfp_nice")
class NICE(_Preset):
    """NICE [1]: additive couplings on alternating halves, diagonal scaling, logistic prior.

    ``x -> (rescale to [0, 1)) -> flatten -> num_couplings additive couplings (the halves
    swap each time) -> exp(s) scaling -> logistic prior``. With ``event_shape=[784]`` and the
    defaults this is the NICE paper's MNIST model (4 couplings, each ``m`` a 5×1000 ReLU MLP,
    odd/even partition).

    Args:
      event_shape: the data event shape, ``[D]`` or ``[H, W, C]`` (flattened inside).
      num_couplings: number of additive couplings.
      hidden_units: hidden widths of each coupling's MLP.
      activation: hidden activation.
      prior: ``"logistic"`` (the paper) or ``"normal"``.
      mask: ``"even_odd"`` (the paper's partition) or ``"half"`` (first/second half).
      data_scale: if given, data live on ``[data_low, data_low + data_scale)`` (e.g. 17 for
        dequantized digits, 256 for 8-bit pixels) and are rescaled to ``[0, 1)``.
      data_low: the lower end of the data range.
      **kwargs: ``keras.Model`` arguments.

    Example:
      >>> model = NICE([8, 8, 1], hidden_units=(32,), data_scale=17.0)
      >>> model.event_shape
      (8, 8, 1)

    References:
      [1] Dinh, Krueger, Bengio. NICE. arXiv:1410.8516, §5.1.
    """

    def __init__(
        self,
        event_shape,
        num_couplings: int = 4,
        hidden_units: Sequence[int] = (1000,) * 5,
        activation: str = "relu",
        prior: str = "logistic",
        mask: str = "even_odd",
        data_scale: float | None = None,
        data_low: float = 0.0,
        **kwargs,
    ):
        event_shape = _event_shape(event_shape)
        num_couplings = _check_count(num_couplings, "num_couplings")
        size = int(np.prod(event_shape))
        base = priors.get(prior, [size])
        first = _vector_mask(mask, size)
        steps = _data_side_steps(event_shape, data_scale, data_low, None)
        steps += _alternating_couplings(
            num_couplings, first, hidden_units, activation,
            lambda net, m, i: AdditiveCoupling(net, mask=m, name=f"additive_coupling_{i}"),
            units_per_unit=1,
        )
        steps.append(DiagonalScale([size], name="diagonal_scale"))
        super().__init__(base, steps, **kwargs)
        self._preset_config = dict(
            event_shape=list(event_shape), num_couplings=num_couplings,
            hidden_units=list(hidden_units), activation=activation, prior=prior, mask=mask,
            data_scale=data_scale, data_low=data_low,
        )

    def initialize_scale(self, x) -> np.ndarray:
        """Data-dependent initialisation of the diagonal scaling (like Glow's ActNorm).

        Sets ``s`` so that ``f^-1(x)`` has the prior's standard deviation in every dimension
        on the batch ``x``: ``s_d = log(std_d / std_prior)`` (``std_d`` floored at 1e-3).
        Call it before training, on a batch of (dequantized) training data; the paper
        starts from ``s = 0`` instead, which makes near-constant pixels (image borders)
        take hundreds of epochs to fit. Returns the new ``s``.
        """
        x = self._check_x(x)
        h = tfb.Chain(self.steps[:-1]).inverse(x)
        std = tf.maximum(tf.math.reduce_std(h, axis=0), tf.constant(1e-3, h.dtype))
        log_scale = tf.math.log(std / self.base_distribution.distribution.stddev())
        layer = self.steps[-1].log_scale
        layer.log_scale.assign(tf.cast(log_scale, layer.log_scale.dtype))
        return log_scale.numpy()


@keras.saving.register_keras_serializable(package="tfp_nice")
class RealNVP(_Preset):
    """RealNVP [2] for vectors: affine couplings on alternating halves, Gaussian prior.

    ``x -> (rescale to [0, 1) -> logit) -> flatten -> num_couplings affine couplings
    (the halves swap each time) -> N(0, I)``; the general-purpose MLP version used on tabular
    data and flattened images (MAF paper's "Real NVP (5)/(10)"). The multi-scale image
    architecture is separate.

    Args:
      event_shape: the data event shape, ``[D]`` or ``[H, W, C]`` (flattened inside).
      num_couplings: number of affine couplings.
      hidden_units: hidden widths of each coupling's MLP.
      activation: hidden activation.
      scale: the scale stabiliser (``"tanh"``, ``"exp"``, ``"sigmoid"``, ``"soft_clamp"``).
      prior: ``"normal"`` (the paper) or ``"logistic"``.
      mask: ``"half"`` or ``"even_odd"``.
      data_scale, data_low: as in :class:`NICE`.
      logit_alpha: if given (with ``data_scale``), apply ``logit(α + (1 - 2α) x)`` to the
        rescaled data (RealNVP: ``α = 0.05``).
      **kwargs: ``keras.Model`` arguments.

    Example:
      >>> model = RealNVP([2], num_couplings=4, hidden_units=(32, 32))
      >>> model.sample(3, seed=(1, 2)).shape
      TensorShape([3, 2])

    References:
      [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803.
    """

    def __init__(
        self,
        event_shape,
        num_couplings: int = 6,
        hidden_units: Sequence[int] = (256, 256),
        activation: str = "relu",
        scale: str = "tanh",
        prior: str = "normal",
        mask: str = "half",
        data_scale: float | None = None,
        data_low: float = 0.0,
        logit_alpha: float | None = None,
        **kwargs,
    ):
        event_shape = _event_shape(event_shape)
        num_couplings = _check_count(num_couplings, "num_couplings")
        if logit_alpha is not None and data_scale is None:
            raise ValueError(
                "`logit_alpha` needs `data_scale` (the logit acts on data rescaled to [0, 1)). "
                f"Received: logit_alpha={logit_alpha!r}, data_scale=None"
            )
        size = int(np.prod(event_shape))
        base = priors.get(prior, [size])
        first = _vector_mask(mask, size)
        steps = _data_side_steps(event_shape, data_scale, data_low, logit_alpha)
        steps += _alternating_couplings(
            num_couplings, first, hidden_units, activation,
            lambda net, m, i: AffineCoupling(net, mask=m, scale=scale, name=f"affine_coupling_{i}"),
            units_per_unit=2,
        )
        super().__init__(base, steps, **kwargs)
        self._preset_config = dict(
            event_shape=list(event_shape), num_couplings=num_couplings,
            hidden_units=list(hidden_units), activation=activation, scale=scale, prior=prior,
            mask=mask, data_scale=data_scale, data_low=data_low, logit_alpha=logit_alpha,
        )


def _first_batch(x, batch_size):
    """The first batch ``fit`` would see, for data-dependent initialisation (or ``None``)."""
    if isinstance(x, tf.data.Dataset):
        batch = next(iter(x))
    elif isinstance(x, (np.ndarray, tf.Tensor)):
        batch = x[: int(batch_size or 32)]
    else:
        return None
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    return batch if tf.is_tensor(batch) or isinstance(batch, np.ndarray) else None


_NORMALIZATIONS = ("batch_norm", "act_norm", "none")
_IMAGE_COUPLINGS = ("affine", "additive")
_IMAGE_CONDITIONERS = ("resnet", "conv")


def _choice(value, options, arg: str):
    if value not in options:
        raise ValueError(f"`{arg}` must be one of {list(options)}. Received: {arg}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="tfp_nice")
class RealNVPImage(_Preset):
    """RealNVP's multi-scale architecture for images [2] §3.6, §4.1.

    From the data side, each scale ``i`` of an ``[h, w, c]`` image (``h, w`` halve and ``c``
    doubles from one scale to the next)::

      3 affine couplings, checkerboard masks alternating       on [h, w, c]
      squeeze (channel-major)                                  -> [h/2, w/2, 4c]
      3 affine couplings, channel masks alternating            on [h/2, w/2, 4c]
      unsqueeze, then squeeze in checkerboard order            -> [h/2, w/2, 4c]
      factor out: the last 2c channels go to the prior; the first 2c continue with scale i+1
    and the last scale is 4 checkerboard couplings. Each coupling's network is a
    :class:`~tfp_nice.layers.ResNetConditioner` (``num_blocks`` residual blocks, weight
    normalisation, zero-initialised output) seeing ``[x * mask, mask]`` as an image, with
    ``filters * 2**i`` feature maps at scale ``i`` (twice that for the channel couplings, as
    RealNVP's code). Each coupling is followed by a normalisation step (``normalization``):
    :class:`~tfp_nice.bijectors.BatchNorm` (RealNVP: batch statistics in training, moving
    averages at inference), :class:`~tfp_nice.bijectors.ActNorm` (Glow: data-dependent
    initialisation, then learned) or none. The prior is ``N(0, I)`` over all ``H·W·C`` units
    (factored-out units included); the latent has the data's shape.

    The defaults (2 scales, 2 blocks, 16 filters: 0.3M parameters) suit 8x8 digits on 2 CPU
    cores (``bench/image_quality.py``: 16 filters beat 32 at equal training time). RealNVP's
    sizes: 32x32 (CIFAR-10)
    ``num_scales=2`` ("downscale only once"), ``num_blocks=8, filters=64``; 32x32 ImageNet
    ``num_scales=4, num_blocks=4, filters=32``; 64x64 ``num_scales=5, num_blocks=2 (paper) or 4
    (code), filters=32``. For 28x28 MNIST (not in the paper) ``num_scales=3`` (28 -> 14 -> 7),
    ``num_blocks=4 .. 8, filters=32 .. 64``. Preprocessing as the paper: ``data_scale=256,
    logit_alpha=0.05``.

    Args:
      event_shape: ``[H, W, C]``; ``H`` and ``W`` divisible by ``2 ** (num_scales - 1)``.
      num_scales: the number of scales (``num_scales - 1`` squeezes and factor-outs).
      num_blocks: residual blocks per coupling network.
      filters: feature maps of the first scale's checkerboard couplings.
      coupling: ``"affine"`` (the paper) or ``"additive"``.
      scale: the affine scale stabiliser (``"tanh"``: ``s = c·tanh(h)`` as RealNVP's code).
      normalization: ``"batch_norm"``, ``"act_norm"`` or ``"none"``.
      conditioner: ``"resnet"`` (RealNVP) or ``"conv"`` (a small :class:`ConvConditioner`).
      l2: L2 penalty on the weight-norm gains (RealNVP: ``5e-5``); it is added to the loss.
      prior: ``"normal"`` (the paper) or ``"logistic"``.
      data_scale, data_low, logit_alpha: preprocessing as in :class:`RealNVP`.
      **kwargs: ``keras.Model`` arguments.

    Example:
      >>> model = RealNVPImage([4, 4, 1], num_blocks=1, filters=4)
      >>> model.sample(2, seed=(1, 2), temperature=0.7).shape
      TensorShape([2, 4, 4, 1])

    References:
      [2] Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803.
    """

    def __init__(
        self,
        event_shape,
        num_scales: int = 2,
        num_blocks: int = 2,
        filters: int = 16,
        coupling: str = "affine",
        scale: str = "tanh",
        normalization: str = "batch_norm",
        conditioner: str = "resnet",
        l2: float = 0.0,
        prior: str = "normal",
        data_scale: float | None = None,
        data_low: float = 0.0,
        logit_alpha: float | None = None,
        **kwargs,
    ):
        from tfp_nice.bijectors import ActNorm, BatchNorm, FactorOut, Squeeze

        shape = _event_shape(event_shape)
        if len(shape) != 3:
            raise ValueError(
                "RealNVPImage: `event_shape` must be [height, width, channels]. "
                f"Received: event_shape={list(shape)}"
            )
        num_scales = _check_count(num_scales, "num_scales")
        filters = _check_count(filters, "filters")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, (int, np.integer)) or (
            num_blocks < 0
        ):
            raise ValueError(
                f"`num_blocks` must be an int >= 0. Received: num_blocks={num_blocks!r}"
            )
        _choice(coupling, _IMAGE_COUPLINGS, "coupling")
        _choice(normalization, _NORMALIZATIONS, "normalization")
        _choice(conditioner, _IMAGE_CONDITIONERS, "conditioner")
        div = 2 ** (num_scales - 1)
        if shape[0] % div or shape[1] % div:
            raise ValueError(
                f"RealNVPImage: with num_scales={num_scales} the height and width must be "
                f"divisible by 2**(num_scales - 1) = {div}. Received: event_shape={list(shape)}"
            )
        if logit_alpha is not None and data_scale is None:
            raise ValueError(
                "`logit_alpha` needs `data_scale` (the logit acts on data rescaled to [0, 1)). "
                f"Received: logit_alpha={logit_alpha!r}, data_scale=None"
            )

        def net(out_channels, width, name):
            if conditioner == "resnet":
                return layers.ResNetConditioner(out_channels, filters=width,
                                                num_blocks=int(num_blocks), l2=l2, name=name)
            return layers.ConvConditioner(out_channels, filters=(width, width), name=name)

        def couplings(first, count, width, prefix):
            steps = []
            c = first.event_shape[-1]
            for j in range(count):
                m = first if j % 2 == 0 else first.complement()
                name = f"{prefix}_{j}"
                if coupling == "affine":
                    steps.append(AffineCoupling(net(2 * c, width, f"{name}_net"), mask=m,
                                                scale=scale, conditioner_input="masked",
                                                name=name))
                else:
                    steps.append(AdditiveCoupling(net(c, width, f"{name}_net"), mask=m,
                                                  conditioner_input="masked", name=name))
                if normalization == "batch_norm":
                    steps.append(BatchNorm(channels=c, name=f"{name}_batch_norm"))
                elif normalization == "act_norm":
                    steps.append(ActNorm(channels=c, name=f"{name}_act_norm"))
            return steps

        def scale_steps(hwc, i):
            h, w, c = hwc
            width = filters * 2**i
            if i == num_scales - 1:
                return couplings(masks.checkerboard(hwc), 4, width, f"s{i}_checkerboard")
            steps = couplings(masks.checkerboard(hwc), 3, width, f"s{i}_checkerboard")
            squeezed = [h // 2, w // 2, 4 * c]
            steps.append(tfb.Invert(Squeeze(2), name=f"s{i}_squeeze"))
            steps += couplings(masks.channel(squeezed), 3, 2 * width, f"s{i}_channel")
            steps.append(Squeeze(2, name=f"s{i}_unsqueeze"))
            steps.append(tfb.Invert(Squeeze(2, "checkerboard"), name=f"s{i}_squeeze_ordered"))
            inner = tfb.Chain(scale_steps([h // 2, w // 2, 2 * c], i + 1), name=f"s{i + 1}")
            steps.append(FactorOut(inner, num_kept=2 * c, name=f"s{i}_factor_out"))
            steps.append(Squeeze(2, "checkerboard", name=f"s{i}_unsqueeze_ordered"))
            return steps

        base = priors.get(prior, list(shape))
        steps = []
        if data_scale is not None:
            steps += preprocessing.rescale(data_scale, data_low)
        if logit_alpha is not None:
            steps += preprocessing.logit(logit_alpha)
        steps += scale_steps(list(shape), 0)
        super().__init__(base, steps, **kwargs)
        self._preset_config = dict(
            event_shape=list(shape), num_scales=num_scales, num_blocks=int(num_blocks),
            filters=filters, coupling=coupling, scale=scale, normalization=normalization,
            conditioner=conditioner, l2=float(l2), prior=prior, data_scale=data_scale,
            data_low=data_low, logit_alpha=logit_alpha,
        )

    @property
    def num_scales(self) -> int:
        return self._preset_config["num_scales"]

    def latent_scales(self) -> np.ndarray:
        """Which scale each latent unit belongs to: an int array of the event shape.

        ``0`` marks the units factored out after the first scale (fine detail), ...,
        ``num_scales - 1`` the units that went through every scale (coarse structure).
        """
        from tfp_nice.bijectors import Squeeze

        def scale_map(hwc, i):
            h, w, c = hwc
            if i == self.num_scales - 1:
                return np.full(hwc, float(i))
            kept = scale_map([h // 2, w // 2, 2 * c], i + 1)
            squeezed = np.concatenate([kept, np.full([h // 2, w // 2, 2 * c], float(i))], -1)
            return Squeeze(2, "checkerboard").inverse(squeezed[None]).numpy()[0]

        return scale_map(list(self.event_shape), 0).astype(np.int32)

    def resample_scale(self, z, scale: int, seed: Any = None, temperature: float = 1.0):
        """Decodes latents ``z`` with the units of one scale redrawn from ``T · N(0, I)``.

        A grid of these shows what each scale encodes (RealNVP [2] Fig. 6): redrawing the last
        scale changes the global shape, redrawing scale 0 only local detail.
        """
        z = self._check_x(z, "z")
        where = tf.constant(self.latent_scales() == int(scale))
        fresh = self.base_distribution.sample(tf.shape(z)[0], seed=seed)
        fresh = fresh * tf.cast(temperature, fresh.dtype)
        return self.bijector.forward(tf.where(where, fresh, z))


def _unique(items: list) -> list:
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out
