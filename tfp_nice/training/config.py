"""What defines a training run: :class:`TrainConfig` and its resolved hyper-parameters.

TensorFlow-free, so the ``tfp-nice`` command checks a configuration before importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfp_nice._internal.checks import (
    check_choice,
    check_int,
    check_int_sequence,
    check_number,
    check_value_range,
)

__all__ = [
    "IMAGE_MODELS",
    "MAX_SEED",
    "MIXED_PRECISIONS",
    "MODEL_NAMES",
    "CONDITIONINGS",
    "IMAGE_CONDITIONERS",
    "LR_DECAYS",
    "STRATEGIES",
    "RUN_LENGTH_HPARAMS",
    "TrainConfig",
    "default_hparams",
    "started_hparams",
]

#: Model names of :class:`TrainConfig` (the presets of :mod:`tfp_nice.presets`).
MODEL_NAMES = ("nice", "realnvp", "realnvp-image", "glow", "nsf")
#: Models built from ``num_scales`` / ``num_blocks`` / ``filters`` (image data only; for
#: ``glow``: levels ``L``, steps of flow per level ``K`` and the coupling networks' width).
IMAGE_MODELS = ("realnvp-image", "glow")
#: ``realnvp-image``'s coupling networks (``conditioner``; :class:`tfp_nice.RealNVPImage`).
IMAGE_CONDITIONERS = ("resnet", "conv")
#: Where a conditional model uses its label (the presets' ``conditioning``).
CONDITIONINGS = ("couplings", "prior", "both")
#: Distribution strategies (see :func:`tfp_nice.distributed.make_strategy`).
STRATEGIES = ("none", "mirrored", "multiworker")
#: ``mixed_precision`` values: the conditioners' compute dtype under a Keras mixed policy
#: (see :mod:`tfp_nice.precision`, which this TensorFlow-free module does not import).
MIXED_PRECISIONS = ("bfloat16", "float16")
#: ``lr_decay`` values: the learning rate's fall over the run (see
#: :class:`tfp_nice.training.callbacks.LearningRateDecay`).
LR_DECAYS = ("none", "cooldown", "linear", "cosine")
#: The largest seed (Keras seeds NumPy, which takes 32-bit seeds).
MAX_SEED = 2**32 - 1
_IMAGE_ONLY = ("num_scales", "num_blocks", "filters")
_VECTOR_ONLY = ("num_couplings", "hidden_units")
#: Fields left out of ``run.json`` while at their default, so runs written before they
#: existed keep matching the same configuration.
_OMITTED_AT_DEFAULT = (*_IMAGE_ONLY, "time_limit", "memory_saving", "conditional",
                       "conditioning", "class_mean_stddev", "mixed_precision", "lr_decay",
                       "conditioner")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (``run.json`` stores it).

    ``None`` hyper-parameters take per-model/per-data defaults (see :func:`default_hparams`).
    ``time_limit`` is a training budget in minutes (training stops cleanly when it is spent,
    counted over every resumption). ``memory_saving`` trains with reversible backprop
    (activations recomputed from outputs: memory flat in depth, under XLA too).
    ``conditional`` trains ``p(x | label)`` on the data's class labels (``num_classes``
    from the data); ``conditioning`` says where the label acts (``"couplings"``,
    ``"prior"`` or ``"both"``; ``None``: per-model default); ``class_mean_stddev`` is the
    spread of the prior's random initial class means (``None``: the presets' default).
    ``mixed_precision`` (``"bfloat16"`` or ``"float16"``) runs the conditioners under that
    Keras mixed policy; the flow stays float32. ``lr_decay`` is how the learning rate falls
    from its starting value over the run: ``"linear"`` or ``"cosine"`` to 0 at the end of the
    time budget (or of ``epochs`` without one), ``"cooldown"`` (constant, then linear to 0
    over the last 20%), ``"none"`` (constant); ``None``: ``"cooldown"`` with a ``time_limit``,
    else ``"none"`` (always ``"none"`` under ``strategy="multiworker"``).

    Raises:
      ValueError: naming the field and the value, for any field out of range.
    """

    model: str = "nice"
    data: str = "digits"
    epochs: int | None = None
    batch_size: int = 64
    learning_rate: float | None = None
    num_couplings: int | None = None
    hidden_units: tuple[int, ...] | None = None
    seed: int = 0
    strategy: str = "none"
    patience: int | None = None
    value_range: tuple[float, float] | None = None
    num_levels: int | None = None
    num_scales: int | None = None
    num_blocks: int | None = None
    filters: int | None = None
    conditioner: str | None = None
    time_limit: float | None = None
    memory_saving: bool = False
    conditional: bool = False
    conditioning: str | None = None
    class_mean_stddev: float | None = None
    mixed_precision: str | None = None
    lr_decay: str | None = None

    def __post_init__(self):
        check_choice(self.model, MODEL_NAMES, "model")
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"`data` must be a non-empty string. Received: data={self.data!r}")
        for name in ("epochs", "batch_size", "num_couplings", "patience", *_IMAGE_ONLY):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name)
        if self.num_levels is not None:
            check_int(self.num_levels, "num_levels", minimum=2, maximum=2**24)
        check_int(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        if self.learning_rate is not None:
            check_number(self.learning_rate, "learning_rate", 0.0, 1.0, low_inclusive=False,
                         high_inclusive=False, what="in (0, 1)")
        if self.time_limit is not None:
            self.time_limit = check_number(self.time_limit, "time_limit", 0.0, 1e6,
                                           low_inclusive=False,
                                           what="a number of minutes in (0, 1e6]")
        if self.hidden_units is not None:
            self.hidden_units = check_int_sequence(self.hidden_units, "hidden_units",
                                                   allow_empty=False)
        if not isinstance(self.memory_saving, bool):
            raise ValueError(f"`memory_saving` must be a bool. "
                             f"Received: memory_saving={self.memory_saving!r}")
        self._check_model_options()
        check_choice(self.strategy, STRATEGIES, "strategy")
        if not isinstance(self.conditional, bool):
            raise ValueError(f"`conditional` must be a bool. Received: "
                             f"conditional={self.conditional!r}")
        if self.conditioning is not None:
            check_choice(self.conditioning, CONDITIONINGS, "conditioning")
        if self.class_mean_stddev is not None:
            self.class_mean_stddev = check_number(self.class_mean_stddev, "class_mean_stddev",
                                                  0.0, 1e6, what="a float in [0, 1e6]")
        for name in ("conditioning", "class_mean_stddev"):
            if getattr(self, name) is not None and not self.conditional:
                raise ValueError(f"`{name}` applies to conditional runs only (set "
                                 f"conditional=True). Received: {name}={getattr(self, name)!r}")
        if self.mixed_precision is not None:
            check_choice(self.mixed_precision, MIXED_PRECISIONS, "mixed_precision")
        if self.lr_decay is not None:
            check_choice(self.lr_decay, LR_DECAYS, "lr_decay")
            if self.lr_decay != "none" and self.strategy == "multiworker":
                raise ValueError("`lr_decay` needs one clock and one batch count, which the "
                                 "workers of a multi-worker run do not share; use 'none'. "
                                 f"Received: lr_decay={self.lr_decay!r} with "
                                 "strategy='multiworker'")
        if self.value_range is not None:
            self.value_range = check_value_range(self.value_range)

    def _check_model_options(self) -> None:
        if self.conditioner is not None:
            check_choice(self.conditioner, IMAGE_CONDITIONERS, "conditioner")
            if self.model != "realnvp-image":
                raise ValueError(f"`conditioner` applies to model 'realnvp-image' only. "
                                 f"Received: conditioner={self.conditioner!r} with model "
                                 f"{self.model!r}")
            if self.conditioner == "conv" and self.num_blocks is not None:
                raise ValueError("`num_blocks` sets the residual blocks of the 'resnet' "
                                 "conditioner; the 'conv' conditioner has none. Received: "
                                 f"num_blocks={self.num_blocks!r} with conditioner='conv'")
        image = self.model in IMAGE_MODELS
        wrong = [n for n in (_VECTOR_ONLY if image else _IMAGE_ONLY)
                 if getattr(self, n) is not None]
        if wrong:
            hint = ("the image model's size is set by num_scales, num_blocks and filters" if image
                    else f"only models {' and '.join(map(repr, IMAGE_MODELS))} take "
                         f"{', '.join(_IMAGE_ONLY)}")
            raise ValueError(
                f"`{wrong[0]}` does not apply to model {self.model!r} ({hint}). "
                f"Received: {wrong[0]}={getattr(self, wrong[0])!r}"
            )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (``run.json``'s ``config``)."""
        d = dataclasses.asdict(self)
        for key in ("hidden_units", "value_range"):
            d[key] = list(d[key]) if d[key] is not None else None
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in _OMITTED_AT_DEFAULT:
            if d[key] == defaults[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Any, strict: bool = False) -> TrainConfig:
        """Rebuilds a config from :meth:`to_dict`'s dict.

        Args:
          d: the dict.
          strict: refuse keys this version does not know (a file from a newer version).

        Raises:
          ValueError: not a dict, unknown keys (``strict``) or invalid values.
        """
        if not isinstance(d, dict):
            raise ValueError(f"the configuration must be a JSON object. Received: {d!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if strict and unknown:
            raise ValueError(f"unknown configuration keys {unknown}")
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except TypeError as e:
            raise ValueError(str(e)) from None

    def same_except(self, other: TrainConfig, *names: str) -> bool:
        """Whether the two configurations are equal apart from the fields ``names``."""
        a, b = self.to_dict(), other.to_dict()
        for name in names:
            a.pop(name, None)
            b.pop(name, None)
        return a == b


def default_hparams(cfg: TrainConfig, spec) -> dict:
    """Resolved hyper-parameters: the user's where given, else defaults for model and data.

    Defaults are sized so ``tfp-nice train`` on the 8×8 digits finishes in a few minutes
    on 2 CPU cores; the NICE paper's MNIST model is ``NICE([784])`` with its defaults.

    Args:
      cfg: the configuration.
      spec: the data's :class:`tfp_nice.data.DataSpec`.
    """
    if cfg.model in IMAGE_MODELS:
        hp = _image_hparams(cfg, spec)
    else:
        hp = _vector_hparams(cfg, spec)
    return {**hp, "lr_decay": _lr_decay(cfg)}


#: The resolved hyper-parameters that follow how long a run trains (``--epochs`` and
#: ``--time-limit`` may change when a finished run is extended); every other one is fixed when
#: the run starts.
RUN_LENGTH_HPARAMS = ("epochs", "patience", "lr_decay")


def started_hparams(hparams: dict, started: dict) -> dict:
    """``hparams`` (this version's :func:`default_hparams`) with the values a run was started
    with (``started``, the ``hparams`` of its ``run.json``) for every key but
    :data:`RUN_LENGTH_HPARAMS`: a run resumed after the defaults changed keeps its architecture
    and recipe, so its checkpoints still fit its model.

    Example:
      >>> started_hparams({"filters": 32, "epochs": 9}, {"filters": 16, "epochs": 4})
      {'filters': 16, 'epochs': 9}
    """
    out = dict(hparams)
    for key, value in started.items():
        if key in out and key not in RUN_LENGTH_HPARAMS:
            out[key] = tuple(value) if isinstance(out[key], tuple) else value
    return out


def _vector_hparams(cfg: TrainConfig, spec) -> dict:
    """Defaults of the vector models (``nice``, ``realnvp``, ``nsf``)."""
    small = spec.num_dims <= 16
    if cfg.model == "nice":
        couplings, hidden = 4, ((64, 64) if small else (256,) * 4)
    elif cfg.model == "nsf":  # 8 bins per unit: fewer, narrower couplings than RealNVP's
        couplings, hidden = (4, (64, 64)) if small else (4, (128, 128))
    else:
        couplings, hidden = (8, (64, 64)) if small else (6, (256, 256))
    return {
        "num_couplings": cfg.num_couplings or couplings,
        "hidden_units": tuple(cfg.hidden_units or hidden),
        "learning_rate": cfg.learning_rate or 1e-3,
        **_epochs(cfg, 60 if small else 150),
    }


#: The epoch bound of a run with a time limit and no ``epochs``: the budget ends it.
UNBOUNDED_EPOCHS = 10**6


def _epochs(cfg: TrainConfig, default: int) -> dict:
    """``epochs`` and ``patience``: the user's, else ``default`` epochs with a patience of
    ``max(10, default / 4)``; with a time limit and no ``epochs`` neither bounds the run (the
    budget ends it, and the learning-rate cooldown at its end, where the validation loss falls
    most, gets to run)."""
    if cfg.epochs is None and cfg.time_limit is not None:
        return {"epochs": UNBOUNDED_EPOCHS, "patience": cfg.patience or UNBOUNDED_EPOCHS}
    epochs = cfg.epochs or default
    return {"epochs": epochs, "patience": cfg.patience or max(10, epochs // 4)}


def _lr_decay(cfg: TrainConfig) -> str:
    """The user's ``lr_decay``, else with a time budget ``"cooldown"`` (the rate constant, then
    to 0 over the budget's last 20%: Hägele et al. 2024; on 28x28 MNIST in 4 minutes 1.569
    held-out bits/dim against 1.577 constant and, for the ResNet recipe, a linear decay from
    the start 1.700 against 1.643), else constant (``"none"``)."""
    if cfg.lr_decay is not None:
        return cfg.lr_decay
    return "cooldown" if cfg.time_limit is not None and cfg.strategy != "multiworker" else "none"


def _default_num_scales(height: int, width: int) -> int:
    """The most scales (up to 3) whose smallest image is still at least 4x4 pixels."""
    scales = 1
    while scales < 3:
        f = 2**scales
        if height % f or width % f or min(height, width) // f < 4:
            break
        scales += 1
    return scales


def _image_hparams(cfg: TrainConfig, spec) -> dict:
    """Defaults of ``realnvp-image``. Images of at most 16x16 pixels (the 8x8 digits: 2
    scales): RealNVP's ResNet conditioner, 2 residual blocks of 16 filters, Adam 1e-3, XLA.
    Larger images (28x28, 32x32: 3 scales) get a recipe for minutes on 2 CPU cores: Glow's
    small plain ``3x3 -> 1x1 -> 3x3`` network (``conditioner="conv"``, no weight norm) with 16
    base filters at Adam 2e-3, no XLA (issue #14, 28x28 MNIST, 4 minutes alone: 1.577 held-out
    bits/dim, as with 8 filters, against 1.643 with the ResNet at 8 filters and 1.717 at 16);
    colour images get 32 base filters (32x32x3 photo patches, 4 minutes: 3.04 held-out bits/dim
    against 3.12 at 16 and 3.17 at 8, ``bench/image_budget_probes.md``)."""
    if len(spec.event_shape) != 3:
        raise ValueError(
            f"Model {cfg.model!r} needs image data [height, width, channels]. "
            f"Received data {spec.name!r} with event shape {list(spec.event_shape)}"
        )
    if cfg.model == "glow":
        return _glow_hparams(cfg, spec)
    small = _small(spec)
    return {
        "num_scales": cfg.num_scales or _default_num_scales(*spec.event_shape[:2]),
        "num_blocks": cfg.num_blocks or (2 if small else 1),
        "filters": cfg.filters or (32 if not small and spec.event_shape[-1] >= 3 else 16),
        "conditioner": cfg.conditioner or ("resnet" if small else "conv"),
        "learning_rate": cfg.learning_rate or (1e-3 if small else 2e-3),
        **_epochs(cfg, 40),
        "jit_compile": small,
    }


def _small(spec) -> bool:
    """Images of at most 16x16 pixels: XLA speeds their steps up; on larger images XLA's CPU
    convolutions are slower than TensorFlow's (``bench/image_speed.md``), so no XLA there."""
    return spec.event_shape[0] * spec.event_shape[1] <= 256


def _glow_hparams(cfg: TrainConfig, spec) -> dict:
    """Defaults of ``glow`` (:func:`tfp_nice.presets.glow_defaults`: ``L`` from the image size,
    ``K=8``, 32 filters), Adam at 2e-3. ``num_scales`` / ``num_blocks`` set ``L`` / ``K``."""
    from tfp_nice.presets.glow import glow_defaults  # (imports TensorFlow: only when needed)

    base = glow_defaults(list(spec.event_shape))
    return {
        "num_scales": cfg.num_scales or base["num_levels"],
        "num_blocks": cfg.num_blocks or base["num_steps"],
        "filters": cfg.filters or base["filters"],
        "learning_rate": cfg.learning_rate or 2e-3,
        **_epochs(cfg, 40),
        "jit_compile": _small(spec),
    }
