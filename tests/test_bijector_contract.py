"""Contract suite: every tfp_nice bijector factory passes the public conformance kit.

Each factory builds a bijector with non-trivial (non-zero) weights in float64, so the
checks exercise the real transform, not the identity a fresh coupling starts as.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import counting, mlp

import tfp_nice as tn
from tfp_nice import masks, testing

tfb = tfp.bijectors
F64 = "float64"


def _mlp(units, dtype=F64, hidden=(16, 16), activation="tanh"):
    return mlp(units, hidden, dtype=dtype, activation=activation)


def _additive(mask=None, dtype=F64, **split):
    m = mask if mask is not None else masks.half(5, **split)
    return tn.AdditiveCoupling(_mlp(m.num_transformed, dtype), mask=mask, **split)


def _affine(mask=None, scale="tanh", dtype=F64, **split):
    m = mask if mask is not None else masks.half(5, **split)
    b = tn.AffineCoupling(_mlp(2 * m.num_transformed, dtype), mask=mask, scale=scale, **split)
    if b.keras_layers[-1:] and isinstance(b.keras_layers[-1], tn.TanhScale):
        layer = b.keras_layers[-1]
        layer.build((None, m.num_transformed))
        layer.scale.assign(np.linspace(0.5, 1.5, m.num_transformed))
    return b


def _diag(shape):
    b = tn.DiagonalScale(event_shape=shape)
    size = int(np.prod(shape))
    b.log_scale.log_scale.assign(np.linspace(-0.7, 0.9, size).reshape(shape))
    return b


def _set_tanh_scale(b, num_transformed):
    if b.keras_layers[-1:] and isinstance(b.keras_layers[-1], tn.TanhScale):
        layer = b.keras_layers[-1]
        layer.build((None, num_transformed))
        layer.scale.assign(np.linspace(0.5, 1.5, num_transformed))
    return b


def _masked(mask, kind="affine", conditioner="resnet", dtype=F64):
    """An image coupling whose conv conditioner sees [x * mask, mask] (conditioner_input)."""
    c = mask.event_shape[-1]
    out = 2 * c if kind == "affine" else c
    if conditioner == "resnet":
        net = tn.ResNetConditioner(out, filters=8, num_blocks=1, zero_init_output=False,
                                   dtype=dtype)
    else:
        net = tn.ConvConditioner(out, filters=(8,), zero_init_output=False, dtype=dtype)
    if kind == "affine":
        b = tn.AffineCoupling(net, mask=mask, conditioner_input="masked")
        return _set_tanh_scale(b, mask.num_transformed)
    return tn.AdditiveCoupling(net, mask=mask, conditioner_input="masked")


def _act_norm(channels=2):
    b = tn.ActNorm(layer=tn.ActNormLayer(channels, dtype=F64))
    b.layer.initialize(np.linspace(-0.5, 0.4, channels), np.linspace(-0.6, 0.7, channels))
    return b


def _batch_norm(channels=2, training=None):
    b = tn.BatchNorm(layer=tn.BatchNormLayer(channels, dtype=F64), training=training)
    b.layer.moving_mean.assign(np.linspace(-0.3, 0.5, channels))
    b.layer.moving_variance.assign(np.linspace(0.4, 2.5, channels))
    b.layer.log_gamma.assign(np.linspace(0.2, -0.3, channels))
    b.layer.beta.assign(np.linspace(-0.1, 0.3, channels))
    return b


def _factor_out():
    inner = tfb.Chain([_act_norm(1), _masked(masks.checkerboard([4, 4, 1]))])
    return tn.FactorOut(inner, num_kept=1)


def _multiscale_block():
    """One RealNVP scale in miniature: squeeze, channel coupling, ordered squeeze, factor-out."""
    inner = _masked(masks.checkerboard([2, 2, 4], "odd"), kind="additive", conditioner="conv")
    return tfb.Chain([
        _masked(masks.checkerboard(IMG)),
        tfb.Invert(tn.Squeeze()),
        _masked(masks.channel([2, 2, 8])),
        tn.Squeeze(),
        tfb.Invert(tn.Squeeze(channel_order="checkerboard")),
        tn.FactorOut(inner, num_kept=4),
        tn.Squeeze(channel_order="checkerboard"),
    ])


def _conv_1x1(channels=2, event_ndims=3):
    """An invertible 1x1 convolution whose L, U and log|s| are far from the initial rotation."""
    b = tn.Invertible1x1Conv(layer=tn.Invertible1x1ConvLayer(channels, seed=3, dtype=F64),
                             event_ndims=event_ndims)
    rng = np.random.default_rng(channels)
    for v in b.layer.trainable_weights:
        v.assign(v.numpy() + rng.normal(0.0, 0.5, v.shape))
    return b


def _glow_step(coupling="affine"):
    """One Glow step (ActNorm, 1x1 conv, coupling) with every trainable weight perturbed."""
    chain = tfb.Chain(tn.presets.glow_step(IMG, filters=8, coupling=coupling, dtype=F64))
    chain.forward(tf.zeros([1, *IMG], tf.float64))  # builds the layers
    rng = np.random.default_rng(7)
    for layer in tn.graph.collect(chain).layers:
        for v in layer.trainable_weights:
            v.assign(v.numpy() + rng.normal(0.0, 0.1, v.shape))
    return chain


def _spline(mask=None, dtype=F64, **split):
    net = tn.MLPConditioner(None, (16, 16), activation="tanh", zero_init_output=False,
                            dtype=dtype)
    return tn.SplineCoupling(net, mask=mask, num_bins=4, bound=2.5, **split)


def _masked_spline(mask):
    net = tn.ResNetConditioner(filters=8, num_blocks=1, zero_init_output=False, dtype=F64)
    return tn.SplineCoupling(net, mask=mask, num_bins=3, bound=2.5, conditioner_input="masked")


@keras.saving.register_keras_serializable(package="tests")
def gated_bijector(h):
    """A gated elementwise map: ``y2 = g x2 + (1 - g) t`` (a ``tn.Coupling`` Keras form)."""
    shift, logit = tf.split(h, 2, axis=-1)
    gate = tf.sigmoid(logit + 1.0)
    return tfb.Shift((1.0 - gate) * shift)(tfb.Scale(gate))


def _gated(mask=None, **split):
    return tn.Coupling(gated_bijector, mask=mask, conditioner=_mlp(None), units_per_dim=2, **split)


def _tfp_form():
    """TFP's ``bijector_fn(x1)`` contract, with a Keras layer in the function's closure."""
    net = _mlp(6)

    def bijector_fn(x1):  # x1 keeps the batch shape of x: [..., 2], [2] for one event
        h = net(x1[tf.newaxis])[0] if x1.shape.rank == 1 else net(x1)
        shift, log_scale = tf.split(h, 2, axis=-1)
        return tfb.Shift(shift)(tfb.Scale(log_scale=tf.tanh(log_scale)))

    return tn.Coupling(bijector_fn, num_masked=2)


def _context_affine(shape):
    size = int(np.prod(shape))
    net = tn.MLPConditioner(2 * size, (), zero_init_output=False, dtype=F64)
    return tn.ContextAffine(shape, conditioner=net)


def _conditional(kind):
    """Couplings whose conditioner also sees a context (CONDITIONS)."""
    if kind == "affine":
        return _affine(num_masked=2)
    if kind == "spline":
        return _spline(num_masked=-2)
    net = tn.ResNetConditioner(filters=8, num_blocks=1, zero_init_output=False, dtype=F64)
    b = tn.AffineCoupling(net, mask=masks.checkerboard(IMG), conditioner_input="masked")
    return _set_tanh_scale(b, masks.checkerboard(IMG).num_transformed)


IMG = [4, 4, 2]
FACTORIES = {
    # name: (factory, event_shape)
    "additive-num_masked": (lambda: _additive(num_masked=2), [5]),
    "additive-num_masked-negative": (lambda: _additive(num_masked=-2), [5]),
    "additive-fraction_masked": (lambda: _additive(fraction_masked=0.5), [5]),
    "additive-even_odd": (lambda: _additive(mask=masks.even_odd(5)), [5]),
    "additive-odd": (lambda: _additive(mask=masks.even_odd(5, "odd")), [5]),
    "additive-checkerboard": (lambda: _additive(mask=masks.checkerboard(IMG)), IMG),
    "additive-channel": (lambda: _additive(mask=masks.channel(IMG)), IMG),
    "affine-exp": (lambda: _affine(num_masked=2, scale="exp"), [5]),
    "affine-tanh": (lambda: _affine(num_masked=2, scale="tanh"), [5]),
    "affine-sigmoid": (lambda: _affine(num_masked=2, scale="sigmoid"), [5]),
    "affine-soft_clamp": (lambda: _affine(num_masked=2, scale="soft_clamp"), [5]),
    "affine-fraction_masked-negative": (lambda: _affine(fraction_masked=-0.4), [5]),
    "affine-even_odd": (lambda: _affine(mask=masks.even_odd(5, "odd")), [5]),
    "affine-checkerboard": (lambda: _affine(mask=masks.checkerboard(IMG, "odd")), IMG),
    "affine-channel": (lambda: _affine(mask=masks.channel(IMG, "odd")), IMG),
    "affine-checkerboard-exp": (lambda: _affine(mask=masks.checkerboard(IMG), scale="exp"), IMG),
    "diagonal_scale-vector": (lambda: _diag([5]), [5]),
    "diagonal_scale-image": (lambda: _diag(IMG), IMG),
    "masked-affine-checkerboard-resnet": (lambda: _masked(masks.checkerboard(IMG)), IMG),
    "masked-affine-channel-resnet": (lambda: _masked(masks.channel(IMG, "odd")), IMG),
    "masked-additive-checkerboard-conv": (
        lambda: _masked(masks.checkerboard(IMG, "odd"), "additive", "conv"), IMG),
    "squeeze-channel_major": (lambda: tn.Squeeze(), IMG),
    "squeeze-checkerboard": (lambda: tn.Squeeze(channel_order="checkerboard"), IMG),
    "squeeze-factor-3": (lambda: tn.Squeeze(factor=3), [6, 3, 1]),
    "act_norm-image": (_act_norm, IMG),
    "act_norm-vector": (lambda: tn.ActNorm(layer=_act_norm(5).layer, event_ndims=1), [5]),
    "batch_norm-inference": (_batch_norm, IMG),
    "batch_norm-fixed-inference": (lambda: _batch_norm(training=False), IMG),
    "factor_out": (_factor_out, IMG),
    "multiscale-block": (_multiscale_block, IMG),
    "invertible_1x1_conv-image": (_conv_1x1, IMG),
    "invertible_1x1_conv-image-4-channels": (lambda: _conv_1x1(4), [2, 3, 4]),
    "invertible_1x1_conv-one-channel": (lambda: _conv_1x1(1), [3, 3, 1]),
    "invertible_1x1_conv-vector": (lambda: _conv_1x1(5, event_ndims=1), [5]),
    "glow-step-affine": (_glow_step, IMG),
    "glow-step-additive": (lambda: _glow_step("additive"), IMG),
    "spline-num_masked": (lambda: _spline(num_masked=2), [5]),
    "spline-fraction_masked-negative": (lambda: _spline(fraction_masked=-0.6), [5]),
    "spline-even_odd": (lambda: _spline(mask=masks.even_odd(5)), [5]),
    "spline-checkerboard": (lambda: _spline(mask=masks.checkerboard(IMG, "odd")), IMG),
    "masked-spline-channel-resnet": (lambda: _masked_spline(masks.channel(IMG)), IMG),
    "coupling-keras-gated": (lambda: _gated(num_masked=2), [5]),
    "coupling-keras-gated-even_odd": (lambda: _gated(mask=masks.even_odd(5, "odd")), [5]),
    "coupling-tfp-bijector_fn": (_tfp_form, [5]),
    "conditional-affine": (lambda: _conditional("affine"), [5]),
    "conditional-spline": (lambda: _conditional("spline"), [5]),
    "conditional-masked-affine-resnet": (lambda: _conditional("masked"), IMG),
    "context_affine-vector": (lambda: _context_affine([5]), [5]),
    "context_affine-image": (lambda: _context_affine(IMG), IMG),
}

#: Condition keyword arguments for the conditional factories: one context [3] for all rows.
_CONTEXT = {"context": np.array([0.3, -0.2, 0.5])}
CONDITIONS = {name: _CONTEXT for name in FACTORIES
              if name.startswith(("conditional-", "context_affine-"))}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bijector_passes_conformance_kit_in_float64(name):
    factory, event_shape = FACTORIES[name]
    testing.check_bijector(factory(), event_shape, dtype=tf.float64, scale=1.5,
                           condition=CONDITIONS.get(name))


@pytest.mark.parametrize("name", ["affine-tanh", "additive-checkerboard", "diagonal_scale-image",
                                  "multiscale-block", "batch_norm-inference",
                                  "invertible_1x1_conv-image-4-channels", "glow-step-affine",
                                  "spline-num_masked", "coupling-keras-gated",
                                  "conditional-spline"])
def test_inverse_log_det_matches_autodiff_within_1e_10(name):
    factory, event_shape = FACTORIES[name]
    x = testing.random_input((6,), event_shape, tf.float64, seed=7, scale=2.0)
    testing.assert_log_det_matches_autodiff(factory(), x, len(event_shape), atol=1e-10, rtol=0,
                                            condition=CONDITIONS.get(name))


@pytest.mark.parametrize("name", ["affine-tanh", "affine-exp", "additive-num_masked",
                                  "invertible_1x1_conv-image", "glow-step-affine",
                                  "spline-num_masked", "masked-spline-channel-resnet",
                                  "coupling-keras-gated", "coupling-tfp-bijector_fn",
                                  "context_affine-vector"])
def test_transform_is_not_the_identity_so_the_checks_are_meaningful(name):
    factory, event_shape = FACTORIES[name]
    x = testing.random_input((4,), event_shape, tf.float64)
    y = factory().forward(x, **CONDITIONS.get(name, {}))
    assert np.max(np.abs(y - x)) > 1e-3


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_conditional_transform_depends_on_the_context(name):
    factory, event_shape = FACTORIES[name]
    b = factory()
    x = testing.random_input((4,), event_shape, tf.float64)
    y0 = b.forward(x, context=np.zeros(3))
    y1 = b.forward(tf.identity(x), **CONDITIONS[name])
    assert np.max(np.abs(y1 - y0)) > 1e-3


def test_additive_log_det_is_exactly_zero_but_jacobian_not_constant():
    b = _additive(num_masked=2)
    x = testing.random_input((3,), [5], tf.float64)
    assert not b.is_constant_jacobian
    assert np.all(b.forward_log_det_jacobian(x, event_ndims=1).numpy() == 0.0)
    assert np.all(b.inverse_log_det_jacobian(x, event_ndims=1).numpy() == 0.0)


def test_affine_log_det_is_sum_of_log_scale_of_transformed_units():
    mlp = _mlp(4)
    b = tn.AffineCoupling(mlp, num_masked=3, scale="exp")
    x = testing.random_input((3,), [5], tf.float64)
    shift, log_scale = np.split(mlp(x[:, :3]).numpy(), 2, axis=-1)
    np.testing.assert_allclose(b.forward_log_det_jacobian(x, event_ndims=1), log_scale.sum(-1),
                               rtol=1e-12)
    y = b.forward(x).numpy()
    np.testing.assert_allclose(y[:, :3], x[:, :3])
    np.testing.assert_allclose(y[:, 3:], x[:, 3:] * np.exp(log_scale) + shift, rtol=1e-12)


@pytest.mark.parametrize("kind", ["additive", "affine"])
def test_fresh_coupling_is_the_identity(kind):
    net = tn.MLPConditioner(3 if kind == "additive" else 6, (8,))
    cls = tn.AdditiveCoupling if kind == "additive" else tn.AffineCoupling
    b = cls(net, num_masked=2)
    x = testing.random_input((4,), [5], tf.float32)
    np.testing.assert_array_equal(b.forward(x), x)


def test_sixteen_stacked_affine_couplings_round_trip_in_float32():
    steps = []
    for i in range(16):
        mlp = tn.MLPConditioner(6, (32, 32), activation="tanh", zero_init_output=False)
        steps += [tn.AffineCoupling(mlp, num_masked=3 if i % 2 == 0 else -3)]
    chain = tfb.Chain(steps)
    x = testing.random_input((64,), [6], tf.float32, seed=3)
    z = chain.inverse(x)
    assert np.max(np.abs(z - x)) > 1e-2  # a real transform
    back = chain.forward(tf.identity(z))
    rel = np.max(np.abs(back - x)) / np.max(np.abs(x))
    assert rel <= 1e-4, rel


_CountingLayer = counting(tn.MLPConditioner)


@pytest.mark.parametrize("cls", [tn.AffineCoupling, tn.AdditiveCoupling])
def test_one_conditioner_call_per_log_prob(cls):
    units = 4 if cls is tn.AffineCoupling else 2
    steps = [cls(_CountingLayer(units, (8,)), num_masked=2), tfb.Permute([3, 2, 1, 0]),
             cls(_CountingLayer(units, (8,)), num_masked=2)]
    dist = tfp.distributions.TransformedDistribution(tn.priors.standard_normal([4]),
                                                     tfb.Chain(steps))
    x = tf.constant(np.random.randn(5, 4), tf.float32)
    dist.log_prob(x)  # builds the layers
    _CountingLayer.total = 0
    dist.log_prob(tf.identity(x))
    assert _CountingLayer.total == 2
    _CountingLayer.total = 0
    tf.function(dist.log_prob)(x)  # one trace
    assert _CountingLayer.total == 2


def test_float32_conditioner_on_float64_data_returns_float64():
    b = tn.AffineCoupling(tn.MLPConditioner(4, (8,)), num_masked=1)
    x = testing.random_input((2,), [3], tf.float64)
    assert b.forward(x).dtype == tf.float64
    assert b.forward_log_det_jacobian(x, event_ndims=1).dtype == tf.float64


@pytest.mark.parametrize("name", ["affine-tanh", "additive-channel", "diagonal_scale-vector",
                                  "masked-affine-checkerboard-resnet",
                                  "masked-additive-checkerboard-conv", "squeeze-checkerboard",
                                  "act_norm-image", "batch_norm-inference", "factor_out",
                                  "invertible_1x1_conv-image", "invertible_1x1_conv-vector",
                                  "spline-fraction_masked-negative",
                                  "masked-spline-channel-resnet", "coupling-keras-gated",
                                  "conditional-affine", "context_affine-image"])
def test_bijector_config_round_trip(name):
    factory, event_shape = FACTORIES[name]
    b = factory()
    c = CONDITIONS.get(name, {})
    x = testing.random_input((3,), event_shape, tf.float64)
    y = b.forward(x, **c)
    clone = type(b).from_config(b.get_config())
    assert type(clone) is type(b) and clone.name == b.name
    clone.forward(x, **c)  # builds the cloned layers; then copy the weights: outputs must agree
    assert len(clone.keras_layers) == len(b.keras_layers)
    for src, dst in zip(b.keras_layers, clone.keras_layers):
        assert type(src) is type(dst) and len(src.weights) == len(dst.weights) > 0
        for vs, vd in zip(src.weights, dst.weights):
            vd.assign(vs)
    np.testing.assert_allclose(clone.forward(x, **c), y, rtol=1e-12)
