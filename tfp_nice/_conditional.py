"""What a conditional :class:`tfp_nice.FlowModel` adds: its context, and the Bayes classifier.

* the context (``num_classes`` labels or a ``context_shape`` vector) routed to the steps as the
  condition keyword ``context`` (:meth:`ConditionalMixin._condition`);
* a class-conditional flow as a Bayes classifier ``argmax_c log p(x | c) + log p(c)``;
* what the serving export needs (:attr:`ConditionalMixin.serving_condition`, the input it
  adds to every signature, and :meth:`ConditionalMixin.conditional_bijector`, the flow for
  one batch of conditions).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import _context, graph

__all__ = ["ConditionalMixin"]

tfb = tfp.bijectors


class ConditionalMixin:
    """Methods of :class:`tfp_nice.FlowModel` for conditional flows.

    Expects ``self._context`` (a :class:`~tfp_nice._context.ContextSpec` or ``None``) and
    ``self.bijector``. The class prior ``log p(c)`` of a class-conditional flow is a
    non-trainable weight (uniform until :meth:`set_class_prior`), saved with the model.
    """

    @property
    def conditional(self) -> bool:
        """Whether the flow models ``p(x | context)``."""
        return self._context is not None

    @property
    def num_classes(self) -> int | None:
        """``K`` for a class-conditional flow, else ``None``."""
        return None if self._context is None else self._context.num_classes

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        """The vector context's shape ``(k,)``, else ``None``."""
        return None if self._context is None else self._context.context_shape

    def _condition(self, context, x: tf.Tensor, event_ndims: int, arg: str = "context",
                   bijector=None) -> dict:
        """The keyword arguments carrying ``context`` to the steps of ``bijector`` (default
        the flow's) that take it; ``{}`` for an unconditional flow (or part of one)."""
        bijector = self.bijector if bijector is None else bijector
        if self._context is None:
            if context is not None:
                raise ValueError(
                    f"FlowModel: `{arg}` was given but the flow is not conditional (build it "
                    f"with num_classes or context_shape). Received: {arg} of type "
                    f"{type(context).__name__}"
                )
            return {}
        if context is None and not graph.route_condition(
                bijector, {_context.CONTEXT_KEY: None}):
            return {}  # no step of this part takes the context
        c = self._context.condition(context, x, event_ndims, arg)
        return graph.route_condition(bijector, {_context.CONTEXT_KEY: c})

    # --- serving ---------------------------------------------------------------------------

    @property
    def serving_condition(self) -> str | tuple[str, int] | None:
        """The condition input of the serving export (:mod:`tfp_nice.export.signatures`):
        ``"label"`` (int32 ``[batch]``) for ``num_classes``, ``("context", k)`` (float32
        ``[batch, k]``) for ``context_shape=[k]``, ``None`` for an unconditional flow."""
        if self._context is None:
            return None
        if self._context.num_classes is not None:
            return "label"
        return ("context", self._context.width)

    def conditional_bijector(self, context) -> tfb.Bijector:
        """The flow's bijector with its condition fixed to ``context`` (latent -> data).

        ``b = model.conditional_bijector(labels)`` takes no condition keywords:
        ``b.forward(z)`` is ``f(z; c)`` and ``b.inverse(x)`` / ``b.inverse_log_det_jacobian(x)``
        are ``f^-1(x; c)`` and its log-det, so ``log p(x | c) =
        base.log_prob(b.inverse(x)) + b.inverse_log_det_jacobian(x)``. The context is checked
        as in :meth:`log_prob` (in the graph for symbolic labels: an ``InvalidArgumentError``
        for a label outside ``[0, K)``); errors name it as the serving input does, ``label``
        (class labels) or ``context`` (vectors). Use it for one batch of data (its rows are the
        context's rows).

        Example:
          >>> import numpy as np, tfp_nice as tn
          >>> m = tn.RealNVP([2], num_couplings=2, hidden_units=(8,), num_classes=3)
          >>> b = m.conditional_bijector([0, 2])
          >>> b.inverse(np.zeros([2, 2], "float32")).shape
          TensorShape([2, 2])
        """
        if self._context is None:
            raise ValueError(
                "FlowModel.conditional_bijector needs a conditional flow (built with "
                "num_classes or context_shape). Received a flow with num_classes=None and "
                "context_shape=None; use `model.bijector`"
            )
        return _Conditioned(self, context)

    def _context_config(self) -> dict:
        if self._context is None:
            return {}
        if self._context.num_classes is not None:
            return {"num_classes": self._context.num_classes}
        return {"context_shape": list(self._context.context_shape)}

    # --- the Bayes classifier ------------------------------------------------------------

    def _init_classifier(self) -> None:
        self.class_log_prior = None
        k = self.num_classes
        if k is not None:
            self.class_log_prior = self.add_weight(
                name="class_log_prior", shape=(k,), trainable=False, dtype=self._flow_dtype,
                initializer=keras.initializers.Constant(-math.log(k)),
            )

    def _require_classes(self, method: str) -> int:
        if self.num_classes is None:
            raise ValueError(
                f"FlowModel.{method} needs a class-conditional flow (built with num_classes). "
                f"Received a flow with num_classes=None"
            )
        return self.num_classes

    def set_class_prior(self, labels: Any = None, counts: Any = None) -> np.ndarray:
        """Sets ``log p(c)`` from training ``labels`` (their frequencies) or class ``counts``.

        Classes that never occur get a count of 1/2 (so their log-prior stays finite).
        Returns the new ``log p(c)``.

        Example:
          >>> model.set_class_prior(labels=y_train)          # doctest: +SKIP
        """
        k = self._require_classes("set_class_prior")
        if (labels is None) == (counts is None):
            raise ValueError(
                "FlowModel.set_class_prior: give exactly one of `labels` and `counts`. "
                f"Received: labels={'<given>' if labels is not None else None}, "
                f"counts={'<given>' if counts is not None else None}"
            )
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if not np.issubdtype(labels.dtype, np.integer) or labels.size == 0 or (
                    labels.min() < 0 or labels.max() >= k):
                raise ValueError(
                    f"FlowModel.set_class_prior: `labels` must be integer labels in [0, {k}). "
                    f"Received: {labels.size} labels of dtype {labels.dtype}"
                )
            counts = np.bincount(labels, minlength=k)
        counts = np.asarray(counts, np.float64).reshape(-1)
        if counts.shape != (k,) or np.any(counts < 0) or not np.all(np.isfinite(counts)):
            raise ValueError(
                f"FlowModel.set_class_prior: `counts` must be {k} non-negative numbers. "
                f"Received: counts={counts.tolist()}"
            )
        counts = np.where(counts > 0, counts, 0.5)
        log_prior = np.log(counts / counts.sum())
        self.class_log_prior.assign(log_prior.astype(self._flow_dtype.as_numpy_dtype))
        return log_prior

    def log_prob_per_class(self, x) -> tf.Tensor:
        """``log p(x | c)`` for every class: ``[batch, K]``, one pass over ``K`` copies of
        the batch (split large data into batches)."""
        k = self._require_classes("log_prob_per_class")
        x = self._check_x(x)
        n = len(self._event_shape)
        tiled = tf.broadcast_to(x[tf.newaxis], tf.concat([[k], tf.shape(x)], axis=0))
        batch_rank = x.shape.rank - n
        labels = tf.reshape(tf.range(k), [k] + [1] * batch_rank)
        labels = tf.broadcast_to(labels, tf.shape(tiled)[: batch_rank + 1])
        log_probs = self.log_prob(tiled, labels)  # [K, batch...]
        return tf.transpose(log_probs, list(range(1, batch_rank + 1)) + [0])

    def classify(self, x, class_log_prior=None) -> tf.Tensor:
        """The Bayes classifier: ``argmax_c log p(x | c) + log p(c)`` as ``int32 [batch]``.

        Args:
          x: a batch of data.
          class_log_prior: ``log p(c)`` ``[K]``; default the model's (see
            :meth:`set_class_prior`; uniform until set).
        """
        self._require_classes("classify")
        prior = self.class_log_prior if class_log_prior is None else class_log_prior
        scores = self.log_prob_per_class(x)
        scores = scores + tf.cast(tf.convert_to_tensor(prior), scores.dtype)
        return tf.argmax(scores, axis=-1, output_type=tf.int32)


