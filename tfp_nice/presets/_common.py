"""What every preset shares: its config, argument checks, preprocessing and coupling builders."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow_probability as tfp

from tfp_nice import layers, masks, precision, preprocessing, priors
from tfp_nice._internal.checks import check_choice, check_event_shape, check_int
from tfp_nice.bijectors import ContextAffine
from tfp_nice.flow_model import FlowModel

tfb = tfp.bijectors

__all__ = [
    "CONDITIONINGS",
    "Conditioning",
    "Preset",
    "alternating_couplings",
    "check_logit",
    "data_steps",
    "flatten_step",
    "preset_event_shape",
    "vector_flow_start",
    "vector_mask",
]


class Preset(FlowModel):
    """A FlowModel built from a few hyper-parameters; its config is those hyper-parameters.

    Subclasses set ``self._preset_config`` (the constructor's arguments) after building.
    A preset built under a mixed policy records it (``"mixed_precision"``) and is rebuilt
    under it, so a loaded model keeps half-precision conditioners.
    """

    _preset_config: dict

    def get_config(self) -> dict:
        config = keras.Model.get_config(self)
        config.update(self._preset_config)
        if self.memory_saving:
            config["memory_saving"] = True
        half = precision.model_precision(self)
        if half is not None:
            config["mixed_precision"] = half
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        half = config.pop("mixed_precision", None)
        if half is None:
            return cls(**config)
        with precision.policy_scope(half):
            return cls(**config)


#: Where a conditional preset uses its context (``conditioning=``).
CONDITIONINGS = ("couplings", "prior", "both")


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """How a preset is conditioned: its couplings, a class-conditional prior, or both.

    ``couplings``: every coupling's conditioner sees the context (concatenated to ``x1``, or
    as constant feature maps). ``prior``: a :class:`~tfp_nice.ContextAffine` step nearest the
    latent gives each class (context) its own latent mean and scale (FlowGMM); the couplings
    are shared and unconditioned. ``both``: the two (the presets' default: on the digits it
    classified best and had the lowest held-out bits/dim, ``bench/conditioning_digits.md``).
    """

    num_classes: int | None = None
    context_shape: tuple[int, ...] | None = None
    where: str = "both"

    @classmethod
    def from_args(cls, num_classes, context_shape, conditioning: str) -> Conditioning:
        check_choice(conditioning, CONDITIONINGS, "conditioning")
        shape = None if context_shape is None else tuple(context_shape)
        return cls(num_classes, shape, conditioning)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None or self.context_shape is not None

    @property
    def couplings(self) -> bool:
        """Whether the couplings take the context."""
        return self.conditional and self.where in ("couplings", "both")

    def prior_steps(self, latent_shape: Sequence[int]) -> list:
        """``[ContextAffine]`` nearest the latent when the prior is conditioned, else ``[]``."""
        if self.conditional and self.where in ("prior", "both"):
            return [ContextAffine(list(latent_shape), name="context_prior")]
        return []

    def model_kwargs(self) -> dict:
        """``FlowModel`` arguments (``num_classes`` / ``context_shape``)."""
        return dict(num_classes=self.num_classes,
                    context_shape=None if self.context_shape is None else list(self.context_shape))

    def config(self) -> dict:
        """The preset config entries (none for an unconditional preset, so its config is
        unchanged)."""
        if not self.conditional:
            return {}
        return dict(self.model_kwargs(), conditioning=self.where)


def preset_event_shape(event_shape) -> tuple[int, ...]:
    """The data event shape of a coupling flow: positive ints, at least 2 units."""
    shape = check_event_shape(event_shape, example="[784] or [8, 8, 1]")
    if int(np.prod(shape)) < 2:
        raise ValueError(f"A coupling flow needs at least 2 dimensions. Received: {list(shape)}")
    return shape


def check_logit(logit_alpha, data_scale) -> None:
    """The logit acts on data rescaled to ``[0, 1)``: it needs ``data_scale``."""
    if logit_alpha is not None and data_scale is None:
        raise ValueError(
            "`logit_alpha` needs `data_scale` (the logit acts on data rescaled to [0, 1)). "
            f"Received: logit_alpha={logit_alpha!r}, data_scale=None"
        )


def data_steps(data_scale, data_low, logit_alpha) -> list:
    """Preprocessing steps nearest the data (rescale to ``[0, 1)``, RealNVP's logit)."""
    steps = []
    if data_scale is not None:
        steps += preprocessing.rescale(data_scale, data_low)
    if logit_alpha is not None:
        steps += preprocessing.logit(logit_alpha)
    return steps


def flatten_step(event_shape: Sequence[int]) -> list:
    """A ``tfb.Reshape`` that flattens an image event to a vector (none for vectors)."""
    if len(event_shape) == 1:
        return []
    size = int(np.prod(event_shape))
    return [tfb.Reshape(event_shape_out=list(event_shape), event_shape_in=[size])]


def vector_mask(kind: str, size: int) -> masks.Mask:
    """The first coupling's mask of a vector preset: ``"even_odd"`` or ``"half"``."""
    if kind == "even_odd":
        return masks.even_odd(size)
    if kind == "half":
        return masks.half(size, num_masked=size // 2)
    raise ValueError(f"`mask` must be 'even_odd' or 'half'. Received: mask={kind!r}")


def alternating_couplings(num: int, first: masks.Mask, hidden_units, activation: str,
                          make: Callable, units_per_unit: int) -> list:
    """``num`` couplings whose masks alternate ``first`` / its complement (the halves swap);
    ``make(net, mask, i)`` builds coupling ``i`` around its :class:`MLPConditioner` (which
    takes a context, if the coupling passes one, concatenated to ``x1``)."""
    steps = []
    for i in range(num):
        m = first if i % 2 == 0 else first.complement()
        net = layers.MLPConditioner(units_per_unit * m.num_transformed, tuple(hidden_units),
                                    activation, name=f"coupling_{i}_net")
        steps.append(make(net, m, i))
    return steps


def vector_flow_start(event_shape, num_couplings, prior: str, mask: str, data_scale, data_low,
                      logit_alpha) -> tuple:
    """What every vector preset starts from: ``(event_shape, num_couplings, base, first_mask,
    steps)`` with the arguments checked and the data-side steps (preprocessing, flatten)."""
    event_shape = preset_event_shape(event_shape)
    num_couplings = check_int(num_couplings, "num_couplings")
    check_logit(logit_alpha, data_scale)
    size = int(np.prod(event_shape))
    steps = data_steps(data_scale, data_low, logit_alpha) + flatten_step(event_shape)
    return event_shape, num_couplings, priors.get(prior, [size]), vector_mask(mask, size), steps


def image_event_shape(owner: str, event_shape) -> tuple[int, ...]:
    """``event_shape`` checked as ``[height, width, channels]`` for the image preset ``owner``."""
    shape = preset_event_shape(event_shape)
    if len(shape) != 3:
        raise ValueError(
            f"{owner}: `event_shape` must be [height, width, channels]. "
            f"Received: event_shape={list(shape)}"
        )
    return shape


def check_divisible(owner: str, shape: Sequence[int], div: int, setting: str, power: str) -> None:
    """Refuses an image whose height or width is not a multiple of ``div`` (= ``power``)."""
    if shape[0] % div or shape[1] % div:
        raise ValueError(
            f"{owner}: with {setting} the height and width must be divisible by {power} = "
            f"{div}. Received: event_shape={list(shape)}"
        )


def image_flow(shape: Sequence[int], hp: dict, build_steps: Callable, cond: Conditioning,
               prior: str, data_scale, data_low, logit_alpha) -> tuple:
    """What an image preset hands to ``FlowModel``: ``(base, steps, preset config)``, with the
    data-side steps first, ``build_steps(shape, 0, hp)`` (the levels, recursively) and the
    class-conditional prior nearest the latent."""
    check_logit(logit_alpha, data_scale)
    steps = data_steps(data_scale, data_low, logit_alpha) + build_steps(
        list(shape), 0, dict(hp, conditional=cond.couplings))
    steps += cond.prior_steps(list(shape))
    config = dict(event_shape=list(shape), **hp, prior=prior, data_scale=data_scale,
                  data_low=data_low, logit_alpha=logit_alpha, **cond.config())
    return priors.get(prior, list(shape)), steps, config
