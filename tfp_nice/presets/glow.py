"""Glow (Kingma & Dhariwal 2018): ActNorm, invertible 1x1 convolutions, affine couplings."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow_probability as tfp
from typing_extensions import Unpack

from tfp_nice import _math, masks
from tfp_nice._internal.checks import check_choice, check_int
from tfp_nice.bijectors import ActNorm, FactorOut, Invertible1x1Conv, Squeeze
from tfp_nice.layers import ActNormLayer, ConvConditioner, Invertible1x1ConvLayer
from tfp_nice.presets._common import LogitPresetOptions, Preset, SharedOptions
from tfp_nice.presets._image import (
    IMAGE_COUPLINGS,
    image_coupling,
    image_event_shape,
    image_flow,
    split_prior_coupling,
)
from tfp_nice.presets._multiscale import MultiScale

tfb = tfp.bijectors

__all__ = ["Glow", "glow_defaults", "glow_step"]

def glow_step(event_shape: Sequence[int], filters: int = 64, coupling: str = "affine",
              scale: str = "sigmoid", name: str = "step", dtype=None,
              conditional: bool = True) -> list:
    """One step of Glow's flow [4] §3 as bijectors in ``tfb.Chain`` order (data side first).

    From the data side: :class:`~tfp_nice.ActNorm` (per-channel affine, data-dependent
    initialisation), :class:`~tfp_nice.Invertible1x1Conv` (learned channel mixing), then a
    coupling that transforms the second half of the channels conditioned on the first::

      x2 -> x2 * exp(s(x1)) + t(x1)     (data -> latent, as Glow; additive: x2 + t(x1))

    The coupling's network is Glow's: a ``3x3`` convolution, a ``1x1`` convolution (``filters``
    each, ReLU) and a zero-initialised ``3x3`` output (:class:`~tfp_nice.ConvConditioner`), so
    a new step is ActNorm and a rotation. The coupling runs in its inverse direction
    (``tfb.Invert``) so that Glow's ``scale="sigmoid"``, ``exp(s) = sigmoid(h + 2)``, scales
    the data -> latent pass by at most 1, as in Glow's code.

    Args:
      event_shape: ``[H, W, C]`` with ``C >= 2``.
      filters: channels of the two hidden convolutions (Glow: 512).
      coupling: ``"affine"`` (Glow) or ``"additive"`` (NICE-style, Glow's cheaper option).
      scale: the affine stabiliser (:class:`~tfp_nice.AffineCoupling`; Glow: ``"sigmoid"``).
      name: prefix of the bijector and layer names.
      dtype: the layers' dtype (policy); ``None`` for Keras' default.
      conditional: whether the coupling takes the context of a conditional
        :class:`~tfp_nice.FlowModel` (as constant feature maps of its network).

    Returns:
      ``[ActNorm, Invertible1x1Conv, coupling]``.

    Example:
      >>> import numpy as np, tensorflow_probability as tfp
      >>> step = tfp.bijectors.Chain(glow_step([4, 4, 2], filters=8))
      >>> step.inverse(np.zeros([3, 4, 4, 2], "float32")).shape
      TensorShape([3, 4, 4, 2])
    """
    c = int(event_shape[-1])
    if c < 2:
        raise ValueError(
            "glow_step: a channel coupling needs at least 2 channels (squeeze first). "
            f"Received: event_shape={list(event_shape)}"
        )
    check_choice(coupling, IMAGE_COUPLINGS, "coupling")
    inner = image_coupling(
        coupling, masks.channel(list(event_shape)),  # the first C // 2 channels condition
        lambda out, net_name: ConvConditioner(out, filters=(filters, filters), kernel_size=3,
                                              dtype=dtype, name=net_name),
        scale, f"{name}_coupling", conditional)
    return [
        ActNorm(layer=ActNormLayer(c, dtype=dtype, name=f"{name}_act_norm_layer"),
                name=f"{name}_act_norm"),
        Invertible1x1Conv(layer=Invertible1x1ConvLayer(c, dtype=dtype,
                                                       name=f"{name}_1x1_conv_layer"),
                          name=f"{name}_1x1_conv"),
        tfb.Invert(inner, name=f"{name}_glow_coupling"),
    ]


def glow_defaults(event_shape: Sequence[int]) -> dict:
    """:class:`Glow` arguments for images ``[H, W, C]`` and a budget of minutes on a CPU.

    * ``num_levels``: the most levels (up to 3) whose last level still sees at least 4x4
      pixels: 28x28 -> 2 (14x14x4, then 7x7x8), 32x32 -> 3, 8x8 -> 1.
    * ``num_steps=8, filters=32``: depth beats width at equal time. On 28x28 MNIST
      (2 CPU cores shared with other jobs) after 1500 steps of batch 64: K=4/64 filters
      1.89 bits/dim, K=8/32 1.70, K=16/32 about K=8's per step at 1.8x its time per step.
    * ``scale="tanh"`` (``s = c·tanh(h)``, learned ``c``): Glow's ``"sigmoid"`` bounds the
      data -> latent scale by 1 and learns slower in a short budget (K=4/64, 1200-1250 steps:
      2.11 against 1.92 bits/dim).
    * ``split_prior=True``: the learned prior of each split half (1.85 against 1.89).

    With Adam at 2e-3, batch 64 and ``jit_compile=False`` (XLA's CPU convolutions took 2.1x
    longer per step), this model (112,544 parameters for 28x28x1) reached 1.49 validation
    bits/dim after 6000 steps, 918 s of training steps, on the MNIST file
    (``../shared/data/mnist-train-19690.npz``). Glow's paper sizes (``K=32, filters=512``)
    suit a GPU.

    Example:
      >>> glow_defaults([28, 28, 1])
      {'num_levels': 2, 'num_steps': 8, 'filters': 32, 'scale': 'tanh', 'split_prior': True}
    """
    h, w = (int(d) for d in event_shape[:2])
    levels = 1
    while levels < 3:
        f = 2 ** (levels + 1)
        if h % f or w % f or min(h, w) // f < 4:
            break
        levels += 1
    return {"num_levels": levels, "num_steps": 8, "filters": 32, "scale": "tanh",
            "split_prior": True}


def _level_steps(hwc: list, i: int, hp: dict) -> list:
    """Level ``i`` (data side first): squeeze, K steps, split (later levels nested), unsqueeze."""
    h, w, c = hwc
    shape = [h // 2, w // 2, 4 * c]
    steps: list = [tfb.Invert(Squeeze(2), name=f"l{i}_squeeze")]
    for k in range(hp["num_steps"]):
        steps += glow_step(shape, hp["filters"], hp["coupling"], hp["scale"], f"l{i}_s{k}",
                           conditional=hp["conditional"])
    if i < hp["num_levels"] - 1:
        if hp["split_prior"]:
            steps.append(split_prior_coupling(shape, f"l{i}_split_prior", hp["conditional"]))
        inner = tfb.Chain(_level_steps([h // 2, w // 2, 2 * c], i + 1, hp), name=f"l{i + 1}")
        steps.append(FactorOut(inner, num_kept=2 * c, name=f"l{i}_split"))
    steps.append(Squeeze(2, name=f"l{i}_unsqueeze"))
    return steps


@keras.saving.register_keras_serializable(package="tfp_nice")
class Glow(MultiScale, Preset):
    """Glow's multi-scale flow for images [4] §3 (ActNorm, 1x1 convolutions, couplings).

    From the data side, each level ``i`` of an ``[h, w, c]`` image (``L`` levels)::

      squeeze                                         -> [h/2, w/2, 4c]
      K steps of flow (:func:`glow_step`):            ActNorm -> 1x1 conv -> affine coupling
      split: the last 2c channels go to the prior     (not after the last level)
      (the first 2c continue with level i + 1 on [h/2, w/2, 2c]; then unsqueeze)

    The prior is ``N(0, I)`` over every unit (factored-out units included; the latent has the
    data's shape), so ``log_prob``, temperature ``sample`` and ``encode``/``decode`` are exact.
    ``split_prior=True`` adds Glow's learned prior of each split (``N(mu(z1), sigma(z1))`` from
    a zero-initialised ``3x3`` convolution of the kept half; ``log sigma = c·tanh(h)``).
    ActNorm steps initialise themselves on the first batch ``fit`` sees (or
    :meth:`initialize_from_data`).

    Sizes. Glow's code [4] (``width`` = ``filters``): CIFAR-10 ``L=3, K=32, filters=512``;
    ImageNet 32x32 ``L=3, K=48``; ImageNet 64x64 ``L=4, K=48``; CelebA-HQ 256x256 ``L=6,
    K=32`` (additive, 5 bits); MNIST padded to 32x32 with the defaults ``L=3, K=32,
    filters=512``; Adamax 1e-3 with 10 warm-up epochs, batch 64 per GPU, Polyak averaging;
    tens of millions of parameters and days on GPUs. Without padding, 28x28 allows two levels
    (28 -> 14 -> 7). The defaults here are CPU-sized: ``L=2, K=8, filters=32`` (107,840
    parameters on 28x28x1; 112,544 with ``scale="tanh"``); :func:`glow_defaults` gives the
    levels for any image size and the stabiliser that learns fastest in a budget of minutes
    (``scale="tanh"``; the default ``"sigmoid"`` is Glow's). On a GPU use the paper's sizes.

    Args:
      event_shape: ``[H, W, C]`` with ``H`` and ``W`` divisible by ``2 ** num_levels``.
      num_levels: ``L``, the number of levels (squeezes).
      num_steps: ``K``, steps of flow per level.
      filters: hidden channels of every coupling network (Glow: 512).
      coupling: ``"affine"`` (Glow) or ``"additive"``.
      scale: the affine stabiliser (Glow: ``"sigmoid"``; see :class:`~tfp_nice.AffineCoupling`).
      split_prior: learn the prior of each split half from the kept half (Glow's code).
      prior: ``"normal"`` (Glow) or ``"logistic"``.
      data_scale, data_low, logit_alpha: preprocessing as in :class:`~tfp_nice.RealNVP`
        (Glow itself uses ``data_scale=256`` and no logit; on 28x28 MNIST the logit
        ``logit_alpha=0.05`` learned much faster: 3.23 against 4.74 bits/dim after 300 steps).
      num_classes, context_shape, conditioning, class_mean_stddev: a conditional flow, as in
        :class:`~tfp_nice.RealNVP` (with ``"couplings"`` the learned split priors see the
        context too).
      **kwargs: these keyword options
        (:class:`~tfp_nice.presets._common.LogitPresetOptions`) and ``keras.Model`` arguments.

    Example:
      >>> model = Glow([4, 4, 1], num_levels=2, num_steps=1, filters=4)
      >>> model.sample(2, seed=(1, 2), temperature=0.7).shape
      TensorShape([2, 4, 4, 1])

    References:
      [4] Kingma, Dhariwal. Glow: Generative flow with invertible 1x1 convolutions.
          arXiv:1807.03039.
    """

    def __init__(
        self,
        event_shape,
        num_levels: int = 2,
        num_steps: int = 8,
        filters: int = 32,
        coupling: str = "affine",
        scale: str = "sigmoid",
        split_prior: bool = True,
        prior: str = "normal",
        **kwargs: Unpack[LogitPresetOptions],
    ):
        options = SharedOptions.pop(kwargs)
        hp = dict(
            num_levels=check_int(num_levels, "num_levels"),
            num_steps=check_int(num_steps, "num_steps"),
            filters=check_int(filters, "filters"),
            coupling=check_choice(coupling, IMAGE_COUPLINGS, "coupling"),
            scale=_math.check_stabiliser(scale),
            split_prior=bool(split_prior),
        )
        shape = image_event_shape("Glow", event_shape, 2 ** hp["num_levels"],
                                  f"num_levels={num_levels}", "2**num_levels")
        base, steps, own_config = image_flow(shape, hp, _level_steps, options, prior)
        super().__init__(base, steps, options, own_config, **kwargs)

    @property
    def num_levels(self) -> int:
        """``L``, the number of levels."""
        return self._preset_config["num_levels"]

    @property
    def num_scales(self) -> int:
        """The number of scales of :meth:`latent_scales` (``= num_levels``)."""
        return self.num_levels
