"""The public conformance kit ``tfp_nice.testing`` catches broken bijectors and dead variables.

A kit that only ever passes proves nothing: each check here is run on a correct bijector
(it must pass) and on one broken in exactly the way the check exists to catch (it must raise
``AssertionError``), and on broken ones it is *not* meant to catch (it must still pass, so the
failure is attributable to the right check).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from _factories import mlp

from tfp_nice import (
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScale,
    FlowModel,
    MLPConditioner,
    masks,
    priors,
)
from tfp_nice import testing as kit

tfb = tfp.bijectors
F64 = tf.float64


# --------------------------------------------------------------------------------------------
# A sinh bijector with knobs that break it in one way each.
# --------------------------------------------------------------------------------------------
class Sinh(tfb.Bijector):
    """``y = sinh(x)`` elementwise on vectors; ``log|det| = sum(log cosh(x))``.

    Knobs (all off = a correct bijector):
      ldj_offset: adds a constant to fldj and subtracts it from ildj (consistent, but wrong).
      ldj_factor: multiplies both log-dets (consistent, but wrong).
      inverse_bias: the inverse returns ``asinh(y) + inverse_bias``.
      ildj_offset: adds a constant to ildj only (fldj and ildj disagree).
      reduce_batch_axes: log-dets are summed over these batch axes (``"all"``: every one).
      flatten_batch: forward returns a ``[-1, d]`` tensor whatever the batch shape.
      singular: forward and inverse zero the last unit (a singular Jacobian, log|det J| = -inf)
        while the log-dets claim the finite value of the other units.
    """

    def __init__(
        self, ldj_offset=0.0, ldj_factor=1.0, inverse_bias=0.0, ildj_offset=0.0,
        reduce_batch_axes=None, flatten_batch=False, singular=False, name="sinh",
    ):
        parameters = dict(locals())
        self.ldj_offset, self.ldj_factor = ldj_offset, ldj_factor
        self.inverse_bias, self.ildj_offset = inverse_bias, ildj_offset
        self.reduce_batch_axes, self.flatten_batch = reduce_batch_axes, flatten_batch
        self.singular = singular
        super().__init__(
            forward_min_event_ndims=1, validate_args=False, parameters=parameters, name=name
        )

    def _reduce(self, ldj):
        if self.reduce_batch_axes is None or ldj.shape.rank == 0:
            return ldj
        if self.reduce_batch_axes == "all":
            return tf.reduce_sum(ldj)
        axis = self.reduce_batch_axes
        if axis >= ldj.shape.rank or -axis > ldj.shape.rank:
            return ldj
        return tf.reduce_sum(ldj, axis=axis)

    def _forward(self, x):
        y = tf.sinh(x)
        if self.singular:
            y = y * tf.constant([1.0] * (x.shape[-1] - 1) + [0.0], x.dtype)
        if self.flatten_batch:
            y = tf.reshape(y, [-1, x.shape[-1]])
        return y

    def _inverse(self, y):
        x = tf.asinh(y) + tf.constant(self.inverse_bias, y.dtype)
        if self.singular:
            x = x * tf.constant([1.0] * (y.shape[-1] - 1) + [0.0], y.dtype)
        return x

    def _forward_log_det_jacobian(self, x):
        x = x[..., :-1] if self.singular else x
        true = tf.reduce_sum(tf.math.log(tf.cosh(x)), axis=-1)
        return self._reduce(self.ldj_factor * true + self.ldj_offset)

    def _inverse_log_det_jacobian(self, y):
        y = y[..., :-1] if self.singular else y
        true = -0.5 * tf.reduce_sum(tf.math.log1p(tf.square(y)), axis=-1)
        return self._reduce(self.ldj_factor * true - self.ldj_offset + self.ildj_offset)


def _x(batch_shape=(4,), event_shape=(3,), seed=0, scale=1.0):
    return kit.random_input(batch_shape, event_shape, F64, seed=seed, scale=scale)


def _passes(check, *args, **kwargs) -> bool:
    try:
        check(*args, **kwargs)
    except AssertionError:
        return False
    return True


def test_correct_sinh_passes_every_check():
    kit.check_bijector(Sinh(), event_shape=[3], dtype=F64)


# --------------------------------------------------------------------------------------------
# Each broken bijector fails the check made for it.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "broken", [Sinh(ldj_offset=0.1), Sinh(ldj_factor=1.5), Sinh(ldj_offset=1e-6)],
    ids=["offset_0.1", "factor_1.5", "offset_1e-6"],
)
def test_log_det_off_by_constant_or_factor_fails_autodiff_check(broken):
    x = _x()
    with pytest.raises(AssertionError, match="autodiff"):
        kit.assert_log_det_matches_autodiff(broken, x)
    # Only the autodiff comparison can see this bug: the bijector is otherwise self-consistent.
    assert _passes(kit.assert_round_trip, broken, x)
    assert _passes(kit.assert_log_det_consistent, broken, x)
    with pytest.raises(AssertionError):
        kit.check_bijector(broken, event_shape=[3], dtype=F64)


def test_wrong_inverse_log_det_fails_autodiff_check():
    # fldj right, ildj wrong: the kit compares both directions with the autodiff Jacobian.
    with pytest.raises(AssertionError, match="ildj vs autodiff"):
        kit.assert_log_det_matches_autodiff(Sinh(ildj_offset=0.2), _x())


def test_finite_log_det_claimed_for_singular_jacobian_fails_autodiff_check():
    # The true log|det J| is -inf (slogdet of the autodiff Jacobian says so); the check must not
    # accept a finite claim against it.
    broken = Sinh(singular=True)
    x = _x()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = broken.forward(x)
    _, logdet = np.linalg.slogdet(tape.batch_jacobian(y, x).numpy())
    assert np.all(np.isneginf(logdet))
    assert np.all(np.isfinite(broken.forward_log_det_jacobian(x, event_ndims=1).numpy()))
    with pytest.raises(AssertionError, match="autodiff"):
        kit.assert_log_det_matches_autodiff(broken, x)


@pytest.mark.parametrize("bias", [0.1, 1e-3])
def test_wrong_inverse_fails_round_trip(bias):
    broken = Sinh(inverse_bias=bias)
    with pytest.raises(AssertionError, match="round trip"):
        kit.assert_round_trip(broken, _x())
    assert _passes(kit.assert_round_trip, Sinh(), _x())


def test_round_trip_checks_forward_of_inverse_too():
    # A left inverse that is not a right inverse: tanh is not onto, so inverse(forward(x)) == x
    # holds while forward(inverse(y)) != y for |y| >= 1.
    class TanhWithClippedInverse(Sinh):
        def _forward(self, x):
            return tf.tanh(x)

        def _inverse(self, y):
            return tf.atanh(tf.clip_by_value(y, -0.999, 0.999))

    x = _x(scale=1.0)
    assert np.max(np.abs(x.numpy())) > 1.0
    small = x * 0.1  # |tanh(x)| stays well below the clip
    y = TanhWithClippedInverse().forward(small)
    np.testing.assert_allclose(TanhWithClippedInverse().inverse(tf.identity(y)), small, atol=1e-12)
    with pytest.raises(AssertionError, match=r"forward\(inverse\(x\)\)"):
        kit.assert_round_trip(TanhWithClippedInverse(), x)


def test_disagreeing_fldj_and_ildj_fail_consistency_check():
    broken = Sinh(ildj_offset=0.05)
    x = _x()
    with pytest.raises(AssertionError, match="fldj"):
        kit.assert_log_det_consistent(broken, x)
    assert _passes(kit.assert_round_trip, broken, x)
    assert _passes(kit.assert_log_det_consistent, Sinh(), x)


@pytest.mark.parametrize(
    "broken",
    [Sinh(reduce_batch_axes="all"), Sinh(reduce_batch_axes=0), Sinh(flatten_batch=True)],
    ids=["log_det_summed_over_batch", "log_det_summed_over_first_batch_axis",
         "forward_flattens_batch"],
)
def test_batch_shape_mishandling_fails_batch_shape_check(broken):
    with pytest.raises(AssertionError, match=r"batch( shape)? \("):
        kit.assert_batch_shapes(broken, event_shape=[3], dtype=F64)
    assert _passes(kit.assert_batch_shapes, Sinh(), event_shape=[3], dtype=F64)


def test_log_det_of_wrong_batch_shape_fails_batch_shape_check_with_assertion_error():
    # Summing over the last batch axis gives fldj shape (2,) for batch (2, 3): the kit must report
    # it as a failed check (AssertionError), not crash with a TensorFlow shape error.
    broken = Sinh(reduce_batch_axes=-1)
    with pytest.raises(AssertionError, match=r"batch( shape)? \(2, 3\)"):
        kit.assert_batch_shapes(broken, event_shape=[3], dtype=F64, batch_shapes=[(2, 3)])


# --------------------------------------------------------------------------------------------
# check_bijector passes good bijectors.
# --------------------------------------------------------------------------------------------
_mlp = mlp


GOOD = {
    "shift": (lambda: tfb.Shift(tf.constant([1.0, -2.0, 0.5], F64)), [3]),
    "scale": (lambda: tfb.Scale(tf.constant([1.5, 0.5, 2.0], F64)), [3]),
    "additive_half": (lambda: AdditiveCoupling(_mlp(2), num_masked=2), [4]),
    "additive_checkerboard": (
        lambda: AdditiveCoupling(_mlp(2), mask=masks.checkerboard([2, 2, 1])), [2, 2, 1]),
    "affine_tanh_even_odd": (lambda: AffineCoupling(_mlp(4), mask=masks.even_odd(4)), [4]),
    "affine_exp": (lambda: AffineCoupling(_mlp(4), num_masked=-2, scale="exp"), [4]),
    "affine_sigmoid": (lambda: AffineCoupling(_mlp(4), num_masked=2, scale="sigmoid"), [4]),
    "affine_soft_clamp_channel": (
        lambda: AffineCoupling(_mlp(4), mask=masks.channel([2, 1, 2]), scale="soft_clamp"),
        [2, 1, 2]),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_check_bijector_passes_good_bijectors(name):
    factory, event_shape = GOOD[name]
    bij = factory()
    x = kit.random_input((4,), event_shape, F64)
    # Non-trivial transforms, so passing means something.
    assert np.max(np.abs(bij.forward(x).numpy() - x.numpy())) > 1e-3
    kit.check_bijector(bij, event_shape=event_shape, dtype=F64, jit_compile=name == "affine_exp")


# --------------------------------------------------------------------------------------------
# assert_variables_trainable.
# --------------------------------------------------------------------------------------------
def _zero_init_flow():
    steps = [
        AffineCoupling(MLPConditioner(4, (8,)), num_masked=2),
        tfb.Permute([3, 2, 1, 0]),
        AdditiveCoupling(MLPConditioner(2, (8,)), num_masked=2),
        DiagonalScale(event_shape=[4]),
    ]
    return FlowModel(priors.standard_normal([4]), steps)


def _data(n=16, d=4):
    return np.random.default_rng(3).standard_normal([n, d]).astype("float32")


def _values(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _assert_restored(before, model):
    after = _values(model)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_variables_trainable_passes_zero_initialised_flow_thanks_to_perturbation():
    model = _zero_init_flow()
    # The default zero-initialised output layers really do zero the hidden layers' gradients:
    # without the perturbation the check fails, with it it passes.
    with pytest.raises(AssertionError, match="all-zero gradient"):
        kit.assert_variables_trainable(model, _data(), perturb=0.0)
    kit.assert_variables_trainable(model, _data())


def test_variables_trainable_restores_weights_exactly():
    model = _zero_init_flow()
    before = _values(model)
    kit.assert_variables_trainable(model, _data(), perturb=0.5)
    _assert_restored(before, model)
    # The weights were really moved during the check (restoring was not a no-op).
    perturbed = []
    original_loss = lambda m, x: tf.reduce_mean(m(x))  # noqa: E731

    def spying_loss(m, x):
        perturbed.append([v.numpy().copy() for v in m.trainable_variables])
        return original_loss(m, x)

    kit.assert_variables_trainable(model, _data(), loss_fn=spying_loss, perturb=0.5)
    assert any(not np.array_equal(p, b) for p, b in zip(perturbed[0], before))
    _assert_restored(before, model)


class _DeadVariableModel(keras.Model):
    """Has a trainable variable that its ``call`` never reads."""

    def __init__(self):
        super().__init__()
        self.used = self.add_weight(shape=(4,), initializer="ones", name="used")
        self.dead = self.add_weight(shape=(4,), initializer="ones", name="dead")

    def call(self, x):
        return tf.reduce_sum(tf.square(x * self.used), axis=-1)


class _ZeroGradientModel(_DeadVariableModel):
    """Reads ``dead`` but multiplies it by zero: a gradient exists and is all zeros."""

    def call(self, x):
        return tf.reduce_sum(tf.square(x * self.used) + 0.0 * self.dead, axis=-1)


class _NoVariableModel(keras.Model):
    def call(self, x):
        return tf.reduce_sum(tf.square(x), axis=-1)


class _FrozenModel(_DeadVariableModel):
    def __init__(self):
        super().__init__()
        self.used.trainable = False
        self.dead.trainable = False


def test_variables_trainable_fails_on_dead_variable_and_restores_weights():
    model = _DeadVariableModel()
    model(_data())
    before = _values(model)
    with pytest.raises(AssertionError, match="without a gradient") as info:
        kit.assert_variables_trainable(model, _data())
    assert repr(model.dead.path) in str(info.value)
    assert repr(model.used.path) not in str(info.value)
    _assert_restored(before, model)


def test_variables_trainable_fails_on_all_zero_gradient():
    model = _ZeroGradientModel()
    with pytest.raises(AssertionError, match="all-zero gradient") as info:
        kit.assert_variables_trainable(model, _data())
    assert repr(model.dead.path) in str(info.value)
    assert repr(model.used.path) not in str(info.value)


@pytest.mark.parametrize("cls", [_NoVariableModel, _FrozenModel])
def test_variables_trainable_fails_on_model_without_trainable_variables(cls):
    model = cls()
    model(_data())
    assert not model.trainable_variables
    with pytest.raises(AssertionError, match="no trainable variables"):
        kit.assert_variables_trainable(model, _data())


def test_variables_trainable_restores_weights_when_the_loss_raises():
    model = _zero_init_flow()
    before = _values(model)

    def failing_loss(m, x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        kit.assert_variables_trainable(model, _data(), loss_fn=failing_loss, perturb=0.5)
    _assert_restored(before, model)


def test_sinh_log_det_constant_is_what_the_tests_assume():
    # Guards the fixture: the correct Sinh's fldj is sum(log cosh x), e.g. log cosh(1) per unit.
    got = Sinh().forward_log_det_jacobian(tf.ones([1, 3], F64), event_ndims=1).numpy()
    np.testing.assert_allclose(got, [3 * math.log(math.cosh(1.0))], rtol=1e-14)
