"""Images: squeeze, masked conv couplings, factor-out, ActNorm, BatchNorm, RealNVPImage."""

from __future__ import annotations

import math
import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import reload, run_on_two_cpus

import tfp_nice as tn
from tfp_nice import _math, masks, testing

tfb = tfp.bijectors
tfd = tfp.distributions
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def digits():
    """128 dequantized training digits in [0, 17)^(8x8x1)."""
    from tfp_nice import data as data_lib

    x = data_lib.load("digits").train[:128].astype("float32")
    return x + np.random.default_rng(0).uniform(0, 0.999, x.shape).astype("float32")


def _tiny_image_model(**kwargs):
    kw = dict(num_blocks=1, filters=4, data_scale=17.0, logit_alpha=0.05)
    kw.update(kwargs)
    return tn.RealNVPImage([8, 8, 1], **kw)


def _perturb(model, scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v.numpy() + scale * rng.standard_normal(v.shape).astype(v.dtype))


# --- Squeeze -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["affine-tanh", "affine-sigmoid", "additive"])
@pytest.mark.parametrize("make_mask", [masks.checkerboard, masks.channel])
def test_masked_image_couplings_run_elementwise_without_gathers_and_match_the_split(
        kind, make_mask):
    """RealNVP's elementwise form ``x·m + (1 − m)·f(x; θ·(1 − m))`` equals the gather/merge
    form in float64 (values, both log-dets), keeps pass-through units bit-exact, and its
    traced graph has no gather."""
    shape, policy = [4, 4, 2], keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float64")
    try:
        mask = make_mask(shape, "odd")
        net = tn.layers.ConvConditioner(filters=(8,), zero_init_output=False)
        tanh = tn.layers.TanhScale(initial_scale=1.5)

        def coupling():  # two bijectors over the same layers (TFP caches per bijector)
            if kind == "additive":
                return tn.AdditiveCoupling(net, mask=mask, conditioner_input="masked")
            return tn.AffineCoupling(net, mask=mask, conditioner_input="masked",
                                     scale=kind.split("-")[1], tanh_scale=tanh)

        b, split = coupling(), coupling()
        split._elementwise_masked = False
        x = tf.constant(np.random.default_rng(0).normal(size=[3, *shape]))
        y = b.forward(x)
        np.testing.assert_array_equal(tf.boolean_mask(y, mask.pattern, axis=1),
                                      tf.boolean_mask(x, mask.pattern, axis=1))
        assert np.abs((y - x).numpy()).max() > 1e-3  # a real transform
        np.testing.assert_allclose(y, split.forward(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.inverse(y), x, rtol=1e-10, atol=1e-10)
        for fn in ("forward_log_det_jacobian", "inverse_log_det_jacobian"):
            np.testing.assert_allclose(getattr(b, fn)(x, event_ndims=3),
                                       getattr(split, fn)(x, event_ndims=3), atol=1e-12)
        graph = tf.function(b.forward).get_concrete_function(x).graph
        gathers = [op.outputs[0].shape for op in graph.get_operations()
                   if op.type in ("GatherV2", "ScatterNd")]
        assert all(s.rank == 2 and s[0] == 1 for s in gathers), gathers  # "tanh"'s c only
        split_ops = {op.type for op in tf.function(split.forward).get_concrete_function(x)
                     .graph.get_operations()}
        assert "GatherV2" in split_ops  # (the gather/merge form it replaces)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def test_squeeze_channel_orders_are_realnvps():
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    y = tn.Squeeze().forward(x).numpy()
    assert y.shape == (1, 2, 2, 4)
    np.testing.assert_array_equal(y[0, 0, 0], [0, 1, 4, 5])  # channel 4c + 2dh + dw
    np.testing.assert_array_equal(y[0, 1, 1], [10, 11, 14, 15])
    y = tn.Squeeze(channel_order="checkerboard").forward(x).numpy()
    np.testing.assert_array_equal(y[0, 0, 0], [0, 5, 1, 4])  # (0,0), (1,1), (0,1), (1,0)
    even = masks.checkerboard([4, 4, 1]).pattern[..., 0]
    np.testing.assert_array_equal(np.sort(y[0, ..., :2].ravel()), np.sort(x[0, ..., 0][even]))
    two = np.random.default_rng(0).standard_normal([3, 4, 6, 2])
    for order in ("channel_major", "checkerboard"):
        b = tn.Squeeze(channel_order=order)
        np.testing.assert_array_equal(b.inverse(b.forward(two)), two)
    assert tn.Squeeze().forward(two).shape == (3, 2, 3, 8)


def test_squeeze_rejects_indivisible_shapes_with_clear_errors():
    with pytest.raises(ValueError, match=r"height and width .* divisible by factor=2.*\[5, 4, 1\]"):
        tn.Squeeze().forward(np.zeros([2, 5, 4, 1], "float32"))
    with pytest.raises(ValueError, match=r"channels .* divisible by factor\*\*2=4"):
        tn.Squeeze().inverse(np.zeros([2, 2, 2, 6], "float32"))
    with pytest.raises(ValueError, match="divisible by factor=3"):
        tn.Squeeze(factor=3).forward_event_shape([4, 6, 1])
    with pytest.raises(ValueError, match="`factor` must be an int >= 2"):
        tn.Squeeze(factor=1)
    with pytest.raises(ValueError, match="checkerboard' needs factor=2"):
        tn.Squeeze(factor=3, channel_order="checkerboard")


# --- masked (image) conditioner input ------------------------------------------------------
class _Recording(tn.ConvConditioner):
    seen: list = []
    calls = 0

    def call(self, inputs):
        type(self).seen.append(inputs)
        type(self).calls += 1
        return super().call(inputs)


@pytest.mark.parametrize("kind", ["checkerboard", "channel"])
def test_masked_conditioner_sees_x_times_mask_and_the_mask_channel(kind):
    shape = [4, 4, 2]
    m = masks.checkerboard(shape) if kind == "checkerboard" else masks.channel(shape)
    net = _Recording(2, filters=(8,), zero_init_output=False)
    b = tn.AdditiveCoupling(net, mask=m, conditioner_input="masked")
    x = testing.random_input((3,), shape, tf.float32)
    _Recording.seen = []
    y = b.forward(x).numpy()
    (inputs,) = _Recording.seen
    pattern = m.pattern.astype("float32")
    want = np.concatenate([x.numpy() * pattern, np.broadcast_to(pattern[..., :1], [3, 4, 4, 1])],
                          -1)
    np.testing.assert_array_equal(inputs, want)
    shift = net(want).numpy()
    np.testing.assert_allclose(y, np.where(m.pattern, x, x + shift), rtol=1e-6, atol=1e-6)


def test_masked_conditioner_input_needs_an_image_mask_and_the_right_output_shape():
    with pytest.raises(ValueError, match="conditioner_input='masked' needs an image `mask`"):
        tn.AffineCoupling(tn.ConvConditioner(4), num_masked=2, conditioner_input="masked")
    with pytest.raises(ValueError, match="`conditioner_input` must be one of"):
        tn.AffineCoupling(tn.ConvConditioner(4), mask=masks.checkerboard([4, 4, 2]),
                          conditioner_input="image")
    b = tn.AffineCoupling(tn.ConvConditioner(3), mask=masks.checkerboard([4, 4, 2]),
                          conditioner_input="masked")
    with pytest.raises(ValueError, match=r"must return a tensor \[batch, 4, 4, 4\]"):
        b.forward(np.zeros([2, 4, 4, 2], "float32"))
    flat = tn.AffineCoupling(tn.MLPConditioner(4), num_masked=2)
    assert flat.conditioner_input == "flat" and flat.get_config()["conditioner_input"] == "flat"


def test_one_conditioner_call_per_coupling_per_log_prob_through_factor_out():
    def coupling(shape, parity):
        c = shape[-1]
        return tn.AffineCoupling(_Recording(2 * c, filters=(4,)), conditioner_input="masked",
                                 mask=masks.checkerboard(shape, parity))

    inner = tfb.Chain([coupling([2, 2, 4], "even"), coupling([2, 2, 4], "odd")])
    bij = tfb.Chain([coupling([4, 4, 2], "even"), tfb.Invert(tn.Squeeze()),
                     tn.FactorOut(inner, num_kept=4), tn.Squeeze()])
    dist = tfd.TransformedDistribution(tn.priors.standard_normal([4, 4, 2]), bij)
    x = testing.random_input((5,), [4, 4, 2], tf.float32)
    dist.log_prob(x)
    _Recording.calls = 0
    dist.log_prob(tf.identity(x))
    assert _Recording.calls == 3


# --- factor-out ------------------------------------------------------------------------------
def test_factor_out_log_prob_is_the_prior_on_every_unit_plus_the_inner_log_det():
    net = tn.ConvConditioner(2, filters=(8,), zero_init_output=False)
    inner = tn.AffineCoupling(net, mask=masks.checkerboard([4, 4, 1]), conditioner_input="masked")
    b = tn.FactorOut(inner, num_kept=1)
    base = tn.priors.standard_normal([4, 4, 2])
    dist = tfd.TransformedDistribution(base, b)
    x = testing.random_input((6,), [4, 4, 2], tf.float32, seed=3)
    z = b.inverse(x).numpy()
    np.testing.assert_array_equal(z[..., 1:], x[..., 1:])  # factored out: straight to the prior
    z1 = inner.inverse(x[..., :1]).numpy()
    np.testing.assert_array_equal(z[..., :1], z1)
    want = base.log_prob(z) + inner.inverse_log_det_jacobian(x[..., :1], event_ndims=3)
    np.testing.assert_allclose(dist.log_prob(x), want, rtol=1e-6)
    assert np.max(np.abs(z1 - x[..., :1])) > 1e-3  # the inner flow is not the identity


# --- the RealNVPImage preset -----------------------------------------------------------------
def test_realnvp_image_follows_the_papers_multiscale_architecture():
    model = _tiny_image_model()
    steps = model.steps
    couplings = [s for s in steps if isinstance(s, tn.AffineCoupling)]
    assert [c.mask.kind for c in couplings] == ["checkerboard"] * 3 + ["channel"] * 3
    assert [c.mask.event_shape for c in couplings] == [(8, 8, 1)] * 3 + [(4, 4, 4)] * 3
    for a, b in zip(couplings[:-1], couplings[1:]):
        if a.mask.kind == b.mask.kind:
            np.testing.assert_array_equal(a.mask.pattern, ~b.mask.pattern)  # masks alternate
    assert all(c.conditioner_input == "masked" for c in couplings)
    assert [c.conditioner.filters for c in couplings] == [4] * 3 + [8] * 3  # 2x for channel
    (factor_out,) = [s for s in steps if isinstance(s, tn.FactorOut)]
    assert factor_out.num_kept == 2
    last = [b for b in factor_out.bijector.bijectors if isinstance(b, tn.AffineCoupling)]
    assert [c.mask.kind for c in last] == ["checkerboard"] * 4
    assert {c.mask.event_shape for c in last} == {(4, 4, 2)}
    assert {c.conditioner.filters for c in last} == {8}
    norms = [s for s in steps if isinstance(s, tn.BatchNorm)]
    norms += [b for b in factor_out.bijector.bijectors if isinstance(b, tn.BatchNorm)]
    assert len(norms) == 10  # one after every coupling
    squeezes = [s for s in steps if isinstance(getattr(s, "bijector", s), tn.Squeeze)]
    assert [type(s).__name__.lstrip("_") for s in squeezes] == ["Invert", "Squeeze"] * 2
    assert [getattr(s, "bijector", s).channel_order for s in squeezes] == [
        "channel_major", "channel_major", "checkerboard", "checkerboard"]
    scales = model.latent_scales()
    assert scales.shape == (8, 8, 1) and (scales == 0).sum() == 32 and (scales == 1).sum() == 32
    # RealNVP's ordered squeeze keeps one checkerboard colour, (0, 0) and (1, 1) of every 2x2
    # block, for the next scale and factors out the other, (0, 1) and (1, 0)
    block = scales[:2, :2, 0]
    np.testing.assert_array_equal(block, [[1, 0], [0, 1]])
    assert len(model.trainable_variables) == 10 * 13 + 10 * 2


def test_realnvp_image_checks_its_arguments():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(num_scales - 1\) = 4"):
        tn.RealNVPImage([6, 6, 1], num_scales=3)
    with pytest.raises(ValueError, match=r"must be \[height, width, channels\]"):
        tn.RealNVPImage([64])
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        tn.RealNVPImage([4, 4, 1], normalization="layer_norm")
    with pytest.raises(ValueError, match="`logit_alpha` needs `data_scale`"):
        tn.RealNVPImage([4, 4, 1], logit_alpha=0.05)


@pytest.mark.parametrize("split_prior", [False, True])
def test_realnvp_image_log_prob_is_the_exact_change_of_variables(digits, split_prior):
    model = _tiny_image_model(split_prior=split_prior)
    _perturb(model)
    x = tf.constant(digits[:4])
    z = model.encode(x)
    assert z.shape == x.shape  # the latent has the data's shape
    np.testing.assert_allclose(model.decode(tf.identity(z)), x, rtol=1e-4, atol=1e-3)
    flat = tf.reshape(x, [4, 64])
    with tf.GradientTape() as tape:
        tape.watch(flat)
        zf = tf.reshape(model.bijector.inverse(tf.reshape(flat, [4, 8, 8, 1])), [4, 64])
    jac = tape.batch_jacobian(zf, flat).numpy().astype(np.float64)
    _, logdet = np.linalg.slogdet(jac)
    base = model.base_distribution.log_prob(z).numpy()
    np.testing.assert_allclose(model.log_prob(x), base + logdet, rtol=1e-4, atol=1e-2)
    first = next(i for i, s in enumerate(model.steps) if isinstance(s, tn.AffineCoupling))
    preprocessed = tfb.Chain(model.steps[:first]).inverse(x).numpy()
    assert np.max(np.abs(z.numpy() - preprocessed)) > 1e-2  # a real transform


def test_realnvp_image_split_prior_learns_the_prior_of_each_factored_out_half(digits):
    """Glow's learned split prior before each factor-out: a channel coupling of the squeezed
    image whose pass-through half is the half the factor-out keeps; it starts as the identity,
    gets gradients, and survives the config round trip (configs without it load without it)."""
    model = _tiny_image_model(split_prior=True)
    plain = _tiny_image_model()
    at = next(i for i, s in enumerate(model.steps) if isinstance(s, tn.FactorOut))
    prior = model.steps[at - 1]
    assert isinstance(prior, tn.AffineCoupling) and prior.name == "s0_split_prior"
    assert prior.mask.kind == "channel" and prior.mask.event_shape == (4, 4, 4)
    np.testing.assert_array_equal(prior.mask.pattern[0, 0], [True, True, False, False])
    assert model.steps[at].num_kept == 2  # keeps the pass-through half
    x = tf.constant(digits[:8])
    u = tf.random.stateless_normal([8, 4, 4, 4], seed=(1, 2))
    np.testing.assert_allclose(prior.forward(u), u)  # zero-initialised: the identity at start
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model.log_prob(x))
    grads = tape.gradient(loss, model.trainable_variables)
    names = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not names and len(model.trainable_variables) == len(plain.trainable_variables) + 3
    config = model.get_config()
    assert config["split_prior"] is True
    assert type(model).from_config(config).get_config()["split_prior"] is True
    config.pop("split_prior")
    assert type(model).from_config(config).get_config()["split_prior"] is False


