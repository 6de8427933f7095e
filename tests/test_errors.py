"""Bad input gets a clear error naming the argument and the value received (DESIGN.md, rule 8).

Every case asserts the exception type and matches, in the message, the argument's name and
the received value (``Received: num_masked=0``), or for shape errors the expected and the
received shape. Sizes are tiny: event size 2-4, one hidden layer of 4 units.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_nice import (
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScale,
    FlowModel,
    LogScale,
    MLPConditioner,
    masks,
    priors,
)

tfb = tfp.bijectors
tfd = tfp.distributions

D = 4  # event size of the vector cases


def _esc(text: str) -> str:
    return re.escape(text)


def _additive(**kwargs) -> AdditiveCoupling:
    return AdditiveCoupling(MLPConditioner(2, (4,)), **kwargs)


def _affine(**kwargs) -> AffineCoupling:
    return AffineCoupling(MLPConditioner(4, (4,)), **kwargs)


COUPLINGS = {"additive": _additive, "affine": _affine}
CONDITIONER_ARG = {"additive": "shift_fn", "affine": "shift_and_log_scale_fn"}


def _x(*shape, dtype="float32") -> np.ndarray:
    return np.zeros(shape, dtype)


@pytest.fixture(scope="module")
def flow() -> FlowModel:
    """A tiny 2-D flow; only read, never trained."""
    return FlowModel(
        priors.standard_normal([2]),
        [
            AffineCoupling(MLPConditioner(2, (4,)), num_masked=1),
            tfb.Permute([1, 0]),
            AdditiveCoupling(MLPConditioner(1, (4,)), num_masked=1),
        ],
    )


# ---------------------------------------------------------------------------------------------
# Couplings: the split arguments.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(COUPLINGS))
def test_num_masked_zero_is_rejected_at_construction(kind):
    with pytest.raises(
        ValueError, match=_esc("`num_masked`") + ".*" + _esc("Received: num_masked=0")
    ):
        COUPLINGS[kind](num_masked=0)


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("num_masked", [D, -D, D + 3])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_num_masked_out_of_range_is_rejected_when_data_arrives(kind, num_masked, direction):
    bijector = COUPLINGS[kind](num_masked=num_masked)  # D is unknown until data arrives
    pattern = (
        _esc("`num_masked`")
        + ".*"
        + _esc(f"D - 1 = {D - 1}")
        + ".*"
        + _esc(f"Received: num_masked={num_masked}")
    )
    with pytest.raises(ValueError, match=pattern):
        getattr(bijector, direction)(_x(3, D))


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("num_masked", [2, -2, 5])
def test_num_masked_out_of_range_is_rejected_when_building_flow_model(kind, num_masked):
    units = {"additive": 1, "affine": 2}[kind]
    cls = {"additive": AdditiveCoupling, "affine": AffineCoupling}[kind]
    step = cls(MLPConditioner(units, (4,)), num_masked=num_masked)
    with pytest.raises(ValueError, match=_esc(f"Received: num_masked={num_masked}")):
        FlowModel(priors.standard_normal([2]), [step])


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
def test_num_masked_non_int_is_a_type_error_naming_the_value(kind):
    with pytest.raises(
        TypeError,
        match=_esc("`num_masked` must be an int") + ".*" + _esc("Received: num_masked=1.5"),
    ):
        COUPLINGS[kind](num_masked=1.5)


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("fraction_masked", [1.0, -1.0, 1.5, -2.0, 0.0])
def test_fraction_masked_outside_open_unit_interval_is_rejected(kind, fraction_masked):
    with pytest.raises(
        ValueError,
        match=_esc("`fraction_masked`")
        + ".*"
        + _esc(f"Received: fraction_masked={fraction_masked!r}"),
    ):
        COUPLINGS[kind](fraction_masked=fraction_masked)


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("fraction_masked", [1, -2, True, "0.5"])
def test_fraction_masked_not_a_float_is_a_type_error_as_in_tfp(kind, fraction_masked):
    with pytest.raises(
        TypeError,
        match=_esc("`fraction_masked` must be a float")
        + ".*"
        + _esc(f"Received: fraction_masked={fraction_masked!r}"),
    ):
        COUPLINGS[kind](fraction_masked=fraction_masked)


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
def test_fraction_masked_selecting_no_unit_is_rejected_when_data_arrives(kind):
    bijector = COUPLINGS[kind](fraction_masked=0.1)  # int(4 * 0.1) == 0 units
    with pytest.raises(ValueError, match=_esc("Received: fraction_masked=0.1 (= 0 units)")):
        bijector.forward(_x(3, D))


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"num_masked": 2, "mask": masks.half(D, 2)}, "num_masked=2"),
        ({"num_masked": 2, "fraction_masked": 0.5}, "fraction_masked=0.5"),
        ({"fraction_masked": 0.5, "mask": masks.even_odd(D)}, "fraction_masked=0.5"),
        ({}, "num_masked=None, fraction_masked=None, mask=None"),
    ],
    ids=["num_masked+mask", "num_masked+fraction", "fraction+mask", "none"],
)
def test_exactly_one_split_argument_is_required(kind, kwargs, received):
    pattern = (
        _esc("exactly one of `num_masked`, `fraction_masked` and `mask`") + ".*" + _esc(received)
    )
    with pytest.raises(ValueError, match=pattern):
        COUPLINGS[kind](**kwargs)


@pytest.mark.parametrize(
    "cls, arg", [(AdditiveCoupling, "shift_fn"), (AffineCoupling, "shift_and_log_scale_fn")]
)
@pytest.mark.parametrize("conditioner", [3, "mlp", None])
def test_non_callable_conditioner_is_a_type_error(cls, arg, conditioner):
    pattern = _esc(f"`{arg}` must be callable") + ".*" + _esc(f"Received: {arg}={conditioner!r}")
    with pytest.raises(TypeError, match=pattern):
        cls(conditioner, num_masked=2)


@pytest.mark.parametrize("scale", ["softplus", "Exp", None])
def test_unknown_scale_stabiliser_is_rejected(scale):
    with pytest.raises(
        ValueError, match=_esc("`scale` must be one of") + ".*" + _esc(f"Received: scale={scale!r}")
    ):
        _affine(num_masked=2, scale=scale)


@pytest.mark.parametrize("clamp", [0, 0.0, -1.0, "2"])
def test_non_positive_clamp_is_rejected(clamp):
    with pytest.raises(
        ValueError,
        match=_esc("`clamp` must be a positive") + ".*" + _esc(f"Received: clamp={clamp!r}"),
    ):
        _affine(num_masked=2, scale="soft_clamp", clamp=clamp)


# ---------------------------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize(
    "mask, x_shape, expected",
    [
        (masks.checkerboard([4, 4, 1]), (2, 4, 4, 2), "[4, 4, 1]"),
        (masks.even_odd(5), (3, 4), "[5]"),
        (masks.checkerboard([2, 2, 1]), (3, 4), "[2, 2, 1]"),
    ],
    ids=["checkerboard-channels", "vector-size", "image-mask-on-vector"],
)
def test_mask_event_shape_must_match_the_data(kind, direction, mask, x_shape, expected):
    units = {"additive": mask.num_transformed, "affine": 2 * mask.num_transformed}[kind]
    cls = {"additive": AdditiveCoupling, "affine": AffineCoupling}[kind]
    bijector = cls(MLPConditioner(units, (4,)), mask=mask)
    arg = "x" if direction == "forward" else "y"
    pattern = (
        _esc(f"`{arg}` must match the mask's {expected}")
        + ".*"
        + _esc(f"Received: {arg}.shape={tuple(x_shape)}")
    )
    with pytest.raises(ValueError, match=pattern):
        getattr(bijector, direction)(_x(*x_shape))


def test_mask_shape_mismatch_is_rejected_when_building_flow_model():
    step = AdditiveCoupling(MLPConditioner(3, (4,)), mask=masks.even_odd(5))
    with pytest.raises(ValueError, match=_esc("the mask's [5]") + ".*" + _esc("shape=(1, 4)")):
        FlowModel(priors.standard_normal([D]), [step])


@pytest.mark.parametrize("value, count", [(True, "4 of 4"), (False, "0 of 4")])
def test_mask_pattern_all_true_or_all_false_is_rejected(value, count):
    with pytest.raises(ValueError, match=_esc("`pattern`") + ".*" + _esc(count)):
        masks.Mask(np.full([D], value))


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("value, count", [(True, "4 of 4"), (False, "0 of 4")])
def test_coupling_mask_all_true_or_all_false_names_the_mask_argument(kind, value, count):
    # The user passed `mask=`, so the message must say `mask` (not the internal `pattern`).
    with pytest.raises(ValueError, match=_esc("`mask`") + ".*" + _esc(count)):
        COUPLINGS[kind](mask=np.full([D], value))


def test_mask_pattern_with_non_boolean_values_is_rejected():
    with pytest.raises(
        ValueError, match=_esc("`pattern` must be boolean") + ".*" + _esc("[0, 1, 2]")
    ):
        masks.Mask([0, 1, 2, 1])


@pytest.mark.parametrize("kind", sorted(COUPLINGS))
@pytest.mark.parametrize("mask", ["abc", object(), 1])
def test_mask_of_wrong_type_is_a_type_error(kind, mask):
    with pytest.raises(
        TypeError,
        match=_esc("`mask` must be a tfp_nice.masks.Mask")
        + ".*"
        + _esc(f"Received: mask={mask!r}"),
    ):
        COUPLINGS[kind](mask=mask)


@pytest.mark.parametrize(
    "args, kwargs, error, pattern",
    [
        ((4,), {}, ValueError, "Received: num_masked=None, fraction_masked=None"),
        (
            (4, 1),
            {"fraction_masked": 0.5},
            ValueError,
            "Received: num_masked=1, fraction_masked=0.5",
        ),
        ((4, 0), {}, ValueError, "Received: num_masked=0"),
        ((4, 4), {}, ValueError, "Received: num_masked=4"),
        ((4, -4), {}, ValueError, "Received: num_masked=-4"),
        ((4, 7), {}, ValueError, "Received: num_masked=7"),
        ((1, 1), {}, ValueError, "D = 1"),
        ((4,), {"fraction_masked": 1.0}, ValueError, "Received: fraction_masked=1.0"),
        ((4,), {"fraction_masked": -1.5}, ValueError, "Received: fraction_masked=-1.5"),
        ((4,), {"fraction_masked": 0.1}, ValueError, "Received: fraction_masked=0.1 (= 0 units)"),
        ((4, 1.5), {}, TypeError, "Received: num_masked=1.5"),
    ],
    ids=[
        "none",
        "both",
        "zero",
        "D",
        "-D",
        "D+3",
        "D=1",
        "fraction=1",
        "fraction=-1.5",
        "fraction-selects-none",
        "float-num_masked",
    ],
)
def test_half_mask_bad_arguments(args, kwargs, error, pattern):
    with pytest.raises(error, match=_esc(pattern)):
        masks.half(*args, **kwargs)


@pytest.mark.parametrize(
    "factory", [lambda d: masks.half(d, 1), masks.even_odd], ids=["half", "even_odd"]
)
@pytest.mark.parametrize("event_size", [0, -3, [2, 2], [4, 4, 1]])
def test_vector_masks_need_one_positive_event_size(factory, event_size):
    # The message shows the value as the user passed it (0, not the internal tuple (0,)).
    with pytest.raises(
        ValueError, match=_esc("`event_size`") + ".*" + _esc(f"Received: event_size={event_size!r}")
    ):
        factory(event_size)


@pytest.mark.parametrize("parity", ["even", "odd"])
def test_channel_mask_needs_two_channels(parity):
    with pytest.raises(
        ValueError,
        match=_esc("at least 2 channels") + ".*" + _esc("Received: event_shape=[4, 4, 1]"),
    ):
        masks.channel([4, 4, 1], parity=parity)


@pytest.mark.parametrize("factory", [masks.checkerboard, masks.channel])
@pytest.mark.parametrize(
    "shape, shown", [([4, 4], "[4, 4]"), ([2, 2, 2, 2], "[2, 2, 2, 2]"), (16, "[16]")]
)
def test_image_masks_need_a_3d_event_shape(factory, shape, shown):
    with pytest.raises(
        ValueError,
        match=_esc("`event_shape` must be [height, width, channels]")
        + ".*"
        + _esc(f"Received: event_shape={shown}"),
    ):
        factory(shape)


@pytest.mark.parametrize("shape", [[4, 0, 1], [], None])
def test_image_masks_need_positive_dimensions(shape):
    with pytest.raises(
        ValueError, match=_esc("`event_shape`") + ".*" + _esc(f"Received: event_shape={shape!r}")
    ):
        masks.checkerboard(shape)


@pytest.mark.parametrize(
    "factory, first",
    [(masks.even_odd, 4), (masks.checkerboard, [4, 4, 1]), (masks.channel, [4, 4, 2])],
    ids=["even_odd", "checkerboard", "channel"],
)
@pytest.mark.parametrize("parity", ["left", "ODD", 1, None])
def test_parity_must_be_even_or_odd(factory, first, parity):
    with pytest.raises(
        ValueError,
        match=_esc("`parity` must be 'even' or 'odd'")
        + ".*"
        + _esc(f"Received: parity={parity!r}"),
    ):
        factory(first, parity=parity)


# ---------------------------------------------------------------------------------------------
# Conditioner output shape: expected vs received.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_additive_conditioner_output_width_must_be_num_transformed(direction):
    bijector = AdditiveCoupling(MLPConditioner(3, (4,)), num_masked=2)
    pattern = (
        _esc("`shift_fn` must return a tensor [batch, 2] for 2 transformed units")
        + ".*"
        + _esc("Received output shape(s): [(5, 3)]")
    )
    with pytest.raises(ValueError, match=pattern):
        getattr(bijector, direction)(_x(5, D))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_affine_conditioner_output_width_must_be_twice_num_transformed(direction):
    bijector = AffineCoupling(MLPConditioner(5, (4,)), num_masked=2)  # 2 * d2 + 1
    pattern = (
        _esc(
            "`shift_and_log_scale_fn` must return a tensor [batch, 4] or a tuple of 2 "
            "tensors [batch, 2] for 2 transformed units"
        )
        + ".*"
        + _esc("Received output shape(s): [(3, 5)]")
    )
    with pytest.raises(ValueError, match=pattern):
        getattr(bijector, direction)(_x(3, D))


def test_affine_conditioner_tuple_with_wrong_width_reports_each_shape():
    def fn(x1):
        n = x1.shape[0]
        return tf.zeros([n, 2]), tf.zeros([n, 3])

    bijector = AffineCoupling(fn, num_masked=2)
    with pytest.raises(ValueError, match=_esc("Received output shape(s): [(3, 2), (3, 3)]")):
        bijector.forward(_x(3, D))


def test_affine_conditioner_returning_three_tensors_is_rejected():
    def fn(x1):
        z = tf.zeros([x1.shape[0], 2])
        return z, z, z

    bijector = AffineCoupling(fn, num_masked=2)
    with pytest.raises(
        ValueError,
        match=_esc("tuple of 2 tensors [batch, 2]")
        + ".*"
        + _esc("Received output shape(s): [(3, 2), (3, 2), (3, 2)]"),
    ):
        bijector.inverse(_x(3, D))


def test_conditioner_output_mismatch_is_rejected_when_building_flow_model():
    step = AdditiveCoupling(MLPConditioner(3, (4,)), num_masked=2)
    with pytest.raises(ValueError, match=_esc("[batch, 2]") + ".*" + _esc("[(1, 3)]")):
        FlowModel(priors.standard_normal([D]), [step])


# ---------------------------------------------------------------------------------------------
# Integer input.
# ---------------------------------------------------------------------------------------------
BIJECTORS = {
    "additive": lambda: _additive(num_masked=2),
    "affine": lambda: _affine(num_masked=2),
    "diagonal_scale": lambda: DiagonalScale(event_shape=[D]),
}


@pytest.mark.parametrize("name", sorted(BIJECTORS))
@pytest.mark.parametrize(
    "method, arg",
    [
        ("forward", "x"),
        ("inverse", "y"),
        ("forward_log_det_jacobian", "x"),
        ("inverse_log_det_jacobian", "y"),
    ],
)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_input_to_bijector_is_a_type_error(name, method, arg, dtype):
    bijector = BIJECTORS[name]()
    kwargs = {"event_ndims": 1} if method.endswith("jacobian") else {}
    with pytest.raises(
        TypeError,
        match=_esc(f"`{arg}` must be a floating-point tensor")
        + ".*"
        + _esc(f"Received: {arg}.dtype={dtype}"),
    ):
        getattr(bijector, method)(_x(3, D, dtype=dtype), **kwargs)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_input_to_flow_model_call_is_a_type_error(flow, dtype):
    with pytest.raises(
        TypeError,
        match=_esc("`x` must be floating point") + ".*" + _esc(f"Received: x.dtype={dtype}"),
    ):
        flow(_x(3, 2, dtype=dtype))


@pytest.mark.parametrize("method, arg", [("log_prob", "x"), ("encode", "x"), ("decode", "z")])
def test_integer_input_to_flow_model_methods_is_a_type_error(flow, method, arg):
    with pytest.raises(
        TypeError,
        match=_esc(f"`{arg}` must be floating point") + ".*" + _esc(f"Received: {arg}.dtype=int64"),
    ):
        getattr(flow, method)(_x(3, 2, dtype="int64"))


def test_integer_tensor_input_to_flow_model_is_a_type_error(flow):
    with pytest.raises(TypeError, match=_esc("Received: x.dtype=int32")):
        flow.log_prob(tf.zeros([3, 2], tf.int32))


@pytest.mark.parametrize("shape", [(3, 3), (3, 2, 1), (3, 1), ()])
@pytest.mark.parametrize("method", ["log_prob", "__call__", "encode"])
def test_wrong_event_shape_to_flow_model_reports_expected_and_received(flow, method, shape):
    pattern = (
        _esc("`x` must have shape [batch, 2] (event shape [2])")
        + ".*"
        + _esc(f"Received: x.shape={tuple(shape)}")
    )
    with pytest.raises(ValueError, match=pattern):
        getattr(flow, method)(_x(*shape))


def test_wrong_event_shape_to_flow_model_decode_names_z(flow):
    with pytest.raises(
        ValueError,
        match=_esc("`z` must have shape [batch, 2]") + ".*" + _esc("Received: z.shape=(3, 5)"),
    ):
        flow.decode(_x(3, 5))


def test_diagonal_scale_wrong_event_shape_reports_expected_and_received():
    bijector = DiagonalScale(event_shape=[D])
    with pytest.raises(
        ValueError,
        match=_esc("the event shape of `y` must be [4]") + ".*" + _esc("Received: y.shape=(3, 5)"),
    ):
        bijector.inverse(_x(3, 5))


# ---------------------------------------------------------------------------------------------
# validate_args: non-finite input.
# ---------------------------------------------------------------------------------------------
VALIDATED = {
    "additive": lambda va: _additive(num_masked=2, validate_args=va),
    "affine": lambda va: _affine(num_masked=2, validate_args=va),
    "diagonal_scale": lambda va: DiagonalScale(event_shape=[D], validate_args=va),
}
NON_FINITE = {
    "nan": np.array([[0.0, np.nan, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]], "float32"),
    "inf": np.array([[0.0, 0.0, 0.0, 0.0], [-np.inf, 0.0, 1.0, 2.0]], "float32"),
}


@pytest.mark.parametrize("name", sorted(VALIDATED))
@pytest.mark.parametrize("direction, arg", [("forward", "x"), ("inverse", "y")])
@pytest.mark.parametrize("value", sorted(NON_FINITE))
@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_validate_args_rejects_non_finite_input(name, direction, arg, value, mode):
    bijector = VALIDATED[name](True)
    fn = getattr(bijector, direction)
    if mode == "tf_function":
        fn = tf.function(fn)
    with pytest.raises(tf.errors.InvalidArgumentError, match=_esc(f"`{arg}` must be finite")):
        fn(tf.constant(NON_FINITE[value]))


def test_validate_args_rejects_non_finite_input_to_flow_model_log_prob():
    model = FlowModel(priors.standard_normal([D]), [_affine(num_masked=2, validate_args=True)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=_esc("`y` must be finite")):
        model.log_prob(NON_FINITE["nan"])


@pytest.mark.parametrize("name", sorted(VALIDATED))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_without_validate_args_non_finite_input_is_not_checked(name, direction, mode):
    # Documents current behaviour: no check, the NaN/Inf propagates to the output.
    bijector = VALIDATED[name](False)
    fn = getattr(bijector, direction)
    if mode == "tf_function":
        fn = tf.function(fn)
    out = fn(tf.constant(NON_FINITE["nan"])).numpy()
    assert np.isnan(out[0, 1])
    assert np.isfinite(out[1]).all()


# ---------------------------------------------------------------------------------------------
# FlowModel construction.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step", ["permute", 3, None, tfd.Normal(0.0, 1.0)], ids=["str", "int", "None", "distribution"]
)
def test_flow_model_step_that_is_not_a_bijector_is_a_type_error(step):
    with pytest.raises(
        TypeError,
        match=_esc("`steps[1]` must be a tfp.bijectors.Bijector")
        + ".*"
        + _esc(f"Received: {step!r}"),
    ):
        FlowModel(priors.standard_normal([2]), [tfb.Identity(), step])


@pytest.mark.parametrize("steps", [None, 3])
def test_flow_model_steps_that_is_not_a_sequence_is_a_type_error(steps):
    with pytest.raises(
        TypeError, match=_esc("`steps` must be") + ".*" + _esc(f"Received: steps={steps!r}")
    ):
        FlowModel(priors.standard_normal([2]), steps)


@pytest.mark.parametrize("base", ["normal", None, tfb.Identity()], ids=["str", "None", "bijector"])
def test_flow_model_base_that_is_not_a_distribution_is_a_type_error(base):
    with pytest.raises(
        TypeError,
        match=_esc("`base_distribution` must be a tfp.distributions")
        + ".*"
        + _esc(f"Received: base_distribution={base!r}"),
    ):
        FlowModel(base, [tfb.Identity()])


def _batch_norm():
    return tfb.BatchNormalization()


def _real_nvp():
    return tfb.RealNVP(
        num_masked=1, shift_and_log_scale_fn=tfb.real_nvp_default_template(hidden_layers=[8])
    )


def _raw_variable_shift():
    return tfb.Shift(tf.Variable([0.0, 0.0]))


def _maf():
    return tfb.MaskedAutoregressiveFlow(tfb.AutoregressiveNetwork(params=2, hidden_units=[8]))


@pytest.mark.parametrize(
    "factory, cls",
    [
        (_batch_norm, "BatchNormalization"),
        (_real_nvp, "RealNVP"),
        (_raw_variable_shift, "Shift"),
        (_maf, "MaskedAutoregressiveFlow"),
    ],
    ids=["batch_norm-tf_keras", "real_nvp-template", "shift-raw-variable", "maf-tf_keras-network"],
)
def test_flow_model_rejects_step_state_keras_cannot_train(factory, cls):
    # Index 1, behind a harmless step, so the message must name the right index.
    pattern = _esc(f"`steps[1]` ({cls})") + ".*Keras.*cannot"
    with pytest.raises(ValueError, match=pattern):
        FlowModel(priors.standard_normal([2]), [tfb.Identity(), factory()])


# ---------------------------------------------------------------------------------------------
# Layers, DiagonalScale, priors, sampling.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_units", [0, -2, 2.5, True, "2"])
def test_mlp_conditioner_output_units_must_be_a_positive_int(output_units):
    with pytest.raises(
        ValueError,
        match=_esc("`output_units` must be a positive int")
        + ".*"
        + _esc(f"Received: output_units={output_units!r}"),
    ):
        MLPConditioner(output_units)


@pytest.mark.parametrize("hidden_units", [(8, 0), (-1,), (8.5,), ("8",), (8, True)])
def test_mlp_conditioner_hidden_units_must_be_positive_ints(hidden_units):
    with pytest.raises(
        ValueError,
        match=_esc("`hidden_units` must be a sequence of positive ints")
        + ".*"
        + _esc(f"Received: hidden_units={hidden_units!r}"),
    ):
        MLPConditioner(2, hidden_units)


@pytest.mark.parametrize("hidden_units", [8, None])
def test_mlp_conditioner_hidden_units_not_a_sequence_is_rejected(hidden_units):
    with pytest.raises(
        (ValueError, TypeError),
        match=_esc("`hidden_units`") + ".*" + _esc(f"Received: hidden_units={hidden_units!r}"),
    ):
        MLPConditioner(2, hidden_units)


@pytest.mark.parametrize("event_shape", [[], [0], [2, -1], None, "ab", [2.5, "x"]])
def test_log_scale_event_shape_must_be_positive_ints(event_shape):
    with pytest.raises(
        ValueError,
        match=_esc("`event_shape` must be a non-empty sequence of positive ints")
        + ".*"
        + _esc(f"Received: event_shape={event_shape!r}"),
    ):
        LogScale(event_shape)


@pytest.mark.parametrize("event_shape", [[], [0], [2, -1]])
def test_diagonal_scale_event_shape_must_be_positive_ints(event_shape):
    with pytest.raises(
        ValueError,
        match=_esc("`event_shape`") + ".*" + _esc(f"Received: event_shape={event_shape!r}"),
    ):
        DiagonalScale(event_shape=event_shape)


def test_diagonal_scale_needs_exactly_one_of_event_shape_and_log_scale():
    with pytest.raises(
        ValueError,
        match=_esc("exactly one of `event_shape` and `log_scale`")
        + ".*"
        + _esc("Received: event_shape=None, log_scale=None"),
    ):
        DiagonalScale()
    layer = LogScale([2])
    with pytest.raises(
        ValueError,
        match=_esc("exactly one of `event_shape` and `log_scale`")
        + ".*"
        + _esc("Received: event_shape=[2], log_scale="),
    ):
        DiagonalScale(event_shape=[2], log_scale=layer)


@pytest.mark.parametrize("log_scale", ["s", np.zeros([2], "float32")], ids=["str", "array"])
def test_diagonal_scale_log_scale_must_be_a_log_scale_layer(log_scale):
    with pytest.raises(
        TypeError,
        match=_esc("`log_scale` must be a tfp_nice.layers.LogScale")
        + ".*"
        + _esc("Received: log_scale="),
    ):
        DiagonalScale(log_scale=log_scale)


@pytest.mark.parametrize("name", ["cauchy", "Normal", ""])
def test_priors_get_unknown_name_is_rejected(name):
    with pytest.raises(
        ValueError,
        match=_esc("`prior` must be one of ['logistic', 'normal']")
        + ".*"
        + _esc(f"Received: prior={name!r}"),
    ):
        priors.get(name, [2])


@pytest.mark.parametrize("factory", [priors.standard_normal, priors.standard_logistic])
@pytest.mark.parametrize("event_shape", [[0], [], [2, -1], None, ["a"]])
def test_priors_event_shape_must_be_positive_ints(factory, event_shape):
    with pytest.raises(
        ValueError,
        match=_esc("`event_shape`") + ".*" + _esc(f"Received: event_shape={event_shape!r}"),
    ):
        factory(event_shape)


@pytest.mark.parametrize("n", [-1, -5, np.int64(-1)])
def test_flow_model_sample_negative_n_is_rejected(flow, n):
    with pytest.raises(
        ValueError, match=_esc("`n` must be >= 0") + ".*" + _esc(f"Received: n={n}")
    ):
        flow.sample(n)


@pytest.mark.parametrize("n", [2.5, "3"])
def test_flow_model_sample_non_integer_n_is_a_type_error(flow, n):
    with pytest.raises(TypeError, match=_esc("`n` must be") + ".*" + _esc(f"Received: n={n!r}")):
        flow.sample(n)
