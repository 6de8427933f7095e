"""The serving signatures as one table: it drives the functions, the metadata and the docs.

Every signature is a :class:`Signature` row of :data:`TABLE`: its inputs and outputs are
:class:`Port` entries with a dtype and symbolic dimensions (``"batch"``, ``"event"``,
``"latent"``, ``"K"`` or ints). From this one table

* :mod:`tfp_nice.export.functions` builds each ``tf.function`` (input specs and names) and
  checks that the traced outputs are the table's;
* :func:`metadata` writes the ``"signatures"`` entry of ``assets.extra/tfp_nice_export.json``;
* :func:`markdown_table` writes the table of the README's "Serve it" section (a test keeps
  the README equal to it).

Every input has a leading batch dimension and a row's outputs depend only on that row's
inputs, so TF Serving's request batching may concatenate requests along dimension 0.

**Conditional models** (a class label or a context vector per row) add one
:data:`CONDITIONS` entry to the inputs of *every* signature: a model whose
``serving_condition`` is ``"label"`` or ``("context", K)`` gets a ``label`` int32 ``[b]`` or
``context`` float32 ``[b, K]`` input everywhere (see :func:`condition_port`); nothing else in
the table changes.

Example:
  >>> print(markdown_table().splitlines()[0])
  | signature | inputs | outputs | what |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CONDITIONS",
    "Layout",
    "Port",
    "Signature",
    "TABLE",
    "condition_port",
    "markdown_table",
    "metadata",
    "signature_names",
    "summary",
]


@dataclasses.dataclass(frozen=True)
class Port:
    """A named input or output tensor of a signature.

    Attributes:
      name: the tensor's key in requests and replies.
      dtype: ``"float32"`` or ``"int32"``.
      dims: symbolic shape: ``"batch"`` (rows), ``"event"`` / ``"latent"`` (the model's data /
        latent event shape, expanded), ``"K"`` (the context size) or ints.
      doc: one line for the docs table.
      discrete_only: only present when the data are integer levels.
    """

    name: str
    dtype: str
    dims: tuple[str | int, ...]
    doc: str
    discrete_only: bool = False


@dataclasses.dataclass(frozen=True)
class Signature:
    """One serving signature: the method of the serving module that computes it, its ports."""

    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    doc: str
    aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Layout:
    """The concrete shapes behind the symbolic dims of one export."""

    event_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]
    discrete: bool
    condition: Port | None = None
    context_size: int | None = None

    def dims(self, port: Port) -> list:
        """``port.dims`` with ``"event"``/``"latent"``/``"K"`` replaced by their sizes."""
        out: list = []
        for d in port.dims:
            if d == "event":
                out += list(self.event_shape)
            elif d == "latent":
                out += list(self.latent_shape)
            elif d == "K":
                out.append(self.context_size)
            else:
                out.append(d)
        return out

    def inputs(self, sig: Signature) -> tuple[Port, ...]:
        """The signature's inputs, plus the condition input of a conditional model."""
        return sig.inputs + ((self.condition,) if self.condition is not None else ())

    def outputs(self, sig: Signature) -> tuple[Port, ...]:
        return tuple(p for p in sig.outputs if self.discrete or not p.discrete_only)


# --- the ports ---------------------------------------------------------------------------------
X_IN = Port("x", "float32", ("batch", "event"),
            "data rows (integer data: raw levels, e.g. 0..16 for the digits)")
Z_IN = Port("z", "float32", ("batch", "latent"), "latent rows")
SEED = Port("seed", "int32", ("batch", 2), "a stateless seed per row: one sample per row")
TEMPERATURE = Port("temperature", "float32", ("batch",),
                   "per row, in (0, 10]: the latent is scaled by it (Glow's temperature)")
LOG_PROB = Port("log_prob", "float32", ("batch",),
                "log-density in nats (integer data: the held-out estimator of metrics.json)")
