"""What a conditional :class:`tfp_nice.FlowModel` adds: its context, and the Bayes classifier.

* the context (``num_classes`` labels or a ``context_shape`` vector) routed to the steps as the
  condition keyword ``context`` (:meth:`ConditionalMixin._condition`);
* a class-conditional flow as a Bayes classifier ``argmax_c log p(x | c) + log p(c)``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfp_nice import _context, graph

__all__ = ["ConditionalMixin"]


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