class _Conditioned(tfb.Bijector):
    """A conditional flow's bijector with its condition bound (see
    :meth:`ConditionalMixin.conditional_bijector`).

    The condition keywords are made once per direction (from the first tensor that direction
    sees) and reused, so ``inverse`` and ``inverse_log_det_jacobian`` of the same ``x`` share
    one pass of every conditioner (TFP's cache keys on the keywords too).
    """

    def __init__(self, model, context, name: str = "conditioned_flow"):
        parameters = dict(locals())
        self._model, self._context_value = model, context
        self._latent_ndims = len(model.base_distribution.event_shape)
        self._data_ndims = len(model.event_shape)
        self._kwargs: dict = {}
        kind = model.serving_condition  # errors name the serving input: `label` / `context`
        self._arg = kind if isinstance(kind, str) else kind[0]
        super().__init__(forward_min_event_ndims=self._latent_ndims,
                         inverse_min_event_ndims=self._data_ndims, is_constant_jacobian=False,
                         parameters=parameters, name=name)

    def _route(self, x, direction: str) -> dict:
        if direction not in self._kwargs:
            ndims = self._latent_ndims if direction == "forward" else self._data_ndims
            self._kwargs[direction] = self._model._condition(self._context_value, x, ndims,
                                                             arg=self._arg)
        return self._kwargs[direction]

    def _forward(self, z):
        return self._model.bijector.forward(z, **self._route(z, "forward"))

    def _inverse(self, x):
        return self._model.bijector.inverse(x, **self._route(x, "inverse"))

    def _forward_log_det_jacobian(self, z):
        return self._model.bijector.forward_log_det_jacobian(
            z, event_ndims=self._latent_ndims, **self._route(z, "forward"))

    def _inverse_log_det_jacobian(self, x):
        return self._model.bijector.inverse_log_det_jacobian(
            x, event_ndims=self._data_ndims, **self._route(x, "inverse"))
