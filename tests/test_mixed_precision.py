"""Mixed precision: half-precision conditioners, a float32 flow (see tfp_nice.precision).

Tolerance of ``log_prob`` against float32 (same weights): ``D * eps`` nats per example, with
``D`` the event size and ``eps`` the half type's machine epsilon (bfloat16 ``2**-7``, float16
``2**-10``): each conditioner output is rounded to about ``eps / 2`` relative, and the log-det
sums ``D`` of them. Measured on these tiny models: at most 0.09 ``D * eps`` (bfloat16) and
0.12 ``D * eps`` (float16).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_nice import (
    NICE,
    NSF,
    ActNormLayer,
    AffineCoupling,
    BatchNormLayer,
    ConvConditioner,
    FlowModel,
    Glow,
    Invertible1x1ConvLayer,
    LogScale,
    MLPConditioner,
    RealNVP,
    RealNVPImage,
    ResNetConditioner,
    TanhScale,
    WeightNormConv2D,
    cli,
    precision,
    priors,
)
from tfp_nice.training.config import TrainConfig

EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10}

PRESETS = {
    "nice": (lambda **kw: NICE([8], num_couplings=2, hidden_units=(16,), **kw), (8,)),
    "realnvp": (lambda **kw: RealNVP([8], num_couplings=2, hidden_units=(16,), **kw), (8,)),
    "nsf": (lambda **kw: NSF([8], num_couplings=2, hidden_units=(16,), num_bins=4, **kw), (8,)),
    "realnvp_image": (lambda **kw: RealNVPImage([4, 4, 1], num_scales=1, num_blocks=1,
                                                filters=8, **kw), (4, 4, 1)),
    "glow": (lambda **kw: Glow([4, 4, 1], num_levels=1, num_steps=2, filters=8, **kw),
             (4, 4, 1)),
    "conditional": (lambda **kw: RealNVP([8], num_couplings=2, hidden_units=(16,),
                                         num_classes=3, **kw), (8,)),
}
CASES = [(name, p, False) for name in PRESETS for p in EPS] + [
    ("realnvp", "bfloat16", True), ("realnvp", "float16", True),
    ("glow", "float16", True), ("realnvp_image", "bfloat16", True)]


def _inputs(name: str, shape: tuple, n: int = 16):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.95, (n, *shape)).astype("float32")
    return (x, rng.integers(0, 3, n)) if name == "conditional" else x


def _perturbed(model) -> None:
    """Non-trivial weights (the zero-initialised outputs would hide the conditioners)."""
    rng = np.random.default_rng(1)
    for v in model.trainable_variables:
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape).astype(v.dtype))


def _pair(name: str, half: str, memory_saving: bool):
    """The float32 model (perturbed) and the same weights under the mixed policy."""
    make, shape = PRESETS[name]
    inputs = _inputs(name, shape)
    keras.utils.set_random_seed(0)
    ref = make(memory_saving=memory_saving)
    ref(inputs)
    _perturbed(ref)
    keras.utils.set_random_seed(0)
    with precision.policy_scope(half):
        mixed = make(memory_saving=memory_saving)
    mixed(inputs)
    mixed.set_weights(ref.get_weights())
    return ref, mixed, inputs


@pytest.mark.parametrize("name,half,memory_saving", CASES)
def test_log_prob_matches_float32_within_d_times_half_epsilon(name, half, memory_saving):
    ref, mixed, inputs = _pair(name, half, memory_saving)
    assert keras.config.dtype_policy().name == "float32"  # the scope restored it
    assert precision.model_precision(mixed) == half
    assert half in precision.compute_dtypes(mixed)
    a, b = ref(inputs).numpy(), mixed(inputs).numpy()
    assert mixed(inputs).dtype == tf.float32
    d = int(np.prod(ref.event_shape))
    diff = np.abs(a - b).max()
    assert diff <= d * EPS[half], (diff, d * EPS[half])
    assert diff > 0  # the conditioners really ran in half precision


@pytest.mark.parametrize("name,half,memory_saving", CASES)
def test_every_variable_stays_float32_and_gets_a_finite_gradient(name, half, memory_saving):
    _, mixed, inputs = _pair(name, half, memory_saving)
    variables = mixed.trainable_variables
    assert variables and {v.dtype for v in mixed.variables} == {"float32"}
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(mixed(inputs, training=True)) * 1024.0  # a loss scale
    grads = tape.gradient(loss, variables)
    missing = [v.path for v, g in zip(variables, grads) if g is None]
    assert not missing
    assert all(g.dtype == tf.float32 and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("half", list(EPS))
def test_memory_saving_gradients_equal_plain_ones_under_a_mixed_policy(half):
    # tf.custom_gradient's `variables` with autocast reads (the tf-keras#197 trap).
    _, plain, inputs = _pair("realnvp", half, False)
    _, saving, _ = _pair("realnvp", half, True)
    grads = []
    for model in (plain, saving):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(inputs)) * 1024.0
        grads.append(tape.gradient(loss, model.trainable_variables))
    for g0, g1 in zip(*grads):
        scale = float(np.abs(g0.numpy()).max()) + 1e-3
        np.testing.assert_allclose(g1.numpy(), g0.numpy(), atol=EPS[half] * scale * 4)


def _toy(n: int = 512):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 4)).astype("float32")
    return np.concatenate([z[:, :2], 0.5 * z[:, :2] ** 2 + 0.1 * z[:, 2:]], -1)


@pytest.mark.parametrize("half,memory_saving", [("bfloat16", False), ("float16", False),
                                                ("float16", True)])
def test_training_lowers_the_loss(half, memory_saving):
    with precision.policy_scope(half):
        model = RealNVP([4], num_couplings=2, hidden_units=(32,), memory_saving=memory_saving)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (half == "float16")
    x = _toy()
    before = float(model.evaluate(x, verbose=0))
    model.fit(x, epochs=6, batch_size=64, verbose=0)
    after = float(model.evaluate(x, verbose=0))
    assert after < before - 0.1, (before, after)
    assert {v.dtype for v in model.variables} == {"float32"}


def test_compile_wraps_only_float16_models_and_respects_auto_scale_loss():
    model = RealNVP([2], num_couplings=1, hidden_units=(8,))
    model.compile(optimizer="adam")
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    with precision.policy_scope("float16"):
        half = RealNVP([2], num_couplings=1, hidden_units=(8,))
    half.compile(optimizer="adam", auto_scale_loss=False)
    assert not isinstance(half.optimizer, keras.optimizers.LossScaleOptimizer)
    half.compile(optimizer="adam")
    assert isinstance(half.optimizer, keras.optimizers.LossScaleOptimizer)


def test_a_saved_mixed_model_loads_with_its_policies_and_loss_scale(tmp_path):
    with precision.policy_scope("float16"):
        model = RealNVP([4], num_couplings=2, hidden_units=(8,))
    model.compile(optimizer="adam")
    x = _toy(64)
    model.fit(x, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert precision.model_precision(loaded) == "float16"
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), model.log_prob(x).numpy())


HALF_LAYERS = {
    "mlp": (lambda dt: MLPConditioner(3, (8,), zero_init_output=False, dtype=dt), (2, 5)),
    "conv": (lambda dt: ConvConditioner(2, (4,), zero_init_output=False, dtype=dt), (2, 4, 4, 3)),
    "resnet": (lambda dt: ResNetConditioner(2, filters=4, num_blocks=1, zero_init_output=False,
                                            dtype=dt), (2, 4, 4, 3)),
    "wn_conv": (lambda dt: WeightNormConv2D(3, dtype=dt), (2, 4, 4, 2)),
}
FULL_LAYERS = {
    "tanh_scale": (lambda dt: TanhScale(1.5, dtype=dt), (2, 3)),
    "log_scale": (lambda dt: LogScale([3], dtype=dt), None),
    "act_norm": (lambda dt: ActNormLayer(3, dtype=dt), None),
    "batch_norm": (lambda dt: BatchNormLayer(3, dtype=dt), (4, 3)),
    "invertible_1x1": (lambda dt: Invertible1x1ConvLayer(3, seed=0, dtype=dt), None),
}


def _outputs(layer, shape, dtype="float32"):
    rng = np.random.default_rng(2)
    if shape is None:
        out = layer()
    else:
        out = layer(rng.standard_normal(shape).astype(dtype), training=True) if isinstance(
            layer, BatchNormLayer) else layer(rng.standard_normal(shape).astype(dtype))
    return [o for o in tf.nest.flatten(out) if o is not None]


@pytest.mark.parametrize("name", list(HALF_LAYERS))
@pytest.mark.parametrize("half", list(EPS))
def test_conditioner_layers_compute_in_half_precision_with_float32_variables(name, half):
    make, shape = HALF_LAYERS[name]
    keras.utils.set_random_seed(0)
    ref = make("float32")
    a = _outputs(ref, shape)[0]
    keras.utils.set_random_seed(0)
    layer = make(f"mixed_{half}")
    b = _outputs(layer, shape)[0]
    layer.set_weights(ref.get_weights())
    b = _outputs(layer, shape)[0]
    assert b.dtype == half and {v.dtype for v in layer.variables} == {"float32"}
    scale = float(np.abs(a.numpy()).max())
    np.testing.assert_allclose(tf.cast(b, "float32").numpy(), a.numpy(),
                               atol=8 * EPS[half] * scale)


@pytest.mark.parametrize("name", list(FULL_LAYERS))
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_sensitive_layers_compute_exactly_in_float32_under_a_mixed_policy(name, policy):
    make, shape = FULL_LAYERS[name]
    keras.utils.set_random_seed(0)
    ref = make("float32")
    a = _outputs(ref, shape)
    keras.utils.set_random_seed(0)
    layer = make(policy)
    _outputs(layer, shape)
    layer.set_weights([w + 0.25 for w in ref.get_weights()])
    ref.set_weights([w + 0.25 for w in ref.get_weights()])
    a, b = _outputs(ref, shape), _outputs(layer, shape)
    assert layer.compute_dtype == "float32" and layer.variable_dtype == "float32"
    assert all(o.dtype == tf.float32 for o in b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(y.numpy(), x.numpy())


@pytest.mark.parametrize("name", [*HALF_LAYERS, *FULL_LAYERS])
def test_every_layer_honours_a_plain_float64_policy(name):
    make, shape = {**HALF_LAYERS, **FULL_LAYERS}[name]
    layer = make("float64")
    out = _outputs(layer, shape, "float64")
    assert {v.dtype for v in layer.variables} == {"float64"}
    assert all(o.dtype == tf.float64 for o in out)


def test_an_affine_coupling_casts_half_conditioner_outputs_to_float32_before_exp():
    with precision.policy_scope("bfloat16"):
        net = MLPConditioner(4, (8,), zero_init_output=False)
        coupling = AffineCoupling(net, num_masked=2)
    x = tf.constant(np.random.default_rng(3).standard_normal((5, 4)), tf.float32)
    y = coupling.forward(x)
    fldj = coupling.forward_log_det_jacobian(x, event_ndims=1)
    assert y.dtype == tf.float32 and fldj.dtype == tf.float32
    np.testing.assert_allclose(coupling.inverse(y).numpy(), x.numpy(), atol=1e-5)
    np.testing.assert_allclose(coupling.inverse_log_det_jacobian(y, event_ndims=1).numpy(),
                               -fldj.numpy(), atol=1e-5)


def test_a_mixed_model_dtype_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"policy_scope\('bfloat16'\).*Received: "
                                         r"dtype='mixed_bfloat16'"):
        FlowModel(priors.standard_normal([2]),
                  [AffineCoupling(MLPConditioner(2, (4,)), num_masked=1)],
                  dtype="mixed_bfloat16")


def test_policy_scope_restores_the_global_policy_and_checks_its_argument():
    with pytest.raises(RuntimeError), precision.policy_scope("float16"):
        assert keras.config.dtype_policy().name == "mixed_float16"
        raise RuntimeError
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="mixed_precision.*Received: mixed_precision='fp8'"):
        precision.policy_name("fp8")
    assert precision.policy_name(None) == "float32"


def test_train_config_omits_mixed_precision_at_its_default_and_checks_it():
    assert "mixed_precision" not in TrainConfig().to_dict()
    cfg = TrainConfig(mixed_precision="bfloat16")
    assert cfg.to_dict()["mixed_precision"] == "bfloat16"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="mixed_precision.*Received: mixed_precision='half'"):
        TrainConfig(mixed_precision="half")


@pytest.mark.parametrize("half", list(EPS))
def test_cli_trains_a_tiny_model_in_mixed_precision(tmp_path, half):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "realnvp", "--data", "moons", "--out", str(out),
                     "--epochs", "2", "--hidden-units", "16", "--num-couplings", "2",
                     "--batch-size", "256", "--mixed-precision", half, "--no-export"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["mixed_precision"] == half
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_nll_nats"])
    model = keras.models.load_model(out / "model.keras")
    assert precision.model_precision(model) == half
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        half == "float16")


def test_cli_refuses_an_unknown_mixed_precision(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--out", str(tmp_path / "r"), "--mixed-precision", "float8"])
    assert e.value.code == 2
    assert "--mixed-precision" in capsys.readouterr().err


def test_a_saved_custom_flow_keeps_half_conditioners_and_float32_scales(tmp_path):
    with precision.policy_scope("bfloat16"):
        coupling = AffineCoupling(MLPConditioner(2, (8,), zero_init_output=False),
                                  num_masked=1)
    model = FlowModel(priors.standard_normal([2]), [coupling])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    policies = {type(layer).__name__: layer.compute_dtype for layer in loaded.flow_layers}
    assert policies == {"MLPConditioner": "bfloat16", "TanhScale": "float32"}
    x = _toy(8)[:, :2]
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), model.log_prob(x).numpy())


def test_the_class_conditional_prior_stays_float32_under_a_mixed_policy():
    with precision.policy_scope("bfloat16"):
        model = RealNVP([4], num_couplings=2, hidden_units=(8,), num_classes=3,
                        conditioning="both")
    prior = [s for s in model.steps if type(s).__name__ == "ContextAffine"]
    assert prior and prior[0].conditioner.compute_dtype == "float32"
    couplings = [s for s in model.steps if isinstance(s, AffineCoupling)]
    assert {c.conditioner.compute_dtype for c in couplings} == {"bfloat16"}


def test_readme_mixed_precision_example_trains_with_loss_scaling():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "policy_scope(" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model = namespace["half_model"]
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert precision.model_precision(model) == "float16"
    assert np.isfinite(model.log_prob(namespace["x"][:8]).numpy()).all()
