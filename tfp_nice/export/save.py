"""``save_for_serving``: the model as a TF Serving SavedModel, in a new version directory
(its example is in the package docstring of :mod:`tfp_nice.export`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfp_nice._internal import checks, files
from tfp_nice.export import metadata, version_facts, versions
from tfp_nice.export import warmup as warmup_lib
from tfp_nice.export.errors import ExportError
from tfp_nice.export.functions import ServingModule
from tfp_nice.export.space import DataSpace

__all__ = ["DEFAULT_MAX_SAMPLES", "save_for_serving"]

DEFAULT_MAX_SAMPLES = 100_000


def save_for_serving(
    model,
    export_dir: str | os.PathLike,
    *,
    version: int | None = None,
    data: Any = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    warmup: bool = True,
    extra_metadata: Mapping[str, Any] | None = None,
) -> str:
    """Writes ``model`` as a TF Serving SavedModel in ``export_dir/VERSION/``.

    Args:
      model: a :class:`tfp_nice.FlowModel` (any preset or a generic flow).
      export_dir: the model's base path, ``saved_models/NAME`` (TF Serving's
        ``--model_base_path``); created if missing.
      version: the version number, an int in ``[1, 2**31 - 1]``; default: one more than the
        largest version present, or 1. An existing version is never overwritten.
      data: the training data's description (a :class:`tfp_nice.data.DataSpec` or the
        ``"data"`` dict of ``run.json``); with ``num_levels`` the signatures take and return
        raw integer levels (:mod:`tfp_nice.export.space`). ``None``: ``x`` is the model's space.
      max_samples: the most rows a ``sample`` request may have.
      warmup: write ``assets.extra/tf_serving_warmup_requests``.
      extra_metadata: more JSON-serialisable entries for ``assets.extra/tfp_nice_export.json``.

    Returns:
      The path of the version directory written.

    Raises:
      ExportError: ``version`` exists or is out of range, ``export_dir`` is not a directory,
        bad ``data`` or ``max_samples``, or ``model`` is not a FlowModel.
      OSError: the destination cannot be written (nothing is left behind).
    """
    from tfp_nice.flow_model import FlowModel

    if not isinstance(model, FlowModel):
        raise ExportError(
            f"`model` must be a tfp_nice.FlowModel. Received: {type(model).__name__}",
            argument="model")
    max_samples = checks.check_int(max_samples, "max_samples", 1, 2**31 - 1,
                                   error=lambda m: ExportError(m, argument="max_samples"))
    export_dir = os.path.abspath(os.fspath(export_dir))
    space = DataSpace(model.event_shape, data)
    version = versions.check_version(version, export_dir)
    module = ServingModule(model, space, max_samples)
    name = os.path.basename(export_dir)

    def write(tmp: str) -> None:
        tf.saved_model.save(module.root(), tmp, signatures=module.signatures())
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        if warmup:
            requests = warmup_lib.warmup_inputs(module.layout, space)
            warmup_lib.write_warmup(os.path.join(extra, warmup_lib.WARMUP_FILE), name, requests)
        meta = metadata.build(model, module, extra_metadata)
        meta["version_facts"] = version_facts.collect(tmp)
        files.atomic_write_json(os.path.join(extra, metadata.METADATA_FILE), meta)

    return versions.write_version(export_dir, version, write)
