"""Flows as Keras 3 models: ``FlowModel`` owns every weight, ``fit`` trains by maximum likelihood.

A :class:`FlowModel` is a base distribution ``p_z`` and a list of bijector steps, read like
``tfb.Chain(steps)``: the first step is nearest the data. Its distribution is
``tfd.TransformedDistribution(p_z, tfb.Chain(steps))`` whose ``forward`` maps latent ``z`` to
data ``x``, so by the change of variables::

  log p(x) = log p_z(f^-1(x)) + log|det d f^-1(x) / dx|

``model(x)`` returns the per-example negative log-likelihood ``-log p(x)`` and
``model.fit(x)`` minimises its mean; no ``y`` and no hand-written loop.

A conditional flow ``p(x | c)`` (``num_classes=K`` labels or a ``context_shape=[k]`` vector)
passes its context to every step that takes one (couplings, :class:`~tfp_nice.ContextAffine`)
as the condition keyword ``context`` (TFP's ``bijector_kwargs``); ``model((x, c))`` is
``-log p(x | c)``, ``model.fit(x, labels)`` trains it, and :meth:`FlowModel.classify` is the
Bayes classifier ``argmax_c log p(x | c) + log p(c)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _context, graph, precision, reversible, serialization
from tfp_nice._conditional import ConditionalMixin
from tfp_nice._internal import compat
from tfp_nice.bijectors import ActNorm
from tfp_nice.bijectors.act_norm import data_initialization

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["FlowModel"]


@keras.saving.register_keras_serializable(package="tfp_nice")
class FlowModel(ConditionalMixin, keras.Model):
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
      num_classes: make the flow class-conditional, ``p(x | c)`` for integer labels
        ``c in [0, K)``: every step that takes a condition gets the one-hot label as its
        ``context`` keyword (``MLPConditioner`` concatenates it to ``x1``, conv conditioners
        add constant feature maps, :class:`~tfp_nice.ContextAffine` picks a per-class latent
        mean and scale). Inputs are then pairs: ``model((x, labels))``, ``fit(x, labels)``.
      context_shape: instead, a vector context ``[k]`` (float ``[batch, k]`` inputs).
      **kwargs: ``keras.Model`` arguments (``name``...). ``dtype`` defaults to the base
        distribution's: the flow (data, log-dets, prior) computes in it. For mixed precision
        build the steps under a mixed policy (:func:`tfp_nice.precision.policy_scope`): their
        conditioners then compute in bfloat16/float16 while the flow stays in this dtype,
        and :meth:`compile` adds loss scaling for float16 (see :mod:`tfp_nice.precision`).

    Raises:
      TypeError: if a step is not a bijector or the base is not a distribution.
      ValueError: if a step holds state Keras cannot train (``tfb.BatchNormalization``'s
        tf_keras layer, ``tfb.real_nvp_default_template``, a raw ``tf.Variable``, or any
        trainable variable a step reads that Keras cannot see, such as a Keras 3 layer
        hidden in a callable it cannot search), naming the step and why; if the base event
        shape is not fully defined; or if a conditional model has no step taking the context.

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

    def __init__(self, base_distribution, steps: Sequence, memory_saving: bool = False,
                 num_classes: int | None = None, context_shape: Sequence[int] | None = None,
                 **kwargs):
        if not isinstance(base_distribution, tfd.Distribution):
            raise TypeError(
                "FlowModel: `base_distribution` must be a tfp.distributions.Distribution. "
                f"Received: base_distribution={base_distribution!r}"
            )
        # Keras casts inputs to the model's dtype before `call`: keep the flow's precision.
        kwargs.setdefault("dtype", tf.as_dtype(base_distribution.dtype).name)
        precision.check_flow_dtype(kwargs["dtype"])
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
        self._context = _context.ContextSpec.from_args(num_classes, context_shape)
        found = graph.Ownership()
        graph.collect(base_distribution, "base_distribution", found)
        for i, step in enumerate(steps):
            graph.collect(step, f"steps[{i}]", found)
        if found.foreign:
            path, what = found.foreign[0]
            raise graph.foreign_state_error(_describe(path, steps), path, what)
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
        self._flow = compat.Untracked(
            base=base_distribution,
            steps=steps,
            distribution=tfd.TransformedDistribution(base_distribution, chain),
        )
        dist = self._flow.distribution
        self._event_shape = tuple(int(d) for d in dist.event_shape)
        self._flow_dtype = tf.as_dtype(base_distribution.dtype)
        self._init_classifier()
        # Build every layer now, eagerly (under the active strategy's scope if any), so no
        # variable is first created inside a traced training step.
        self._build_and_check(steps)
        self.built = True

    def _build_and_check(self, steps: list) -> None:
        """Builds the layers with one pass and refuses variables read but not owned."""
        condition = {}
        if self._context is not None:
            condition = {_context.CONTEXT_KEY: self._context.zeros(self._flow_dtype)}
            if not graph.route_condition(self.bijector, condition):
                raise ValueError(
                    f"FlowModel: {self._context.describe()} makes the flow conditional, but no "
                    "step takes a condition (tfp_nice couplings and ContextAffine do)."
                )
        x = tf.zeros((1,) + self._event_shape, self._flow_dtype)
        read = graph.read_variables(steps, self._flow.base, x, condition)
        owned = set().union(*(compat.variable_refs(v) for v in self.trainable_variables))
        for i, variables in enumerate(read):
            hidden = [v for v in variables if v.ref() not in owned]
            if hidden:
                path = f"steps[{i}]" if i < len(steps) else "base_distribution"
                raise graph.foreign_state_error(
                    _describe(path, steps), path,
                    f"a trainable variable `{hidden[0].name}` that Keras cannot see (for "
                    "example a Keras layer used inside a Python callable FlowModel cannot "
                    "search, or a tf.Variable held by a tf.Module)")

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

    def log_prob(self, x, context=None) -> tf.Tensor:
        """``log p(x)`` per example (``log p(x | context)`` for a conditional flow).

        ``context``: integer labels ``[batch]`` (or one label for all) with ``num_classes``;
        float vectors ``[batch, k]`` (or one ``[k]``) with ``context_shape``.
        """
        x = self._check_x(x)
        kwargs = self._condition(context, x, len(self._event_shape))
        if not kwargs:
            return self.distribution.log_prob(x)
        return self.distribution.log_prob(x, bijector_kwargs=kwargs)

    def sample(self, n: int, seed: Any = None, temperature: float = 1.0,
               context=None) -> tf.Tensor:
        """``n`` samples ``x = f(T · z)``, ``z ~ p_z`` (given ``context`` if conditional).

        Args:
          n: number of samples.
          seed: ``None``, an int, or a stateless seed (shape ``[2]`` ints; the same seed gives
            the same samples).
          temperature: ``T``; ``T < 1`` draws from the base distribution shrunk towards its
            mode at 0 (Glow's "temperature"), giving cleaner but less diverse samples.
          context: for a conditional flow, the labels ``[n]`` (or one label for all ``n``)
            or context vectors ``[n, k]`` (or one ``[k]``) to sample at.
        """
        if isinstance(n, bool) or not (isinstance(n, (int, np.integer)) or tf.is_tensor(n)):
            raise TypeError(f"FlowModel.sample: `n` must be an int >= 0. Received: n={n!r}")
        if isinstance(n, (int, np.integer)) and n < 0:
            raise ValueError(f"FlowModel.sample: `n` must be >= 0. Received: n={n}")
        if isinstance(temperature, (int, float)) and not temperature > 0:
            raise ValueError(
                f"FlowModel.sample: `temperature` must be > 0. Received: temperature={temperature}"
            )
        if self._context is None and context is None and isinstance(
                temperature, (int, float)) and temperature == 1.0:
            return self.distribution.sample(n, seed=seed)
        z = self.base_distribution.sample(n, seed=seed)
        if not (isinstance(temperature, (int, float)) and temperature == 1.0):
            z = z * tf.cast(temperature, z.dtype)
        return self.bijector.forward(z, **self._condition(context, z, self._latent_ndims()))

    def _latent_ndims(self) -> int:
        return len(self.base_distribution.event_shape)

    def encode(self, x, context=None) -> tf.Tensor:
        """Data -> latent: ``z = f^-1(x)`` (``f^-1(x; context)`` if conditional)."""
        x = self._check_x(x)
        return self.bijector.inverse(x, **self._condition(context, x, len(self._event_shape)))

    def decode(self, z, context=None) -> tf.Tensor:
        """Latent -> data: ``x = f(z)``; ``z`` has the base distribution's event shape."""
        latent = tuple(int(d) for d in self.base_distribution.event_shape)
        z = self._check_x(z, "z", latent)
        return self.bijector.forward(z, **self._condition(context, z, len(latent)))

    # --- data-dependent initialisation (ActNorm) ---------------------------------------------
    def initialize_from_data(self, x, force: bool = False, context=None) -> int:
        """Glow's data-dependent initialisation of every :class:`~tfp_nice.bijectors.ActNorm` step.

        Runs the batch ``x`` (with its ``context`` for a conditional flow) from the data side
        through the steps in order; each ActNorm not yet initialised (or every one, with
        ``force``) gets the per-channel mean and log-std of the activations reaching it, so
        the flow starts with normalised activations. Run it eagerly on a batch of
        (dequantized) training data before training; ``fit`` calls it on its first batch
        when needed. The ``initialized`` flags are weights, so a saved and reloaded model is
        not initialised again. Returns the number of steps initialised.
        """
        x = self._check_x(x)
        chain = tfb.Chain(self.steps)
        kwargs = self._condition(context, x, len(self._event_shape), bijector=chain)
        with data_initialization(force=force) as state:
            chain.inverse(x, **kwargs)
        return state["count"]

    def _needs_data_init(self) -> bool:
        return any(isinstance(b, ActNorm) and not b.layer.is_initialized
                   for b in graph.walk(tfb.Chain(self.steps)))

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """``keras.Model.fit``; first initialises uninitialised ActNorm steps on the first batch.

        The first batch is ``x[:batch_size]`` (default 32) for arrays and tensors, or the first
        element of a ``tf.data.Dataset``; see :meth:`initialize_from_data`. A conditional flow
        is fitted on ``(x, context)``: ``fit(x, labels)``, ``fit((x, labels))`` or a dataset of
        ``(x, labels)`` pairs (``validation_data`` likewise).
        """
        if self._context is not None:
            x, y = _context.pack_fit_data(x, y)
            if "validation_data" in kwargs:
                kwargs["validation_data"] = _context.pack_validation_data(
                    kwargs["validation_data"])
        if x is not None and self._needs_data_init():
            batch = _first_inputs(x, batch_size)
            if batch is not None:
                if self._context is not None:
                    xb, cb = _context.split_inputs(batch)
                    self.initialize_from_data(xb, context=cb)
                else:
                    self.initialize_from_data(batch)
        return super().fit(x, y, batch_size, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate``; a conditional flow takes ``(x, context)`` as ``fit`` does."""
        if self._context is not None and not kwargs.get("_use_cached_eval_dataset"):
            x, y = _context.pack_fit_data(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    # --- Keras -------------------------------------------------------------------------------
    def call(self, inputs, training: bool | None = None):
        """Per-example negative log-likelihood ``-log p(x)``; a conditional flow takes pairs
        ``(x, context)`` (or ``{"x": x, "context": c}``) and returns ``-log p(x | context)``."""
        if self._context is None:
            return -self.log_prob(inputs)
        x, context = _context.split_inputs(inputs)
        return -self.log_prob(x, context)

    def compile(self, optimizer="rmsprop", *args, **kwargs):
        """``keras.Model.compile``; with layers computing in float16 (a ``mixed_float16``
        policy) the optimizer is wrapped in ``keras.optimizers.LossScaleOptimizer``.

        Keras wraps it only when the *model's* policy is ``mixed_float16``; a FlowModel's is
        its flow's dtype, so the conditioners' policy decides here. ``auto_scale_loss=False``
        turns this off, as in Keras.
        """
        if kwargs.get("auto_scale_loss", True):
            optimizer = precision.with_loss_scaling(optimizer, self)
        super().compile(optimizer, *args, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """Compiles a loaded model from its saved compile config (as Keras does for models
        whose ``compile`` is not overridden; it skips custom ones)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

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
        if self._context is not None and isinstance(input_shape, (tuple, list)) and \
                isinstance(input_shape[0], (tuple, list)):
            input_shape = input_shape[0]
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
        config.update(self._context_config())
        return config

    @classmethod
    def from_config(cls, config: dict) -> FlowModel:
        config = dict(config)
        base = serialization.deserialize(config.pop("base_distribution"))
        steps = [serialization.deserialize(s) for s in config.pop("steps")]
        return cls(base, steps, **config)


def _first_inputs(x, batch_size):
    """The model inputs of the first batch ``fit`` would see (``x`` or ``(x, context)``), for
    data-dependent initialisation; ``None`` if they cannot be read ahead."""
    size = int(batch_size or 32)
    if isinstance(x, tf.data.Dataset):
        batch = next(iter(x))
        return batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(x, (np.ndarray, tf.Tensor)):
        return x[:size]
    if isinstance(x, (tuple, list)) and all(isinstance(a, (np.ndarray, tf.Tensor)) for a in x):
        return tuple(a[:size] for a in x)
    return None


def _describe(path: str, steps: list) -> str:
    """``"`steps[2]` (Coupling)"`` for a path under a step, else the base distribution."""
    if path.startswith("steps["):
        idx = path.split("]")[0] + "]"
        return f"`{idx}` ({type(steps[int(idx[6:-1])]).__name__})"
    return "`base_distribution`"


def _unique(items: list) -> list:
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out
