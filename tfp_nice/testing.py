"""A public conformance kit: check your own bijectors and flows the way tfp_nice checks its own.

Each ``assert_*`` function raises ``AssertionError`` with a message saying what failed and by
how much; :func:`check_bijector` runs them all. Checks:

* round trip: ``inverse(forward(x)) == x`` and ``forward(inverse(y)) == y``;
* log-det consistency: ``fldj(x) == -ildj(forward(x))``;
* log-det against the autodiff Jacobian: ``fldj(x) == log|det dy/dx|`` from
  ``tf.GradientTape.batch_jacobian`` and ``slogdet`` (run it in float64);
* batch shapes ``()``, ``(3,)``, ``(2, 3)``: results broadcast-equal to per-example ones;
* graph consistency: eager, ``tf.function`` and ``tf.function(jit_compile=True)`` agree;
* :func:`assert_variables_trainable`: every trainable variable is seen by Keras and gets a
  non-None, non-zero gradient of the model's loss.

A conditional bijector is checked at a fixed condition: ``condition={"context": c}`` is passed
as keyword arguments to every call (use one context ``[k]`` that broadcasts against every
batch shape).

Example:
  >>> import tensorflow as tf, tensorflow_probability as tfp
  >>> check_bijector(tfp.bijectors.Shift(tf.constant([1.0, 2.0], tf.float64)), event_shape=[2],
  ...                dtype=tf.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "assert_round_trip",
    "assert_log_det_consistent",
    "assert_log_det_matches_autodiff",
    "assert_batch_shapes",
    "assert_graph_consistent",
    "assert_variables_trainable",
    "check_bijector",
    "random_input",
]

BATCH_SHAPES = ((), (3,), (2, 3))


def random_input(
    batch_shape: Sequence[int], event_shape: Sequence[int], dtype=tf.float32, seed: int = 0,
    scale: float = 1.0,
) -> tf.Tensor:
    """A reproducible standard-normal (times ``scale``) tensor of ``batch_shape + event_shape``."""
    rng = np.random.default_rng(seed)
    shape = tuple(batch_shape) + tuple(event_shape)
    return tf.constant(scale * rng.standard_normal(shape), dtype=dtype)


def _event_ndims(bijector, event_shape) -> int:
    return len(tuple(event_shape)) if event_shape is not None else bijector.forward_min_event_ndims


def _inputs(bijector, x, event_ndims: int | None, condition: dict | None) -> tuple:
    """``(condition kwargs, x as a tensor, event_ndims)`` of a check (the bijector's minimum
    event rank where ``event_ndims`` is ``None``)."""
    n = bijector.forward_min_event_ndims if event_ndims is None else event_ndims
    return dict(condition or {}), tf.convert_to_tensor(x), n


def _close(name: str, got, want, rtol: float, atol: float) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    got, want = np.broadcast_arrays(got, want)
    finite = np.isfinite(got) & np.isfinite(want)
    with np.errstate(invalid="ignore"):
        err = np.where(finite, np.abs(got - want), np.inf)
    tol = atol + rtol * np.where(finite, np.abs(want), 0.0)
    # Non-finite values never pass, even against an equal non-finite expectation:
    # a singular Jacobian (slogdet = -inf) must not be "matched" by anything.
    if not np.all(finite) or np.any(err > tol):
        worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else ()
        raise AssertionError(
            f"{name}: max abs error {np.nanmax(err) if err.size else 0:.3e} exceeds atol={atol:g} "
            f"+ rtol={rtol:g}·|want| (worst at {tuple(int(i) for i in worst)}: got "
            f"{got[worst] if err.size else got!r}, want {want[worst] if err.size else want!r})"
        )


def assert_round_trip(bijector, x, rtol: float = 1e-5, atol: float = 1e-5,
                      condition: dict | None = None) -> None:
    """``inverse(forward(x)) == x`` and ``forward(inverse(x)) == x``, computed afresh.

    For a bijector that changes the event shape (e.g. a squeeze), the second check uses the
    values of ``x`` reshaped to the output shape.
    """
    c = dict(condition or {})
    x = tf.convert_to_tensor(x)
    y = bijector.forward(x, **c)
    _close("round trip inverse(forward(x))", bijector.inverse(tf.identity(y), **c), x, rtol,
           atol)
    x_out = x if y.shape == x.shape else tf.reshape(x, tf.shape(y))
    x2 = bijector.inverse(tf.identity(x_out), **c)
    _close("round trip forward(inverse(x))", bijector.forward(tf.identity(x2), **c), x_out, rtol,
           atol)


def assert_log_det_consistent(
    bijector, x, event_ndims: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
    condition: dict | None = None,
) -> None:
    """``fldj(x) == -ildj(forward(x))``, with no cache shared between the two."""
    c, x, n = _inputs(bijector, x, event_ndims, condition)
    fldj = bijector.forward_log_det_jacobian(tf.identity(x), event_ndims=n, **c)
    y = tf.identity(bijector.forward(tf.identity(x), **c))
    ildj = bijector.inverse_log_det_jacobian(y, event_ndims=n, **c)
    _close("fldj(x) vs -ildj(forward(x))", fldj, -ildj, rtol, atol)


def _autodiff_log_det(fn, x: tf.Tensor, event_ndims: int) -> np.ndarray:
    """``log|det d fn(x) / dx|`` per example via batch_jacobian of the flattened event."""
    event_shape = x.shape[x.shape.rank - event_ndims :]
    batch_shape = x.shape[: x.shape.rank - event_ndims]
    d = event_shape.num_elements()
    flat = tf.reshape(x, [-1, d])
    with tf.GradientTape() as tape:
        tape.watch(flat)
        y = fn(tf.reshape(flat, batch_shape + event_shape))
        y_flat = tf.reshape(y, [-1, d])
    jac = tape.batch_jacobian(y_flat, flat)
    _, logdet = np.linalg.slogdet(jac.numpy())
    return logdet.reshape(batch_shape.as_list())


def assert_log_det_matches_autodiff(
    bijector, x, event_ndims: int | None = None, atol: float = 1e-10, rtol: float = 1e-10,
    condition: dict | None = None,
) -> None:
    """``fldj(x)`` and ``-ildj(y)`` equal ``slogdet`` of the autodiff Jacobian (use float64)."""
    c, x, n = _inputs(bijector, x, event_ndims, condition)
    if x.shape.rank == n:
        x = x[tf.newaxis]
    want_f = _autodiff_log_det(lambda v: bijector.forward(v, **c), x, n)
    fldj = bijector.forward_log_det_jacobian(tf.identity(x), event_ndims=n, **c)
    _close("fldj vs autodiff log|det J|", fldj, want_f, rtol, atol)
    y = tf.identity(bijector.forward(x, **c))
    want_i = _autodiff_log_det(lambda v: bijector.inverse(v, **c), y, n)
    ildj = bijector.inverse_log_det_jacobian(tf.identity(y), event_ndims=n, **c)
    _close("ildj vs autodiff log|det J^-1|", ildj, want_i, rtol, atol)


def assert_batch_shapes(
    bijector, event_shape: Sequence[int], dtype=tf.float32,
    batch_shapes: Sequence[Sequence[int]] = BATCH_SHAPES, rtol: float = 1e-5, atol: float = 1e-5,
    condition: dict | None = None,
) -> None:
    """For each batch shape, outputs have the right shapes and equal the per-example results.

    The output event shape is ``bijector.forward_event_shape(event_shape)`` (the same as
    ``event_shape`` unless the bijector reshapes, like a squeeze).
    """
    c = dict(condition or {})
    n = len(tuple(event_shape))
    out_event = list(bijector.forward_event_shape(list(event_shape)))
    for batch_shape in batch_shapes:
        x = random_input(batch_shape, event_shape, dtype, seed=len(batch_shape) + 1)
        y = bijector.forward(x, **c)
        if tuple(y.shape) != tuple(batch_shape) + tuple(out_event):
            raise AssertionError(
                f"batch shape {tuple(batch_shape)}: forward maps {tuple(x.shape)} to "
                f"{tuple(y.shape)}, expected {tuple(batch_shape) + tuple(out_event)}"
            )
        fldj = bijector.forward_log_det_jacobian(x, event_ndims=n, **c)
        ildj = bijector.inverse_log_det_jacobian(tf.identity(y), event_ndims=n, **c)
        for name, ldj in (("fldj", fldj), ("ildj", ildj)):
            try:
                ok = np.broadcast_shapes(tuple(ldj.shape), tuple(batch_shape)) == tuple(batch_shape)
            except ValueError:
                ok = False
            if not ok:
                raise AssertionError(
                    f"batch shape {tuple(batch_shape)}: {name} has shape {tuple(ldj.shape)}, "
                    "which does not broadcast to the batch shape"
                )
        fldj, ildj = tf.broadcast_to(fldj, batch_shape), tf.broadcast_to(ildj, batch_shape)
        flat_x = tf.reshape(x, [-1] + list(event_shape))
        for i in range(flat_x.shape[0]):
            xi = flat_x[i]
            _close(f"batch {tuple(batch_shape)}: forward of example {i}",
                   tf.reshape(y, [-1] + out_event)[i], bijector.forward(xi, **c), rtol, atol)
            _close(f"batch {tuple(batch_shape)}: fldj of example {i}",
                   tf.reshape(fldj, [-1])[i],
                   bijector.forward_log_det_jacobian(xi, event_ndims=n, **c), rtol, atol)
        _close(f"batch {tuple(batch_shape)}: ildj(forward(x)) == -fldj(x)", ildj, -fldj, rtol, atol)


def assert_graph_consistent(
    bijector, x, event_ndims: int | None = None, jit_compile: bool = True,
    rtol: float = 1e-5, atol: float = 1e-5, condition: dict | None = None,
) -> None:
    """Eager, ``tf.function`` and (optionally) XLA-compiled results agree."""
    c, x, n = _inputs(bijector, x, event_ndims, condition)

    def run(x):
        y = bijector.forward(x, **c)
        return (
            y,
            bijector.forward_log_det_jacobian(x, event_ndims=n, **c),
            bijector.inverse(tf.identity(y), **c),
            bijector.inverse_log_det_jacobian(y, event_ndims=n, **c),
        )

    eager = run(x)
    modes = [("tf.function", tf.function(run))]
    if jit_compile:
        modes.append(("jit_compile", tf.function(run, jit_compile=True)))
    for mode, fn in modes:
        for label, got, want in zip(("forward", "fldj", "inverse", "ildj"), fn(x), eager):
            _close(f"{mode} vs eager: {label}", got, want, rtol, atol)


def assert_variables_trainable(
    model: keras.Model, x, loss_fn: Callable | None = None, perturb: float = 1e-2, seed: int = 0,
) -> None:
    """Every trainable variable is seen by Keras and gets a non-None, non-zero gradient.

    Zero-initialised output layers make the gradients of earlier layers exactly zero at
    initialisation, so the weights are temporarily perturbed by ``N(0, perturb²)`` noise
    (and restored afterwards) before taking the gradient of ``loss_fn(model, x)``
    (default: ``mean(model(x))``).

    Raises:
      AssertionError: if Keras sees no trainable variable, or a variable gets a
        ``None`` or all-zero gradient (listed by path).
    """
    variables = list(model.trainable_variables)
    if not variables:
        raise AssertionError(
            f"{type(model).__name__} has no trainable variables visible to Keras: fit would "
            "train nothing"
        )
    loss_fn = loss_fn or (lambda m, x: tf.reduce_mean(m(x)))
    saved = [v.numpy() for v in variables]
    rng = np.random.default_rng(seed)
    try:
        for v, s in zip(variables, saved):
            v.assign(s + perturb * rng.standard_normal(s.shape).astype(s.dtype))
        with tf.GradientTape() as tape:
            loss = loss_fn(model, x)
        grads = tape.gradient(loss, variables)
    finally:
        for v, s in zip(variables, saved):
            v.assign(s)
    none = [v.path for v, g in zip(variables, grads) if g is None]
    zero = [v.path for v, g in zip(variables, grads)
            if g is not None and not np.any(np.asarray(tf.convert_to_tensor(g)))]
    if none or zero:
        raise AssertionError(
            f"variables without a gradient: {none}; variables with an all-zero gradient: {zero}"
        )


def check_bijector(
    bijector, event_shape: Sequence[int], dtype=tf.float64, scale: float = 1.0,
    autodiff_tol: float | None = None, tol: float | None = None, jit_compile: bool = True,
    condition: dict | None = None,
) -> None:
    """Runs every bijector check; use ``dtype=tf.float64`` for the tight autodiff comparison.

    Args:
      bijector: the bijector under test (its event shape is ``event_shape``).
      event_shape: the event shape to test with.
      dtype: input dtype; float64 gives the ``1e-10`` autodiff tolerance.
      scale: standard deviation of the random inputs.
      autodiff_tol: tolerance of the autodiff comparison (default 1e-10 for float64,
        1e-4 otherwise).
      tol: tolerance of the other comparisons (default 1e-9 for float64, 1e-4 otherwise).
      jit_compile: also compare against an XLA-compiled run.
      condition: condition keyword arguments for every call (a conditional bijector), e.g.
        ``{"context": c}`` with one context ``c [k]`` that broadcasts against every batch.
    """
    f64 = tf.as_dtype(dtype) == tf.float64
    autodiff_tol = autodiff_tol if autodiff_tol is not None else (1e-10 if f64 else 1e-4)
    tol = tol if tol is not None else (1e-9 if f64 else 1e-4)
    n = len(tuple(event_shape))
    x = random_input((4,), event_shape, dtype, scale=scale)
    c = dict(condition or {})
    assert_round_trip(bijector, x, rtol=tol, atol=tol, condition=c)
    assert_log_det_consistent(bijector, x, event_ndims=n, rtol=tol, atol=tol, condition=c)
    assert_log_det_matches_autodiff(
        bijector, x, event_ndims=n, atol=autodiff_tol, rtol=autodiff_tol, condition=c
    )
    assert_batch_shapes(bijector, event_shape, dtype, rtol=tol, atol=tol, condition=c)
    assert_graph_consistent(bijector, x, event_ndims=n, jit_compile=jit_compile, rtol=tol,
                            atol=tol, condition=c)
