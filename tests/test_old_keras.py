"""`.keras` files written by an older tfp_nice (427e8a8) load and give the same numbers."""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import pytest

import tfp_nice as tn

DATA = pathlib.Path(__file__).parent / "data"
VALUES = json.loads((DATA / "old_models.json").read_text())
FLOWS = ["flow_4d", "nice_8x8", "realnvp_image_4x4", "realnvp_image_actnorm_4x4"]


@pytest.mark.parametrize("name", FLOWS)
def test_old_keras_flow_loads_with_the_same_log_prob(name):
    model = keras.models.load_model(DATA / f"{name}.keras")
    assert isinstance(model, tn.FlowModel)
    x = np.asarray(VALUES[name]["x"], np.float32)
    np.testing.assert_allclose(model.log_prob(x), VALUES[name]["log_prob"], rtol=1e-5, atol=1e-4)


def test_old_keras_actnorm_model_stays_initialised():
    model = keras.models.load_model(DATA / "realnvp_image_actnorm_4x4.keras")
    x = np.asarray(VALUES["realnvp_image_actnorm_4x4"]["x"], np.float32)
    assert model.initialize_from_data(x) == 0  # nothing left to initialise


def test_old_keras_revnet_loads_with_the_same_output():
    model = keras.models.load_model(DATA / "revnet.keras")
    x = np.asarray(VALUES["revnet"]["x"], np.float32)
    np.testing.assert_allclose(model(x), VALUES["revnet"]["output"], rtol=1e-5, atol=1e-5)
