"""What every preset shares: its config, argument checks, preprocessing and coupling builders."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import keras
import numpy as np
import tensorflow_probability as tfp

from tfp_nice import layers, masks, precision, preprocessing, priors
from tfp_nice._internal.checks import check_choice, check_event_shape, check_int, check_number
from tfp_nice.bijectors import ContextAffine
from tfp_nice.flow_model import FlowModel

tfb = tfp.bijectors

__all__ = [
    "CONDITIONINGS",
    "Conditioning",
    "LogitPresetOptions",
    "Preset",
    "PresetOptions",
    "SharedOptions",
    "alternating_couplings",
    "flatten_step",
    "preset_event_shape",
    "vector_flow",
    "vector_mask",
]


class Preset(FlowModel):
    """A FlowModel built from a few hyper-parameters; its config is those hyper-parameters.

    A subclass builds its flow and hands it here with its own arguments (the config) and its
    shared keyword options (:class:`SharedOptions`, appended to the config).
    A preset built under a mixed policy records it (``"mixed_precision"``) and is rebuilt
    under it, so a loaded model keeps half-precision conditioners.
    """

    _preset_config: dict

    def __init__(self, base, steps: list, options: SharedOptions, config: dict, **kwargs):
        """``FlowModel(base, steps)``, conditioned as ``options`` say; its config is ``config``
        (the preset's own arguments) followed by the shared options."""
        super().__init__(base, steps, **options.cond.model_kwargs(), **kwargs)
        self._preset_config = dict(config, **options.config())

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

#: The spread of the random initial class means of a class-conditional prior (FlowGMM's
#: initialisation, :class:`~tfp_nice.ContextAffine` ``mean_stddev``) when it is left to the
#: preset (``class_mean_stddev=None``) and the latent has at least ``SPREAD_MIN_UNITS`` units;
#: measured in ``bench/conditional_mnist_sweep.md``.
CLASS_MEAN_STDDEV = 1.5
#: Random means help where they are nearly orthogonal to the data (the digits' 64 units,
#: MNIST's 784); on 2-D data they can land on another class's side, which a flow must undo
#: (a two-cluster toy: accuracy 0.74-1.0 and 1.5-4.0 bits/dim over 5 seeds, against 1.0 and
#: 2.25 without). Smaller latents start every class at 0.
SPREAD_MIN_UNITS = 64


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """How a preset is conditioned: its couplings, a class-conditional prior, or both.

    ``couplings``: every coupling's conditioner sees the context (concatenated to ``x1``, or
    as constant feature maps). ``prior``: a :class:`~tfp_nice.ContextAffine` step nearest the
    latent gives each class (context) its own latent mean and scale (FlowGMM); the couplings
    are shared and unconditioned. ``both``: the two. Class means start apart, drawn
    ``N(0, class_mean_stddev^2 I)`` (FlowGMM's initialisation; :meth:`spread`).
    Defaults: ``prior`` for the vector presets (with the spread, the best classifier on the
    digits and MNIST, ``bench/conditional_mnist_sweep.md``), ``both`` for the image presets.
    """

    num_classes: int | None = None
    context_shape: tuple[int, ...] | None = None
    where: str = "both"
    class_mean_stddev: float | None = None

    @classmethod
    def from_args(cls, num_classes, context_shape, conditioning: str,
                  class_mean_stddev: float | None = None) -> Conditioning:
        check_choice(conditioning, CONDITIONINGS, "conditioning")
        if class_mean_stddev is not None:
            class_mean_stddev = check_number(class_mean_stddev, "class_mean_stddev", low=0.0,
                                             what="a float >= 0 (or None: by latent size)")
        shape = None if context_shape is None else tuple(context_shape)
        return cls(num_classes, shape, conditioning, class_mean_stddev)

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
            return [ContextAffine(list(latent_shape), mean_stddev=self.spread(latent_shape),
                                  name="context_prior")]
        return []

    def spread(self, latent_shape: Sequence[int]) -> float:
        """The initial class means' stddev: ``class_mean_stddev``, or by default
        ``CLASS_MEAN_STDDEV`` for latents of at least ``SPREAD_MIN_UNITS`` units, else 0;
        0 for vector contexts."""
        if self.num_classes is None:
            return 0.0
        if self.class_mean_stddev is not None:
            return self.class_mean_stddev
        big = int(np.prod(latent_shape)) >= SPREAD_MIN_UNITS
        return CLASS_MEAN_STDDEV if big else 0.0

    def model_kwargs(self) -> dict:
        """``FlowModel`` arguments (``num_classes`` / ``context_shape``)."""
        return dict(num_classes=self.num_classes,
                    context_shape=None if self.context_shape is None else list(self.context_shape))

    def config(self) -> dict:
        """The preset config entries (none for an unconditional preset, so its config is
        unchanged)."""
        if not self.conditional:
            return {}
        config = dict(self.model_kwargs(), conditioning=self.where)
        if self.num_classes is not None:
            config["class_mean_stddev"] = self.class_mean_stddev
        return config


def preset_event_shape(event_shape) -> tuple[int, ...]:
    """The data event shape of a coupling flow: positive ints, at least 2 units."""
    shape = check_event_shape(event_shape, example="[784] or [8, 8, 1]")
    if int(np.prod(shape)) < 2:
        raise ValueError(f"A coupling flow needs at least 2 dimensions. Received: {list(shape)}")
    return shape


class PresetOptions(TypedDict, total=False):
    """The keyword options every preset takes after its own (``**kwargs``): the data range
    (:class:`~tfp_nice.NICE`), a conditional flow (:class:`~tfp_nice.RealNVP`), and
    ``FlowModel`` / ``keras.Model`` arguments. Defaults: ``data_scale=None, data_low=0.0,
    num_classes=None, context_shape=None, conditioning="prior"`` (vector presets) or
    ``"both"`` (image presets), ``class_mean_stddev=None`` (1.5 for latents of 64 units or
    more, else 0)."""

    data_scale: float | None
    data_low: float
    num_classes: int | None
    context_shape: Sequence[int] | None
    conditioning: str
    class_mean_stddev: float | None
    memory_saving: bool
    name: str
    trainable: bool
    dtype: Any


class LogitPresetOptions(PresetOptions, total=False):
    """:class:`PresetOptions` and RealNVP's logit (``logit_alpha=None``; see
    :class:`~tfp_nice.RealNVP`)."""

    logit_alpha: float | None


@dataclasses.dataclass(frozen=True)
class SharedOptions:
    """The shared options of a preset (:class:`PresetOptions`), taken out of its ``**kwargs``
    and checked: the data range, the logit (where the preset takes one) and the conditioning."""

    data_scale: float | None
    data_low: float
    logit_alpha: float | None
    takes_logit: bool
    cond: Conditioning

    @classmethod
    def pop(cls, kwargs: dict, takes_logit: bool = True,
            conditioning: str = "both") -> SharedOptions:
        """Takes the shared options out of ``kwargs`` (what is left is ``FlowModel``'s);
        ``conditioning`` is the preset's default."""
        data_scale = kwargs.pop("data_scale", None)
        logit_alpha = kwargs.pop("logit_alpha", None) if takes_logit else None
        if logit_alpha is not None and data_scale is None:  # the logit acts on [0, 1) data
            raise ValueError(
                "`logit_alpha` needs `data_scale` (the logit acts on data rescaled to [0, 1)). "
                f"Received: logit_alpha={logit_alpha!r}, data_scale=None"
            )
        cond = Conditioning.from_args(kwargs.pop("num_classes", None),
                                      kwargs.pop("context_shape", None),
                                      kwargs.pop("conditioning", conditioning),
                                      kwargs.pop("class_mean_stddev", None))
        return cls(data_scale, kwargs.pop("data_low", 0.0), logit_alpha, takes_logit, cond)

    def data_steps(self) -> list:
        """Preprocessing steps nearest the data (rescale to ``[0, 1)``, RealNVP's logit)."""
        steps = []
        if self.data_scale is not None:
            steps += preprocessing.rescale(self.data_scale, self.data_low)
        if self.logit_alpha is not None:
            steps += preprocessing.logit(self.logit_alpha)
        return steps

    def config(self) -> dict:
        """The preset config entries of the shared options."""
        config = dict(data_scale=self.data_scale, data_low=self.data_low)
        if self.takes_logit:
            config["logit_alpha"] = self.logit_alpha
        return dict(config, **self.cond.config())


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


def vector_flow(event_shape, hp: dict, options: SharedOptions, make: Callable,
                units_per_unit: int, scaling: Callable | None = None) -> tuple:
    """What a vector preset hands to :class:`Preset`: ``(base, steps, own config)``.

    ``hp``: the preset's own arguments in config order (``num_couplings``, ``hidden_units``,
    ``activation``, ``prior``, ``mask`` and its others). From the data side: the preprocessing,
    a flatten, ``num_couplings`` couplings ``make(net, mask, i)`` with alternating masks
    (:func:`alternating_couplings`), ``scaling(size)`` if given, the class-conditional prior.
    """
    event_shape = preset_event_shape(event_shape)
    num_couplings = check_int(hp["num_couplings"], "num_couplings")
    size = int(np.prod(event_shape))
    base = priors.get(hp["prior"], [size])
    steps = options.data_steps() + flatten_step(event_shape) + alternating_couplings(
        num_couplings, vector_mask(hp["mask"], size), hp["hidden_units"], hp["activation"], make,
        units_per_unit)
    steps += [] if scaling is None else scaling(size)
    steps += options.cond.prior_steps([size])
    config = dict(event_shape=list(event_shape), **hp)
    config.update(num_couplings=num_couplings, hidden_units=list(hp["hidden_units"]))
    return base, steps, config
