"""What the image presets (RealNVPImage, Glow) share: the image checks, the channel couplings
and the flow around their levels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tfp_nice import masks, priors
from tfp_nice.bijectors import AdditiveCoupling, AffineCoupling
from tfp_nice.presets._common import SharedOptions, preset_event_shape

__all__ = ["IMAGE_COUPLINGS", "image_coupling", "image_event_shape", "image_flow"]

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