BITS_PER_DIM = Port("bits_per_dim", "float32", ("batch",), "-log_prob / (D ln 2)")
X_OUT = Port("x", "float32", ("batch", "event"), "data rows (integer data: levels)")
X_CONTINUOUS = Port("x_continuous", "float32", ("batch", "event"),
                    "the model-space value y, with x = clip(floor(y))", discrete_only=True)
Z_OUT = Port("z", "float32", ("batch", "latent"), "latent rows")

#: The signatures, in the order the docs list them.
TABLE: tuple[Signature, ...] = (
    Signature("log_prob", (X_IN,), (LOG_PROB, BITS_PER_DIM),
              "density of each row (integer data: the held-out estimator of metrics.json)",
              aliases=("serving_default",)),
    Signature("sample", (SEED, TEMPERATURE), (X_OUT, X_CONTINUOUS),
              "row i = `model.sample(1, seed=seed[i], temperature=temperature[i])`"),
    Signature("encode", (X_IN,), (Z_OUT,), "data -> latent (integer data: at bin centres)"),
    Signature("decode", (Z_IN,), (X_OUT, X_CONTINUOUS),
              "latent -> data; `decode(encode(x)).x == x`"),
)

#: The extra input of a conditional model, added to every signature.
CONDITIONS: Mapping[str, Port] = {
    "label": Port("label", "int32", ("batch",), "the class of each row"),
    "context": Port("context", "float32", ("batch", "K"), "the context vector of each row"),
}


def signature_names() -> tuple[str, ...]:
    """Every signature name an export has, aliases included."""
    return tuple(n for s in TABLE for n in (*s.aliases, s.name))


def summary() -> str:
    """One line naming every signature and its inputs (printed by ``tfp-nice export``)."""
    parts = []
    for sig in TABLE:
        call = f"{sig.name}({', '.join(p.name for p in sig.inputs)})"
        parts.append(" = ".join([*sig.aliases, call]))
    return ", ".join(parts)


def condition_port(model: Any) -> tuple[Port | None, int | None]:
    """The condition input of ``model`` and the context size: ``(None, None)`` if unconditional.

    A conditional model declares ``serving_condition = "label"`` or ``("context", K)``.
    """
    kind = getattr(model, "serving_condition", None)
    if kind is None:
        return None, None
    name, size = (kind, None) if isinstance(kind, str) else (kind[0], int(kind[1]))
    if name not in CONDITIONS or (name == "context") != (size is not None):
        raise ValueError(
            "`serving_condition` must be None, 'label' or ('context', K). "
            f"Received: serving_condition={kind!r}"
        )
    return CONDITIONS[name], size


def _port_json(layout: Layout, port: Port) -> list:
    return [port.dtype, layout.dims(port)]


def metadata(layout: Layout) -> dict:
    """The ``"signatures"`` entry of the export metadata (aliases as ``"= name"``)."""
    out: dict = {}
    for sig in TABLE:
        out[sig.name] = {
            "inputs": {p.name: _port_json(layout, p) for p in layout.inputs(sig)},
            "outputs": {p.name: _port_json(layout, p) for p in layout.outputs(sig)},
            "doc": sig.doc,
        }
        out.update({alias: f"= {sig.name}" for alias in sig.aliases})
    return out


def _symbolic(port: Port) -> str:
    dims = ", ".join({"event": "*event", "latent": "*latent"}.get(str(d), str(d))
                     for d in port.dims)
    extra = " (integer data)" if port.discrete_only else ""
    return f"`{port.name}` {port.dtype} `[{dims}]`{extra}"


def markdown_table(signatures: Sequence[Signature] = TABLE) -> str:
    """The signatures as a Markdown table (the README's), with symbolic shapes."""
    lines = ["| signature | inputs | outputs | what |", "|---|---|---|---|"]
    for sig in signatures:
        name = " = ".join(f"`{n}`" for n in (*sig.aliases, sig.name))
        inputs = "; ".join(_symbolic(p) for p in sig.inputs)
        outputs = "; ".join(_symbolic(p) for p in sig.outputs)
        lines.append(f"| {name} | {inputs} | {outputs} | {sig.doc} |")
    return "\n".join(lines)
