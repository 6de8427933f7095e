"""bench/gpu.py: the quick run end to end on CPU, failures recorded as rows, the time budget."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from _cli import ENV

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu():
    return _load_gpu_bench()


def test_quick_run_writes_every_config_with_throughput_and_memory(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    rows = result["rows"]
    got = {(r["part"], r["precision"], r["memory_saving"], r.get("depth")) for r in rows}
    assert got == {("grid", "float32", False, None), ("grid", "mixed_bfloat16", False, None),
                   ("grid", "float32", True, None), ("depth", "float32", False, 2),
                   ("depth", "float32", True, 2)}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["img_s"] > 0 and r["params"] > 0, r
        assert r["peak_mib"] > 0, r  # the CPU BFC allocator was on
    mixed = next(r for r in rows if r["precision"] == "mixed_bfloat16")
    assert "bfloat16" in mixed["compute_dtypes"], mixed
    assert result["env"]["device"] == "CPU:0" and result["env"]["jit"] is False
    md = (tmp_path / "gpu.md").read_text()
    assert "## Image models" in md and "## Depth: plain vs memory-saving" in md
    assert md.count("| realnvp-28 |") == 3 and md.count("| stack-32 | 2 |") == 2


def test_a_model_that_fails_is_a_row_not_a_crash(gpu):
    def build(shape, quick, depth, memory_saving):
        if keras.mixed_precision.global_policy().name != "float32":
            raise TypeError("half precision is not wired up")
        raise ValueError("broken model")

    gpu.register_model("broken", (4, 4, 1), (4, 4, 1), build)
    args = gpu._parse(["--quick"])

    def rows(precision):
        group = dict(part="grid", model="broken", batches=[2, 4], precision=precision,
                     memory_saving=False)
        return gpu.measure(gpu.MODELS["broken"], group, args)

    got = rows("mixed_float16")
    assert [r["batch"] for r in got] == [2, 4]
    assert {r["status"] for r in got} == {
        "unsupported (TypeError: half precision is not wired up)"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert {r["status"] for r in rows("float32")} == {"error (ValueError: broken model)"}


def test_configs_past_the_time_budget_are_skipped_and_listed(gpu, tmp_path):
    rows = gpu.main(["--quick", "--budget-s", "0", "--out", str(tmp_path / "gpu")])
    assert len(rows) == 5 and all(r["status"] == "skipped (time budget)" for r in rows)
    assert (tmp_path / "gpu.md").read_text().count("skipped (time budget)") == 5


def test_unknown_model_names_are_refused(gpu, capsys):
    with pytest.raises(SystemExit):
        gpu._parse(["--models", "realnvp-28,glow-99"])
    assert "unknown model 'glow-99'" in capsys.readouterr().err


# --- bench/image_quality.py ----------------------------------------------------------------------
def test_image_quality_bench_takes_user_28x28_uint8_images_and_rejects_vectors(tmp_path):
    """`bench/image_quality.py --data PATH` trains on the user's [N, 28, 28, 1] uint8 images."""
    images = np.random.default_rng(0).integers(0, 256, [120, 28, 28, 1]).astype(np.uint8)
    np.save(tmp_path / "mine.npy", images)
    bench = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "image_quality.py")
    proc = subprocess.run([sys.executable, bench, "--quick", "--seconds", "1", "--models", "nice",
                           "--batch", "16", "--data", str(tmp_path / "mine.npy")],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Image quality at equal training time (28x28 images" in proc.stdout
    assert "[28, 28, 1]" in proc.stdout and "256 levels" in proc.stdout
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| nice |"))
    assert math.isfinite(float(row.split("**")[-2]))  # held-out bits/dim
    np.save(tmp_path / "vectors.npy", np.random.default_rng(1).standard_normal([120, 5]))
    proc = subprocess.run([sys.executable, bench, "--quick", "--data",
                           str(tmp_path / "vectors.npy")],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 2 and "--data must hold images [N, H, W, C]" in proc.stderr


def test_image_quality_bench_trains_glow_on_28x28_images(tmp_path):
    """`bench/image_quality.py --models glow --data PATH` (with a tiny --glow-kwargs variant)."""
    images = np.random.default_rng(0).integers(0, 256, [120, 28, 28, 1]).astype(np.uint8)
    np.save(tmp_path / "mine.npy", images)
    bench = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "image_quality.py")
    proc = subprocess.run([sys.executable, bench, "--quick", "--seconds", "1", "--models", "glow",
                           "--batch", "16", "--data", str(tmp_path / "mine.npy"),
                           "--glow-kwargs", '{"num_steps": 1, "filters": 8}'],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| glow "))
    assert '"num_steps": 1' in row and math.isfinite(float(row.split("**")[-2]))
    proc = subprocess.run([sys.executable, bench, "--quick", "--models", "glow,flow++"],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 2 and "--models must be a comma-separated subset" in proc.stderr


def test_conditional_bench_quick_run_writes_every_part(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_conditional",
                                                  ROOT / "bench" / "conditional.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick", "--out", str(tmp_path / "c"), "--work-dir",
                        str(tmp_path / "runs")])
    assert [(r["part"], r["model"], r["conditional"]) for r in rows] == [
        ("conditional", "realnvp", False), ("conditional", "realnvp", True),
        ("spline-vs-affine", "realnvp", False), ("spline-vs-affine", "nsf", False)]
    plain, cond = rows[0], rows[1]
    assert plain["accuracy"] is None and 0.0 <= cond["accuracy"] <= 1.0
    assert "--conditional" in cond["flags"] and "--conditional" not in plain["flags"]
    assert cond["params"] > plain["params"]  # the label's weights
    assert all("--time-limit 0.05" in r["flags"] for r in rows[2:])
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["rows"] == rows and saved["env"]["quick"] is True
    md = (tmp_path / "c.md").read_text()
    assert md.count("| conditional | digits |") == 2 and "| spline-vs-affine | digits |" in md
    assert all("--epochs" not in r["flags"] for r in rows[2:])  # the budget alone bounds them
    calls = []  # --parts: only the parts asked for run (recorded, not trained)
    module.run = lambda part, data_name, splits, work, **config: calls.append(
        (part, config["model"], config.get("time_limit"))) or dict(
        part=part, data=data_name, flags="", params=1, bits_per_dim=1.0,
        marginal_bits_per_dim=1.0, accuracy=None, epochs=1, train_s=1.0, load=0.0)
    module.main(["--quick", "--parts", "spline-vs-affine", "--out", str(tmp_path / "s")])
    assert calls == [("spline-vs-affine", "realnvp", 0.05), ("spline-vs-affine", "nsf", 0.05)]
    calls.clear()
    module.main(["--quick", "--parts", "conditional", "--out", str(tmp_path / "s")])
    assert calls == [("conditional", "realnvp", None)] * 2
    with pytest.raises(SystemExit):
        module.main(["--quick", "--parts", "splines"])


def test_image_speed_quick_writes_every_config_ratio_and_part(tmp_path):
    """bench/image_speed.py --quick: the flow, its conv floor, the gauge and fit, in one run."""
    out = tmp_path / "image_speed"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "image_speed.py"), "--quick",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "image_speed.json").read_text())
    assert result["env"]["quick"] and len(result["env"]["load_before"]) == 3
    models = {m["model"]: m for m in result["models"]}
    assert set(models) == {"realnvp-image", "glow"}
    for name, m in models.items():
        configs = {(r["config"], r["mode"]) for r in m["rows"]}
        want = {"flow", "flow_gather", "floor", "floor_wn", "floor_ingrad", "floor_chain",
                "skeleton", "gauge", "fit", "floor_fit", "no_update", "no_logit"}
        want |= ({"skeleton_no_norm", "no_norm"} if name == "realnvp-image" else
                 {"skeleton_no_norm", "skeleton_no_1x1"})
        assert configs == {(c, "function") for c in want}, configs
        assert all(r["img_s"] > 0 and r["median_s"] > 0 for r in m["rows"])
        assert m["conv_gflop_per_step"] > 0 and m["params"] > 0
        assert 0 < m["ratios"]["flow/floor function"] < 5
        assert 0 < m["ratios"]["fit/floor_fit function"] < 5
        assert 0 < m["ratios"]["flow/floor_chain function"] < 5
        assert 0 < m["ratios"]["flow/floor_ingrad function"] < 5
        assert 0 < m["ratios"]["bound: floor/floor_ingrad function"] < 5
        parts = m["parts_s"]
        assert parts["flow step"] > 0 and "fit loop (fit - flow)" in parts
        assert "dependency (floor_chain - floor)" in parts
        ingrad = parts["  of it: input gradients (floor_ingrad - floor)"]
        ordering = parts["  of it: ordering (floor_chain - floor_ingrad)"]
        assert ingrad + ordering == pytest.approx(parts["dependency (floor_chain - floor)"])
        assert "ablation: optimizer update (flow - no_update)" in parts
        assert ("ablation: normalisation (flow - no_norm)" in parts) == (name == "realnvp-image")
        assert ("  of it: 1x1 convolutions (skeleton - skeleton_no_1x1)" in parts) == (
            name == "glow")
    assert models["glow"]["hparams"]["num_scales"] == 1  # glow_defaults on 8x8
    md = (tmp_path / "image_speed.md").read_text()
    assert "## realnvp-image" in md and "## glow" in md and "| flow/floor function |" in md


