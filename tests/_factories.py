"""Shared test factories: tiny conditioners, call-counting conditioners, ``.keras`` round trips."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
from _cli import ENV

import tfp_nice as tn


def mlp(output_units, hidden=(16,), dtype="float64", **kwargs) -> tn.MLPConditioner:
    """An MLP conditioner with a non-zero output layer (so every coupling is a real transform)."""
    return tn.MLPConditioner(output_units, hidden, dtype=dtype, zero_init_output=False, **kwargs)


def counting(base: type) -> type:
    """A subclass of the conditioner class ``base`` that counts its calls: each instance's
    ``calls`` and the class-wide ``total`` (reset them to 0 before counting)."""

    class Counting(base):
        total = 0

        def call(self, inputs, *args, **kwargs):  # `inputs` named: Keras builds from it
            self.calls = getattr(self, "calls", 0) + 1
            type(self).total += 1
            return super().call(inputs, *args, **kwargs)

    Counting.__name__ = Counting.__qualname__ = f"Counting{base.__name__}"
    return Counting


def reload(model: keras.Model, tmp_path, name: str = "model.keras") -> keras.Model:
    """``model`` saved to ``tmp_path / name`` and loaded back with ``keras.models.load_model``."""
    path = tmp_path / name
    model.save(path)
    return keras.models.load_model(path)


def assert_same_model(loaded, model, x, seed=(3, 4), **sample_kwargs) -> None:
    """``loaded`` gives bit-identical ``log_prob(x)`` and seeded samples to ``model``."""
    np.testing.assert_array_equal(loaded.log_prob(x), model.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(4, seed=seed, **sample_kwargs),
                                  model.sample(4, seed=seed, **sample_kwargs))


#: Prepended to :func:`run_on_two_cpus` scripts: two logical CPUs before TensorFlow starts.
_TWO_CPUS = (
    "import tensorflow as tf\n"
    "cpu = tf.config.list_physical_devices('CPU')[0]\n"
    "tf.config.set_logical_device_configuration(\n"
    "    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
)


def run_on_two_cpus(script: str, timeout: int = 300) -> dict:
    """Runs ``script`` in a fresh Python with two logical CPUs (for ``MirroredStrategy``) and
    returns the JSON object its last stdout line prints (asserting a clean exit)."""
    proc = subprocess.run([sys.executable, "-c", _TWO_CPUS + textwrap.dedent(script)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
