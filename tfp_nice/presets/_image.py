"""What the image presets (RealNVPImage, Glow) share: the image checks, the channel couplings
and the flow around their levels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tfp_nice import masks, priors
from tfp_nice.bijectors import AdditiveCoupling, AffineCoupling
from tfp_nice.layers import ConvConditioner
from tfp_nice.presets._common import SharedOptions, preset_event_shape

__all__ = ["IMAGE_COUPLINGS", "image_coupling", "image_event_shape", "image_flow",
           "split_prior_coupling"]

#: The couplings an image preset builds (``coupling=``).
IMAGE_COUPLINGS = ("affine", "additive")


def image_event_shape(owner: str, event_shape, div: int, setting: str,
                      power: str) -> tuple[int, ...]:
    """``event_shape`` checked as ``[height, width, channels]`` for the image preset ``owner``,
    its height and width multiples of ``div`` (= ``power``, given ``setting``)."""
    shape = preset_event_shape(event_shape)
    if len(shape) != 3:
        raise ValueError(
            f"{owner}: `event_shape` must be [height, width, channels]. "
            f"Received: event_shape={list(shape)}"
        )
    if shape[0] % div or shape[1] % div:
        raise ValueError(
            f"{owner}: with {setting} the height and width must be divisible by {power} = "
            f"{div}. Received: event_shape={list(shape)}"
        )
    return shape


def image_coupling(kind: str, mask: masks.Mask, net: Callable, scale: str, name: str,
                   conditional: bool):
    """An ``"affine"`` or ``"additive"`` coupling of image channels (``kind``) whose network
    ``net(out_channels, name)`` sees the masked input."""
    c = mask.event_shape[-1]
    if kind == "affine":
        return AffineCoupling(net(2 * c, f"{name}_net"), mask=mask, scale=scale,
                              conditioner_input="masked", name=name, conditional=conditional)
    return AdditiveCoupling(net(c, f"{name}_net"), mask=mask, conditioner_input="masked",
                            name=name, conditional=conditional)


def split_prior_coupling(shape: list, name: str, conditional: bool = False) -> AffineCoupling:
    """Glow's learned prior of a factored-out half, ``N(mu(x1), sigma(x1)^2)``, as an affine
    coupling whose inverse standardises the second half of the channels of ``shape`` given the
    first (a zero-initialised ``3x3`` convolution; identity at start). Placed just before a
    :class:`~tfp_nice.FactorOut` that keeps the first half, it turns the factored-out units'
    ``N(0, I)`` into that learned conditional prior.

    ``log sigma = c * tanh(h)`` (learned ``c``), not Glow's unbounded ``h``: it is the one
    data-dependent scale of the flow, and with ``exp`` wider models trained at Adam 2e-3
    jumped to 2-3 bits/dim on held-out data now and then (28x28 MNIST, K=8, 48 or 64 filters).
    """
    net = ConvConditioner(2 * shape[-1], filters=(), kernel_size=3, name=f"{name}_net")
    return AffineCoupling(net, mask=masks.channel(shape), scale="tanh",
                          conditioner_input="masked", name=name, conditional=conditional)


def image_flow(shape: Sequence[int], hp: dict, build_steps: Callable, options: SharedOptions,
               prior: str) -> tuple:
    """What an image preset hands to :class:`~tfp_nice.presets._common.Preset`: ``(base, steps,
    own config)``, with the data-side steps first, ``build_steps(shape, 0, hp)`` (the levels,
    recursively) and the class-conditional prior nearest the latent."""
    steps = options.data_steps() + build_steps(
        list(shape), 0, dict(hp, conditional=options.cond.couplings))
    steps += options.cond.prior_steps(list(shape))
    config = dict(event_shape=list(shape), **hp, prior=prior)
    return priors.get(prior, list(shape)), steps, config