def test_image_speed_glow_skeleton_without_its_actnorm_and_1x1_convolutions_skips_them():
    """skeleton_no_norm / skeleton_no_1x1 of glow: those bijectors become the identity (log-det
    0) in that copy only, so their cost is the difference of two skeleton steps."""
    import tensorflow as tf

    import tfp_nice as tn

    spec = importlib.util.spec_from_file_location("bench_image_speed_glow",
                                                  ROOT / "bench" / "image_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = np.random.default_rng(0).uniform(0.1, 0.9, (4, 8, 8, 1)).astype("float32")
    models = [tn.Glow([8, 8, 1], num_levels=1, num_steps=2, filters=4) for _ in range(2)]
    models[0].initialize_from_data(x)  # ActNorm from the data: no longer the identity
    models[1](x)
    models[1].set_weights(models[0].get_weights())
    kinds = (tn.ActNorm, tn.Invertible1x1Conv)
    module._without(models[1], *kinds)
    walk = lambda m: [b for s in tf.nest.flatten(m.steps) for b in tn.graph.walk(s)  # noqa: E731
                      if isinstance(b, kinds)]
    assert len(walk(models[1])) == 4
    z = tf.constant(np.random.default_rng(1).normal(size=(4, 4, 4, 4)).astype("float32"))
    for b in walk(models[1]):
        np.testing.assert_array_equal(b.forward(z), z)
        assert float(b.inverse_log_det_jacobian(z, event_ndims=3)) == 0.0
    for b in walk(models[0]):  # the original keeps its own
        assert not np.allclose(b.forward(z), z)
    assert not np.allclose(models[0].log_prob(x), models[1].log_prob(x))


def test_image_speed_floor_ingrad_computes_the_input_gradients_the_floor_skips():
    """floor_ingrad's step reaches each network's input (through a zero offset weight, as a
    coupling's conditioner input depends on earlier weights); the floor's inputs are constants."""
    import tensorflow as tf

    spec = importlib.util.spec_from_file_location("bench_image_speed",
                                                  ROOT / "bench" / "image_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nets = lambda: [keras.layers.Conv2D(3, 3, padding="same") for _ in range(2)]  # noqa: E731
    shapes = [(6, 6, 2), (3, 3, 5)]
    plain = module.Floor(nets(), shapes, 4)
    ingrad = module.FloorInputGrad(nets(), shapes, 4)
    for model in (plain, ingrad):
        model(None)
    assert len(ingrad.trainable_variables) == len(plain.trainable_variables) + 2
    with tf.GradientTape() as tape:
        loss = ingrad(None)
    grads = tape.gradient(loss, ingrad.offsets)
    assert all(g is not None and np.isfinite(float(g)) and float(g) != 0.0 for g in grads)
    # the offset's gradient is the input gradient summed: a central difference agrees
    eps = 1e-2
    ingrad.offsets[0].assign(eps)
    up = float(ingrad(None))
    ingrad.offsets[0].assign(-eps)
    down = float(ingrad(None))
    assert float(grads[0]) == pytest.approx((up - down) / (2 * eps), rel=1e-2, abs=1e-5)


# --- bench/photo_patches.py ----------------------------------------------------------------------
def test_photo_patches_keep_held_out_patches_off_the_training_columns(monkeypatch):
    """Train / validation / test patches come from disjoint column bands (70 / 15 / 15 %) of
    each photo, so no held-out pixel is in a training patch; uint8 [N, size, size, 3]."""
    import sklearn.datasets

    spec = importlib.util.spec_from_file_location("bench_photo_patches",
                                                  ROOT / "bench" / "photo_patches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    h, w = 40, 200  # each pixel holds its column index (and the photo's number in channel 2)
    photos = [np.stack(np.broadcast_arrays(np.arange(w)[None, :] % 256,
                                           np.arange(w)[None, :] // 256,
                                           np.full((h, w), k)), axis=-1).astype(np.uint8)
              for k in range(2)]
    monkeypatch.setattr(sklearn.datasets, "load_sample_images",
                        lambda: type("Bunch", (), {"images": photos}))
    arrays = module.build(size=8, stride=4)
    cols = {k: a[..., 0].astype(int) + 256 * a[..., 1].astype(int) for k, a in arrays.items()}
    assert cols["x_train"].max() < 140 <= cols["x_val"].min()
    assert cols["x_val"].max() < 170 <= cols["x_test"].min()
    for k, a in arrays.items():
        assert a.dtype == np.uint8 and a.shape[1:] == (8, 8, 3), (k, a.shape)
        assert set(np.unique(a[..., 2])) == {0, 1}  # both photos in every split
    assert len(arrays["x_train"]) == 2 * ((h - 8) // 4 + 1) * ((140 - 8) // 4 + 1)
    monkeypatch.undo()
    real = module.build()  # the bundled photographs themselves
    assert {k: v.shape for k, v in real.items()} == {
        "x_train": (20790, 32, 32, 3), "x_val": (250, 32, 32, 3), "x_test": (250, 32, 32, 3)}
