"""The README's usage example runs as written."""

from __future__ import annotations

import pathlib
import re

import keras
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs_and_round_trips(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    usage = next(b for b in blocks if "FlowModel(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(usage, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model, x = namespace["model"], namespace["x"]
    loaded = keras.models.load_model(tmp_path / "flow.keras")
    np.testing.assert_array_equal(loaded.log_prob(x[:16]), model.log_prob(x[:16]))
