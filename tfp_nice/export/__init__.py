"""Export a flow as a SavedModel that TF Serving loads, with batched serving signatures.

:func:`save_for_serving` writes TF Serving's layout ``export_dir/VERSION/``::

  saved_models/NAME/1/saved_model.pb
                     /variables/...
                     /assets.extra/tf_serving_warmup_requests   batched requests
                     /assets.extra/tfp_nice_export.json         signatures, versions

The package, one concern per module:

* :mod:`~tfp_nice.export.signatures` — the signature table (inputs, outputs, docs); it drives
  the functions, the metadata and the README table;
* :mod:`~tfp_nice.export.functions` — the batched ``tf.function`` of each signature;
* :mod:`~tfp_nice.export.space` — client data space <-> model space (integer levels,
  the deterministic dequantization of :mod:`tfp_nice.preprocessing`);
* :mod:`~tfp_nice.export.graph_checks` — in-graph request checks (``InvalidArgumentError``);
* :mod:`~tfp_nice.export.warmup` — warm-up records;
* :mod:`~tfp_nice.export.versions` — versioned, atomic directory writing;
* :mod:`~tfp_nice.export.version_facts` — the ops of the graph and the oldest TF Serving
  release that has them;
* :mod:`~tfp_nice.export.metadata` and :mod:`~tfp_nice.export.save`.

Every input has a leading batch dimension and rows are independent, so TF Serving's request
batching (``--enable_batching``) may merge any requests. The graph holds only core
TensorFlow ops: it loads with ``tf.saved_model.load``, the TF1 session loader
(``saved_model_cli run``, TF Serving) and the C++ ``LoadSavedModel`` in a process that never
imports ``tensorflow_probability`` or ``tfp_nice``.

Example:
  >>> import tempfile, tfp_nice as tn
  >>> model = tn.RealNVP([2], num_couplings=2, hidden_units=(8,))
  >>> path = save_for_serving(model, tempfile.mkdtemp() + "/moons")
  >>> path.endswith("moons/1")
  True
"""

from __future__ import annotations

from tfp_nice.export.errors import ExportError
from tfp_nice.export.graph_checks import MAX_TEMPERATURE
from tfp_nice.export.metadata import METADATA_FILE
from tfp_nice.export.save import DEFAULT_MAX_SAMPLES, save_for_serving
from tfp_nice.export.signatures import TABLE, markdown_table, signature_names
from tfp_nice.export.version_facts import graph_ops, oldest_release
from tfp_nice.export.versions import MAX_VERSION, next_version
from tfp_nice.export.warmup import WARMUP_FILE, warmup_requests

#: Every signature name of an export (aliases included).
SIGNATURES = signature_names()

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "ExportError",
    "MAX_TEMPERATURE",
    "MAX_VERSION",
    "METADATA_FILE",
    "SIGNATURES",
    "TABLE",
    "WARMUP_FILE",
    "graph_ops",
    "markdown_table",
    "next_version",
    "oldest_release",
    "save_for_serving",
    "warmup_requests",
]
