"""``assets.extra/tfp_nice_export.json``: what the signatures expect, and the version facts.

Example:
  >>> FORMAT
  'tfp_nice serving export 2'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfp_nice import preprocessing
from tfp_nice.export import graph_checks, signatures
from tfp_nice.export.functions import ServingModule

__all__ = ["FORMAT", "METADATA_FILE", "build"]

FORMAT = "tfp_nice serving export 2"
METADATA_FILE = "tfp_nice_export.json"


def build(model, module: ServingModule, extra: Mapping[str, Any] | None) -> dict:
    """The metadata of an export of ``model`` through ``module`` (version facts come later)."""
    from tfp_nice import __version__

    layout = module.layout
    meta = {
        "format": FORMAT,
        "tfp_nice_version": __version__,
        "tensorflow_version": tf.__version__,
        "model_class": type(model).__name__,
        "event_shape": list(layout.event_shape),
        "latent_shape": list(layout.latent_shape),
        "num_dims": module.num_dims,
        "max_samples": module.max_samples,
        "max_temperature": graph_checks.MAX_TEMPERATURE,
        "data_space": module.space.describe(),
        "batching": "every input has a leading batch dimension and rows are independent: "
                    "requests may be concatenated along dimension 0",
        "bits_per_dim": "-log_prob / (num_dims ln 2) (tfp_nice.preprocessing.bits_per_dim)",
        "dequantization_seed": preprocessing.DEQUANTIZATION_SEED,
        "reproducibility": "sample: the same seed gives the same samples within one "
                           "TensorFlow version (stateless random ops)",
        "signatures": signatures.metadata(layout),
    }
    if layout.condition is not None:
        meta["condition"] = {"input": layout.condition.name,
                             "dims": layout.dims(layout.condition)}
    try:
        meta["model_config"] = json.loads(json.dumps(model.get_config()))
    except (TypeError, ValueError):
        pass
    if extra:
        meta.update(extra)
    return meta