@pytest.mark.parametrize("name", ["nice", "realnvp", "realnvp-image"])
def test_temperature_sampling_scales_the_latent_for_every_preset(name):
    shape = [8, 8, 1]
    if name == "nice":
        model = tn.NICE(shape, hidden_units=(8,), data_scale=17.0)
        std = math.pi / math.sqrt(3.0)  # standard logistic
    elif name == "realnvp":
        model = tn.RealNVP(shape, num_couplings=2, hidden_units=(8,), data_scale=17.0,
                           logit_alpha=0.05)
        std = 1.0
    else:
        model = _tiny_image_model(num_scales=1)
        std = 1.0
    _perturb(model, 0.02)
    for t in (1.0, 0.5):
        x = model.sample(400, seed=(1, 2), temperature=t)
        assert x.shape == (400, 8, 8, 1) and np.isfinite(x.numpy()).all()
        z = model.encode(x).numpy()
        np.testing.assert_allclose(z.std(), t * std, rtol=0.1)


# --- ActNorm ---------------------------------------------------------------------------------
def _act_norms(model):
    return [b for b in tn.graph.walk(tfb.Chain(model.steps)) if isinstance(b, tn.ActNorm)]


def test_actnorm_initialises_on_the_first_batch_trains_under_fit_and_survives_reload(
        digits, tmp_path):
    model = _tiny_image_model(num_scales=1, normalization="act_norm")
    acts = _act_norms(model)
    assert len(acts) == 4 and not any(a.layer.is_initialized for a in acts)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    # fit initialises every ActNorm on its first batch (x[:32]) before training
    probe = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: snapshots.append(
        [np.copy(a.layer.log_scale.numpy()) for a in acts]))
    snapshots: list = []
    model.fit(digits, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=[probe])
    assert all(a.layer.is_initialized for a in acts)
    # at initialisation the first ActNorm normalised its input batch per channel
    fresh = _tiny_image_model(num_scales=1, normalization="act_norm")
    assert fresh.initialize_from_data(digits[:32]) == 4
    first = _act_norms(fresh)[0]
    idx = fresh.steps.index(first)
    h = tfb.Chain(fresh.steps[:idx]).inverse(digits[:32])
    z = first.inverse(h).numpy()
    np.testing.assert_allclose([z.mean(), z.std()], [0.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(snapshots[0][0], first.layer.log_scale.numpy(), rtol=1e-5)
    # training moved the initialised weights
    assert all(not np.allclose(s, a.layer.log_scale.numpy()) for s, a in zip(snapshots[0], acts))
    assert fresh.initialize_from_data(digits[:32]) == 0  # runs once
    loaded = reload(model, tmp_path, "actnorm.keras")
    assert all(a.layer.is_initialized for a in _act_norms(loaded))
    np.testing.assert_array_equal(loaded.log_prob(digits[:8]), model.log_prob(digits[:8]))


# --- BatchNorm -------------------------------------------------------------------------------
def _bn_flow(momentum=0.5):
    bn = tn.BatchNorm(channels=2, momentum=momentum)
    net = tn.ConvConditioner(4, filters=(8,))
    coupling = tn.AffineCoupling(net, mask=masks.checkerboard([4, 4, 2]),
                                 conditioner_input="masked")
    return tn.FlowModel(tn.priors.standard_normal([4, 4, 2]), [bn, coupling]), bn, coupling


def _bn_by_hand(model, coupling, x, mean, var, log_gamma, beta, eps=1e-4):
    z = (x - mean) / np.sqrt(var + eps) * np.exp(log_gamma) + beta
    rest = tfd.TransformedDistribution(model.base_distribution, coupling)
    return rest.log_prob(z.astype("float32")).numpy() + 16 * np.sum(
        log_gamma - 0.5 * np.log(var + eps))


def test_held_out_nll_is_exact_over_every_batch_and_traced_once_for_test_and_validation():
    """The end of a run scores the test and the validation set (each with a smaller last
    batch): one traced function serves both, and the NLL is the exact mean over the rows."""
    from tfp_nice import data as data_lib
    from tfp_nice.training import outputs

    splits = data_lib.load("digits")
    model = _tiny_image_model()
    _perturb(model)
    results = [outputs.evaluate_nll(model, x, splits.spec, batch_size=100)
               for x in (splits.test, splits.validation[:250])]
    # 100-row batches, then the 70- and 50-row rests: one trace, then one for any batch size
    assert outputs._nll_sum(model).experimental_get_tracing_count() == 2
    for x, (nll, bpd) in zip((splits.test, splits.validation[:250]), results):
        batches = data_lib.as_dataset(x, splits.spec, 100, training=False)
        expected = np.mean(np.concatenate([model(b).numpy() for b in batches]))
        assert nll == pytest.approx(expected, rel=1e-5)
        assert bpd == pytest.approx(nll / (64 * math.log(2.0)))


def test_batchnorm_uses_batch_statistics_in_training_and_moving_averages_at_inference(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal([64, 4, 4, 2]) * [3.0, 0.5] + [2.0, -1.0]).astype("float32")
    model, bn, coupling = _bn_flow()
    layer = bn.layer
    before = [w.numpy().copy() for w in layer.weights]
    model.compile(optimizer=keras.optimizers.Adam(5e-2), jit_compile=False)
    model.fit(x, batch_size=32, epochs=3, verbose=0)
    after = {w.name: w.numpy() for w in layer.weights}
    for w, b in zip(layer.weights, before):  # trainable gamma/beta and the moving statistics
        assert not np.allclose(w.numpy(), b), w.name
    np.testing.assert_allclose(after["moving_mean"], [2.0, -1.0], atol=0.5)
    mean, var = after["moving_mean"], after["moving_variance"]
    lg, beta = after["log_gamma"], after["beta"]
    xb = x[:16]
    # inference (model.log_prob, model(x), evaluate): the moving averages
    lp = model.log_prob(xb).numpy()
    np.testing.assert_allclose(lp, _bn_by_hand(model, coupling, xb, mean, var, lg, beta),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(-model(xb).numpy(), lp, rtol=1e-6)
    np.testing.assert_allclose(model.evaluate(xb, batch_size=16, verbose=0), -lp.mean(),
                               rtol=1e-5)
    # training mode: the statistics of the batch itself (and the moving averages move)
    nll_train = model(xb, training=True).numpy()
    bm, bv = xb.mean(axis=(0, 1, 2)), xb.var(axis=(0, 1, 2))
    np.testing.assert_allclose(-nll_train, _bn_by_hand(model, coupling, xb, bm, bv, lg, beta),
                               rtol=1e-4, atol=1e-3)
    assert np.max(np.abs(-nll_train - lp)) > 1e-2
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * mean + 0.5 * bm, rtol=1e-5)
    # sampling uses the moving averages: decode(encode(x)) == x
    np.testing.assert_allclose(model.decode(model.encode(xb)), xb, rtol=1e-4, atol=1e-4)
    # the moving statistics are saved with the model
    loaded = reload(model, tmp_path, "bn.keras")
    loaded_layer = loaded.steps[0].layer
    np.testing.assert_array_equal(loaded_layer.moving_mean.numpy(), layer.moving_mean.numpy())
    np.testing.assert_array_equal(loaded_layer.moving_variance.numpy(),
                                  layer.moving_variance.numpy())
    np.testing.assert_allclose(loaded.log_prob(xb), model.log_prob(xb), rtol=1e-6)


def _composed_batch_norm(x, log_gamma, beta, eps=1e-4):
    mean, variance = _math.moments(x)
    shift, log_scale = _math.batch_norm_shift_and_log_scale(mean, variance, eps, log_gamma, beta)
    return _math.channel_affine_inverse(x, shift, log_scale), log_scale


@pytest.mark.parametrize("shape", [(16, 6, 6, 3), (32, 5), (4, 3, 2, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_fused_batch_norm_matches_the_composed_ops_and_their_gradients(shape, affine, mode):
    """The fused kernel's values and gradients (incl. the log-det's through the batch variance)
    equal the composed form's, for images, vectors and extra batch axes, also under XLA."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, shape), tf.float32)
    c = shape[-1]
    lg = tf.constant(rng.normal(0, 0.3, c), tf.float32) if affine else None
    beta = tf.constant(rng.normal(0, 1.0, c), tf.float32) if affine else None
    w = tf.constant(rng.normal(size=shape), tf.float32)
    ws = tf.constant(rng.normal(size=c) * 40.0, tf.float32)  # a large log-det weight

    def loss_and_grads(fn):
        def run(x, lg, beta):
            with tf.GradientTape() as tape:
                tape.watch([t for t in (x, lg, beta) if t is not None])
                z, log_scale = fn(x, lg, beta)[:2]
                loss = tf.reduce_sum(z * w) + tf.reduce_sum(log_scale * ws)
            return z, log_scale, tape.gradient(loss, [t for t in (x, lg, beta) if t is not None])
        return run if mode == "eager" else tf.function(run, jit_compile=mode == "jit")

    fused = loss_and_grads(lambda *a: _math.fused_batch_norm(*a, 1e-4))(x, lg, beta)
    ref = loss_and_grads(_composed_batch_norm)(x, lg, beta)
    for a, b in zip(tf.nest.flatten(fused), tf.nest.flatten(ref)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    assert float(tf.reduce_max(tf.abs(fused[2][0]))) > 1e-2  # the gradients are not all zero


def test_batchnorm_layer_trains_float32_in_the_fused_kernel_and_others_in_composed_ops():
    def op_types(layer, x, training):
        graph = tf.function(lambda x: layer(x, training=training, normalize=True)
                            ).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    x32 = np.random.default_rng(0).normal(size=[8, 4, 4, 2]).astype("float32")
    assert "FusedBatchNormV3" in op_types(tn.BatchNormLayer(2), x32, True)
    assert "FusedBatchNormV3" not in op_types(tn.BatchNormLayer(2), x32, False)
    layer64 = tn.BatchNormLayer(2, dtype="float64")
    assert "FusedBatchNormV3" not in op_types(layer64, x32.astype("float64"), True)
    assert not _math.fused_batch_norm_applies(tf.zeros([2, 3], tf.float16))
    # both paths normalise alike and move the moving averages alike
    a, b = tn.BatchNormLayer(2, momentum=0.5), tn.BatchNormLayer(2, momentum=0.5, dtype="float64")
    za, sa = a(x32, training=True, normalize=True)
    zb, sb = b(x32.astype("float64"), training=True, normalize=True)
    np.testing.assert_allclose(za, zb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.moving_variance.numpy(), b.moving_variance.numpy(), rtol=1e-5)
    np.testing.assert_allclose(a.moving_mean.numpy(), 0.5 * x32.mean(axis=(0, 1, 2)), atol=1e-6)


def test_batchnorm_and_actnorm_check_their_arguments():
    with pytest.raises(ValueError, match="exactly one of `channels` and `layer`"):
        tn.BatchNorm()
    with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\)"):
        tn.BatchNorm(channels=2, momentum=1.0)
    with pytest.raises(ValueError, match="ending in 3 channels"):
        tn.ActNorm(channels=3).forward(np.zeros([2, 4, 4, 2], "float32"))


# --- MirroredStrategy ------------------------------------------------------------------------
MIRRORED = textwrap.dedent("""
    import json
    import tensorflow as tf
    import keras, numpy as np
    import tfp_nice as tn
    from tfp_nice import data as data_lib
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    # 1. synchronised statistics: each replica sees half the batch, with different means
    with strategy.scope():
        bn = tn.BatchNorm(channels=1, momentum=0.0)
        m = tn.FlowModel(tn.priors.standard_normal([2, 2, 1]), [bn])
        m.compile(optimizer=keras.optimizers.SGD(0.0))
    x = np.concatenate([np.full([4, 2, 2, 1], -1.0), np.full([4, 2, 2, 1], 3.0)]).astype("f")
    m.fit(x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    out["moving_mean"] = [float(v.numpy()[0]) for v in bn.layer.moving_mean.value.values]
    out["moving_variance"] = [float(v.numpy()[0]) for v in bn.layer.moving_variance.value.values]
    # 2. the tiny image RealNVP (batch norm after every coupling) on digits, a few steps
    s = data_lib.load("digits")
    ds = data_lib.as_dataset(s.train[:256], s.spec, 64, training=True)
    with strategy.scope():
        model = tn.RealNVPImage([8, 8, 1], num_blocks=1, filters=4, data_scale=17.0,
                                logit_alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    h = model.fit(ds, epochs=2, verbose=0)
    out["loss"] = h.history["loss"]
    first_bn = [s for s in model.steps if isinstance(s, tn.BatchNorm)][0]
    out["model_moving_mean"] = [v.numpy().tolist() for v in
                                first_bn.layer.moving_mean.value.values]
    out["eval"] = float(model.evaluate(data_lib.as_dataset(s.test, s.spec, 128, training=False),
                                       verbose=0))
    print(json.dumps(out))
""")


def test_mirrored_strategy_on_two_logical_cpus_syncs_batchnorm_and_trains_realnvp_image():
    out = run_on_two_cpus(MIRRORED, timeout=900)
    assert out["replicas"] == 2
    # the moving statistics are those of the global batch (mean 1, variance 4) on both replicas,
    # not of either half (mean -1 or 3, variance 0)
    np.testing.assert_allclose(out["moving_mean"], [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(out["moving_variance"], [4.0, 4.0], atol=1e-4)
    assert np.isfinite(out["loss"]).all() and out["loss"][1] < out["loss"][0]
    a, b = out["model_moving_mean"]
    np.testing.assert_array_equal(a, b)
    assert math.isfinite(out["eval"])


# --- the CLI ---------------------------------------------------------------------------------
# --- the benchmark script's --data option --------------------------------------------------------
