"""Building a run's model from its configuration, and loading a trained one."""

from __future__ import annotations

import contextlib
import os
import zipfile
from typing import Any

import keras

from tfp_nice import precision
from tfp_nice.data.spec import DataSpec
from tfp_nice.flow_model import FlowModel
from tfp_nice.presets import NICE, NSF, Glow, RealNVP, RealNVPImage
from tfp_nice.training.config import IMAGE_MODELS, TrainConfig, default_hparams
from tfp_nice.training.run_dir import RunError, read_run_json

__all__ = ["MODELS", "build_model", "load_run"]

#: The presets :class:`~tfp_nice.training.TrainConfig` names.
MODELS = {"nice": NICE, "realnvp": RealNVP, "realnvp-image": RealNVPImage, "glow": Glow,
          "nsf": NSF}
_IMAGE_ONLY = ("num_scales", "num_blocks", "filters")


def build_model(cfg: TrainConfig, spec: DataSpec, num_classes: int | None = None,
                hparams: dict | None = None) -> FlowModel:
    """The preset named by ``cfg.model`` with preprocessing matched to ``spec``.

    Integer data (dequantized to ``[0, L)``) and bounded continuous data are rescaled to
    ``[0, 1)``; RealNVP and NSF then apply the logit with ``α = 0.05``. Unbounded 2-D
    densities are modelled as they are (NSF's spline interval then covers the data's range).
    ``num_classes`` (with ``cfg.conditional``) makes the preset class-conditional. With
    ``cfg.mixed_precision`` the preset is built under that mixed policy
    (:func:`tfp_nice.precision.policy_scope`): half-precision conditioners. ``hparams``
    (default: :func:`default_hparams`) gives the sizes, e.g. those a resumed run started with.
    """
    hp = default_hparams(cfg, spec) if hparams is None else hparams
    if cfg.model in IMAGE_MODELS:
        kwargs: dict[str, Any] = {k: hp[k] for k in _IMAGE_ONLY}
        if cfg.model == "realnvp-image":
            kwargs["conditioner"] = hp["conditioner"]
        if cfg.model == "glow":  # L levels, K steps per level; glow_defaults' recipe
            kwargs = dict(num_levels=hp["num_scales"], num_steps=hp["num_blocks"],
                          filters=hp["filters"], scale="tanh", split_prior=True)
    else:
        kwargs = dict(num_couplings=hp["num_couplings"], hidden_units=hp["hidden_units"])
    if spec.num_levels is not None:
        kwargs.update(data_scale=float(spec.num_levels), data_low=float(spec.low))
    elif spec.is_image:
        kwargs.update(data_scale=float(spec.high - spec.low) or 1.0, data_low=float(spec.low))
    if cfg.model in ("realnvp", "realnvp-image", "glow", "nsf") and "data_scale" in kwargs:
        kwargs["logit_alpha"] = 0.05
    if cfg.memory_saving:
        kwargs["memory_saving"] = True
    if cfg.model == "nsf" and "data_scale" not in kwargs:  # raw values: splines must cover them
        kwargs["bound"] = max(3.0, 1.2 * max(abs(spec.low), abs(spec.high)))
    if cfg.conditional:
        if num_classes is None:
            raise ValueError("a conditional run needs `num_classes` (from the data's labels). "
                             "Received: num_classes=None")
        kwargs["num_classes"] = int(num_classes)
        if cfg.conditioning is not None:
            kwargs["conditioning"] = cfg.conditioning
        if cfg.class_mean_stddev is not None:
            kwargs["class_mean_stddev"] = cfg.class_mean_stddev
    scope = (precision.policy_scope(cfg.mixed_precision) if cfg.mixed_precision
             else contextlib.nullcontext())
    with scope:
        return MODELS[cfg.model](list(spec.event_shape), name=cfg.model, **kwargs)


def load_run(path: str) -> tuple[FlowModel, dict]:
    """Loads ``model.keras`` from a run directory (or a ``.keras`` file) and its ``run.json``.

    Raises:
      RunError: ``no_model`` (nothing there), ``bad_model`` (not a readable tfp_nice
        ``.keras`` file) or ``corrupt`` (an unreadable ``run.json`` beside it).
    """
    model_path = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.exists(model_path):
        raise RunError("no_model", model_path)
    if not model_path.endswith(".keras"):
        raise RunError("bad_model", model_path, "is not a .keras model file")
    run_dir = os.path.dirname(os.path.abspath(model_path))
    meta = read_run_json(run_dir) if os.path.exists(os.path.join(run_dir, "run.json")) else {}
    if not zipfile.is_zipfile(model_path):
        raise RunError("bad_model", model_path, "is not a valid .keras file (not a zip archive; "
                                                "truncated or corrupt?)")
    try:
        model = keras.models.load_model(model_path)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunError("bad_model", model_path,
                       f"could not be loaded ({type(e).__name__}: {first[:200]})") from None
    if not isinstance(model, FlowModel):
        raise RunError("bad_model", model_path,
                       f"holds a {type(model).__name__}, not a tfp_nice flow")
    return model, meta
