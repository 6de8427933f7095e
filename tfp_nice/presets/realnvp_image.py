"""RealNVP's multi-scale image model (Dinh, Sohl-Dickstein, Bengio 2016, §3.6 and §4.1)."""

from __future__ import annotations

import keras
import tensorflow_probability as tfp
from typing_extensions import Unpack

from tfp_nice import layers, masks
from tfp_nice._internal.checks import check_choice, check_int
from tfp_nice.bijectors import ActNorm, BatchNorm, FactorOut, Squeeze
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

__all__ = ["RealNVPImage"]

_NORMALIZATIONS = ("batch_norm", "act_norm", "none")
_IMAGE_CONDITIONERS = ("resnet", "conv")


def _net(conditioner: str, out_channels: int, width: int, num_blocks: int, l2: float,
         name: str) -> keras.layers.Layer:
    if conditioner == "resnet":
        return layers.ResNetConditioner(out_channels, filters=width, num_blocks=num_blocks,
                                        l2=l2, name=name)
    return layers.ConvConditioner(out_channels, filters=(width, width), name=name)


def _couplings(first: masks.Mask, count: int, width: int, prefix: str, hp: dict) -> list:
    """``count`` image couplings with alternating masks, each followed by its normalisation."""
    steps = []
    c = first.event_shape[-1]
    for j in range(count):
        m = first if j % 2 == 0 else first.complement()
        name = f"{prefix}_{j}"
        steps.append(image_coupling(
            hp["coupling"], m,
            lambda out, net_name: _net(hp["conditioner"], out, width, hp["num_blocks"], hp["l2"],
                                       net_name),
            hp["scale"], name, hp["conditional"]))
        if hp["normalization"] == "batch_norm":
            steps.append(BatchNorm(channels=c, name=f"{name}_batch_norm"))
        elif hp["normalization"] == "act_norm":
            steps.append(ActNorm(channels=c, name=f"{name}_act_norm"))
    return steps


def _scale_steps(hwc: list, i: int, hp: dict) -> list:
    """The steps of scale ``i`` (data side first), the later scales nested in its FactorOut."""
    h, w, c = hwc
    width = hp["filters"] * 2**i
    if i == hp["num_scales"] - 1:
        return _couplings(masks.checkerboard(hwc), 4, width, f"s{i}_checkerboard", hp)
    steps = _couplings(masks.checkerboard(hwc), 3, width, f"s{i}_checkerboard", hp)
    steps.append(tfb.Invert(Squeeze(2), name=f"s{i}_squeeze"))
    steps += _couplings(masks.channel([h // 2, w // 2, 4 * c]), 3, 2 * width, f"s{i}_channel", hp)
    steps.append(Squeeze(2, name=f"s{i}_unsqueeze"))
    steps.append(tfb.Invert(Squeeze(2, "checkerboard"), name=f"s{i}_squeeze_ordered"))
    if hp["split_prior"]:
        steps.append(split_prior_coupling([h // 2, w // 2, 4 * c], f"s{i}_split_prior",
                                          hp["conditional"]))
    inner = tfb.Chain(_scale_steps([h // 2, w // 2, 2 * c], i + 1, hp), name=f"s{i + 1}")
    steps.append(FactorOut(inner, num_kept=2 * c, name=f"s{i}_factor_out"))
    steps.append(Squeeze(2, "checkerboard", name=f"s{i}_unsqueeze_ordered"))
    return steps


@keras.saving.register_keras_serializable(package="tfp_nice")
class RealNVPImage(MultiScale, Preset):
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
    ``num_blocks=4 .. 8, filters=32 .. 64`` on a GPU. On 2 CPU cores ``tfp-nice train`` uses
    ``num_scales=3, filters=16, conditioner="conv"`` (Glow's small plain network in RealNVP's
    architecture, 0.13M parameters, Adam 2e-3, no XLA): on 28x28 MNIST it learns faster per
    minute than the ResNet (4 minutes: 1.577 against 1.717 held-out bits/dim; README).
    Preprocessing as the paper: ``data_scale=256, logit_alpha=0.05``.

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
      split_prior: before each factor-out, Glow's learned prior of the factored-out half
        (``N(mu, sigma^2)`` of it from the kept half, a zero-initialised ``3x3`` convolution;
        :func:`~tfp_nice.presets._image.split_prior_coupling`) instead of RealNVP's ``N(0, I)``.
      prior: ``"normal"`` (the paper) or ``"logistic"``.
      data_scale, data_low, logit_alpha: preprocessing as in :class:`RealNVP`.
      num_classes, context_shape, conditioning, class_mean_stddev: a conditional flow, as in
        :class:`RealNVP`.
      **kwargs: these keyword options
        (:class:`~tfp_nice.presets._common.LogitPresetOptions`) and ``keras.Model`` arguments.

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
        split_prior: bool = False,
        prior: str = "normal",
        **kwargs: Unpack[LogitPresetOptions],
    ):
        options = SharedOptions.pop(kwargs)
        hp = dict(
            num_scales=check_int(num_scales, "num_scales"),
            num_blocks=check_int(num_blocks, "num_blocks", minimum=0),
            filters=check_int(filters, "filters"),
            coupling=check_choice(coupling, IMAGE_COUPLINGS, "coupling"),
            scale=scale,
            normalization=check_choice(normalization, _NORMALIZATIONS, "normalization"),
            conditioner=check_choice(conditioner, _IMAGE_CONDITIONERS, "conditioner"),
            l2=float(l2),
            split_prior=bool(split_prior),
        )
        shape = image_event_shape("RealNVPImage", event_shape, 2 ** (hp["num_scales"] - 1),
                                  f"num_scales={num_scales}", "2**(num_scales - 1)")
        base, steps, own_config = image_flow(shape, hp, _scale_steps, options, prior)
        super().__init__(base, steps, options, own_config, **kwargs)

    @property
    def num_scales(self) -> int:
        return self._preset_config["num_scales"]
