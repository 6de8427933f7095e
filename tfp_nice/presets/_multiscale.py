"""Multi-scale layouts: which scale each latent unit of a FactorOut-nested flow belongs to, and
the per-scale methods the multi-scale presets share (:class:`MultiScale`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_nice import graph
from tfp_nice.bijectors import ContextAffine, FactorOut

__all__ = ["MultiScale", "latent_scale_labels"]


def latent_scale_labels(steps: Sequence, latent_shape: Sequence[int]) -> np.ndarray:
    """An int array of ``latent_shape``: the scale at which each latent unit leaves the flow.

    Reads the layout off the steps themselves: the units a :class:`FactorOut` factors out
    belong to its scale ``i``, those its inner flow keeps to scale ``i + 1`` (recursively),
    and the shape steps between the FactorOut and the latent (squeezes) carry the labels to
    latent positions. A flow without a FactorOut is one scale. An elementwise
    :class:`~tfp_nice.ContextAffine` prior moves no unit and is left out.
    """
    steps = [b for b in graph.flatten_chains(steps) if not isinstance(b, ContextAffine)]
    return _labels(steps, list(latent_shape), 0).astype(np.int32)


def _labels(steps: list, latent_shape: list, scale: int) -> np.ndarray:
    j = next((k for k, b in enumerate(steps) if isinstance(b, FactorOut)), None)
    if j is None:
        return np.full(latent_shape, float(scale))
    shape = tf.TensorShape(latent_shape)
    for b in reversed(steps[j + 1 :]):  # latent -> the FactorOut's latent side
        shape = b.forward_event_shape(shape)
    shape = shape.as_list()
    factor_out = steps[j]
    kept = factor_out.num_kept if factor_out.num_kept is not None else shape[-1] // 2
    inner = _labels(graph.flatten_chains([factor_out.bijector]), shape[:-1] + [kept], scale + 1)
    labels = np.concatenate([inner, np.full(shape[:-1] + [shape[-1] - kept], float(scale))], -1)
    for b in steps[j + 1 :]:  # the FactorOut's latent side -> latent positions
        labels = b.inverse(labels[None]).numpy()[0]
    return labels


class MultiScale:
    """Per-scale methods of a :class:`tfp_nice.FlowModel` whose steps nest ``FactorOut`` s.

    Mixed into the multi-scale presets (:class:`tfp_nice.RealNVPImage`, :class:`tfp_nice.Glow`).
    """

    def latent_scales(self) -> np.ndarray:
        """Which scale each latent unit belongs to: an int array of the latent shape.

        ``0`` marks the units factored out after the first scale (fine detail), ...,
        ``num_scales - 1`` the units that went through every scale (coarse structure).
        """
        latent = [int(d) for d in self.base_distribution.event_shape]
        return latent_scale_labels(self.steps, latent)

    def resample_scale(self, z, scale: int, seed: Any = None, temperature: float = 1.0,
                       context=None):
        """Decodes latents ``z`` with the units of one scale redrawn from ``T · N(0, I)``.

        A grid of these shows what each scale encodes (RealNVP [2] Fig. 6): redrawing the last
        scale changes the global shape, redrawing scale 0 only local detail. A conditional
        model decodes at ``context``.
        """
        latent = tuple(int(d) for d in self.base_distribution.event_shape)
        z = self._check_x(z, "z", latent)
        where = tf.constant(self.latent_scales() == int(scale))
        fresh = self.base_distribution.sample(tf.shape(z)[0], seed=seed)
        fresh = fresh * tf.cast(temperature, fresh.dtype)
        z = tf.where(where, fresh, z)
        return self.bijector.forward(z, **self._condition(context, z, len(latent)))
