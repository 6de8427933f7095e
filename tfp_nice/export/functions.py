"""The serving functions, built from the signature table.

:class:`ServingModule` makes one ``tf.function`` per row of
:data:`tfp_nice.export.signatures.TABLE`: the input specs and names come from the table's
ports, the body is the method named after the signature, and the traced outputs are checked
against the table. Every function is batched: rows are independent, so any requests may be
concatenated along dimension 0 (TF Serving's request batching) and give the same rows.

``sample`` draws row ``i`` as ``model.sample(1, seed=seed[i], temperature=temperature[i])``:
the base distribution is sampled once per row with that row's stateless seed (a loop over
the rows of ``[D]`` draws each; the flow then runs once on the whole batch).

A conditional model (``serving_condition``, see :mod:`tfp_nice.export.signatures`) receives
its condition input in every signature; the flow for those rows is
``model.conditional_bijector(condition)`` (the base distribution is shared).

Example:
  >>> import tfp_nice as tn
  >>> from tfp_nice.export.space import DataSpace
  >>> model = tn.RealNVP([2], num_couplings=1, hidden_units=(4,))
  >>> module = ServingModule(model, DataSpace([2]), max_samples=10)
  >>> sorted(module.signatures())
  ['decode', 'encode', 'log_prob', 'sample', 'serving_default']
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_nice import preprocessing
from tfp_nice._internal import compat
from tfp_nice.export import graph_checks
from tfp_nice.export.signatures import TABLE, Layout, Signature, condition_port
from tfp_nice.export.space import DataSpace

__all__ = ["ServingModule"]


class _Flow:
    """The model's flow, traced once per direction: ``log_prob`` and ``encode`` share the
    inverse, ``sample`` and ``decode`` the forward (halves export time and graph size)."""

    def __init__(self, model, layout: Layout, dtype: tf.DType):
        self.model = model
        cond = [] if layout.condition is None else [tf.TensorSpec(
            [None, *layout.dims(layout.condition)[1:]], tf.as_dtype(layout.condition.dtype))]
        self._event_ndims = len(layout.event_shape)
        self.inverse = tf.function(self._inverse, autograph=False, input_signature=[
            tf.TensorSpec((None, *layout.event_shape), dtype), *cond])
        self.forward = tf.function(self._forward, autograph=False, input_signature=[
            tf.TensorSpec((None, *layout.latent_shape), dtype), *cond])

    def bijector(self, condition=()):
        if not condition:
            return self.model.bijector
        return self.model.conditional_bijector(condition[0])

    def _inverse(self, y, *condition):
        bijector = self.bijector(condition)
        z = bijector.inverse(y)
        return z, bijector.inverse_log_det_jacobian(y, event_ndims=self._event_ndims)

    def _forward(self, z, *condition):
        return self.bijector(condition).forward(z)


class ServingModule:
    """The signature functions of ``model`` (``tf.function`` with loose specs, checked in-graph).

    Only the concrete functions go into the SavedModel, as signatures: the saved object
    graph is a bare ``tf.Module`` holding the variables (:meth:`root`), which keeps the Keras
    model out of it and stores each function once.

    Args:
      model: a :class:`tfp_nice.FlowModel`.
      space: the client data space.
      max_samples: the most rows a ``sample`` request may have.
    """

    def __init__(self, model, space: DataSpace, max_samples: int):
        self.model, self.space, self.max_samples = model, space, int(max_samples)
        self.dtype = tf.as_dtype(model.base_distribution.dtype)
        latent = tuple(int(d) for d in model.base_distribution.event_shape)
        condition, context_size = condition_port(model)
        self.layout = Layout(space.event_shape, latent, space.discrete, condition, context_size)
        self.num_dims = int(np.prod(space.event_shape))
        self._flow = _Flow(model, self.layout, self.dtype)
        self.functions = {sig.name: self._function(sig) for sig in TABLE}

    def _function(self, sig: Signature):
        ports = self.layout.inputs(sig)
        names = [p.name for p in ports]
        method = getattr(self, f"_{sig.name}")

        def fn(*args):
            return method(**dict(zip(names, args)))

        fn.__name__ = sig.name
        specs = [tf.TensorSpec(None, tf.as_dtype(p.dtype), name=p.name) for p in ports]
        return tf.function(fn, input_signature=specs, autograph=False)

    def signatures(self) -> dict:
        """``{name: concrete function}`` for every signature and alias, outputs checked."""
        out = {}
        for sig in TABLE:
            concrete = self.functions[sig.name].get_concrete_function()
            want = {p.name for p in self.layout.outputs(sig)}
            if set(concrete.structured_outputs) != want:
                got = sorted(concrete.structured_outputs)
                raise RuntimeError(f"Signature {sig.name!r} returns {got}, the table "
                                   f"{sorted(want)}")
            out.update({name: concrete for name in (sig.name, *sig.aliases)})
        return out

    def root(self) -> tf.Module:
        """The object to save. The TF1 session loader (saved_model_cli, TF Serving) restores
        only variables the object graph reaches directly: track the tf.Variables behind the
        Keras variables, not the Keras model."""
        root = tf.Module(name="tfp_nice_serving")
        root.flow_variables = [compat.tf_variable(v) for v in self.model.variables]
        return root

    # --- checks shared by every signature ------------------------------------------------------
    def _condition(self, inputs: dict, condition: dict) -> tuple[dict, tuple]:
        """Checks the condition input (if any) and that every input has the same rows."""
        port = self.layout.condition
        if port is not None:
            dims = self.layout.dims(port)[1:]
            inputs[port.name] = graph_checks.rows(condition[port.name], port.name, dims)
        inputs = graph_checks.same_rows(inputs)
        return inputs, (() if port is None else (inputs.pop(port.name),))

    # --- the signatures ------------------------------------------------------------------------
    def _log_prob(self, x, **condition):
        inputs, cond = self._condition({"x": self.space.for_density(x, self.dtype)}, condition)
        z, ildj = self._flow.inverse(inputs["x"], *cond)
        lp = tf.cast(self.model.base_distribution.log_prob(z) + ildj, tf.float32)
        return {"log_prob": lp,
                "bits_per_dim": preprocessing.bits_per_dim(-lp, self.num_dims)}

    def _sample(self, seed, temperature, **condition):
        seed = graph_checks.max_rows(graph_checks.rows(seed, "seed", (2,)), "seed",
                                     self.max_samples, "max_samples of this export")
        inputs, cond = self._condition(
            {"seed": seed, "temperature": graph_checks.temperatures(temperature)}, condition)
        base, latent = self.model.base_distribution, self.layout.latent_shape
        z = tf.map_fn(lambda s: base.sample(1, seed=s)[0], inputs["seed"],
                      fn_output_signature=tf.TensorSpec(latent, self.dtype))
        t = tf.reshape(tf.cast(inputs["temperature"], self.dtype), [-1] + [1] * len(latent))
        return self.space.from_model(self._flow.forward(z * t, *cond))

    def _encode(self, x, **condition):
        inputs, cond = self._condition({"x": self.space.for_encode(x, self.dtype)}, condition)
        z, _ = self._flow.inverse(inputs["x"], *cond)
        return {"z": tf.cast(z, tf.float32)}

    def _decode(self, z, **condition):
        z = graph_checks.rows(z, "z", self.layout.latent_shape)
        inputs, cond = self._condition({"z": tf.cast(z, self.dtype)}, condition)
        return self.space.from_model(self._flow.forward(inputs["z"], *cond))
