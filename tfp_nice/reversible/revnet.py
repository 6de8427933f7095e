"""RevNet blocks (Gomez et al. 2017) and stacks of them whose backprop stores no activations."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfp_nice import _math
from tfp_nice.reversible._backprop import GradientSink, after, or_zeros, trainable

__all__ = ["ReversibleBlock", "ReversibleSequential"]


def _halves(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    c = x.shape[-1] // 2
    return _math.split_flat(x, slice(0, c), slice(c, None))


def _merge(x1: tf.Tensor, x2: tf.Tensor) -> tf.Tensor:
    return _math.merge_flat(x1, x2, True, None)


def _half_shape(input_shape, owner: str) -> tuple:
    shape = tuple(input_shape)
    if len(shape) < 2 or shape[-1] is None:
        raise ValueError(
            f"{owner}: the input needs a batch axis and a known last (feature/channel) axis to "
            f"split into two halves. Received: input_shape={shape}"
        )
    if shape[-1] % 2:
        raise ValueError(
            f"{owner}: the last (feature/channel) axis is split into two equal halves "
            f"x1 = x[..., :C/2], x2 = x[..., C/2:], so C must be even. Received: "
            f"input_shape={shape} (C = {shape[-1]}). Project to an even width first "
            "(e.g. a Dense or 1x1 Conv layer)."
        )
    return shape[:-1] + (shape[-1] // 2,)


@keras.saving.register_keras_serializable(package="tfp_nice")
class ReversibleBlock(keras.layers.Layer):
    """The RevNet coupling [3]: two additive couplings, exactly invertible.

    Split ``x`` on its last axis into halves ``(x1, x2)`` (``C`` must be even)::

      forward:  y1 = x1 + F(x2),   y2 = x2 + G(y1)
      inverse:  x2 = y2 - G(y1),   x1 = y1 - F(x2)
      log|det J| = 0

    Each line is NICE's additive coupling (:func:`tfp_nice._math.additive_forward` /
    ``additive_inverse``). ``F`` and ``G`` are Keras layers that must map a half to the
    same shape (e.g. ``Dense(C // 2, activation="tanh")`` or a same-padded conv stack).

    Args:
      f: the layer ``F`` (applied to ``x2``, added to ``x1``).
      g: the layer ``G`` (applied to ``y1``, added to ``x2``).
      **kwargs: ``keras.layers.Layer`` arguments. ``dtype`` (default: ``f``'s dtype policy)
        is the dtype of the residual stream ``x``; ``F``/``G`` outputs are cast to it.

    Raises:
      TypeError: if ``f`` or ``g`` is not a Keras layer.
      ValueError: at build, if ``C`` is odd or unknown, or if ``F``/``G`` change the half's
        shape (the message names the block and both shapes).

    Example:
      >>> import keras, numpy as np
      >>> block = ReversibleBlock(keras.layers.Dense(2, activation="tanh"),
      ...                         keras.layers.Dense(2, activation="tanh"))
      >>> x = np.random.randn(3, 4).astype("float32")
      >>> bool(np.allclose(block.inverse(block(x)), x, atol=1e-6))
      True

    References:
      [3] Gomez et al. The Reversible Residual Network. arXiv:1707.04585, eq. (1)-(2).
    """

    def __init__(self, f: keras.layers.Layer, g: keras.layers.Layer, **kwargs):
        for arg, layer in (("f", f), ("g", g)):
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    f"ReversibleBlock: `{arg}` must be a keras.layers.Layer that keeps the shape "
                    f"of half the input. Received: {arg}={layer!r}"
                )
        kwargs.setdefault("dtype", f.dtype_policy)
        super().__init__(**kwargs)
        self.f = f
        self.g = g

    def build(self, input_shape):
        owner = f"ReversibleBlock '{self.name}'"
        half = _half_shape(input_shape, owner)
        for arg, layer in (("f", self.f), ("g", self.g)):
            if not layer.built:
                layer.build(half)
            try:
                spec = layer.compute_output_spec(keras.KerasTensor(half, self.compute_dtype))
                got = tuple(spec.shape)
            except Exception as e:  # noqa: BLE001 - reported with the block's name
                raise ValueError(
                    f"{owner}: `{arg}` ({layer.name}) cannot be applied to a half of shape "
                    f"{half}: {e}"
                ) from None
            if len(got) != len(half) or any(
                a is not None and b is not None and a != b for a, b in zip(got[1:], half[1:])
            ):
                raise ValueError(
                    f"{owner}: `{arg}` ({layer.name}) must keep the shape of the half it is "
                    f"given, {half} (input {tuple(input_shape)} split on the last axis). "
                    f"Received: {arg} output shape {got}"
                )
        self.built = True

    # --- the math ----------------------------------------------------------------------------
    def _f(self, x2: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.f(x2), x2.dtype)  # the residual stream keeps its dtype

    def _g(self, y1: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.g(y1), y1.dtype)

    def forward_halves(self, x1: tf.Tensor, x2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x1, x2) -> (y1, y2)``."""
        y1 = _math.additive_forward(x1, self._f(x2))
        return y1, _math.additive_forward(x2, self._g(y1))

    def inverse_halves(self, y1: tf.Tensor, y2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(y1, y2) -> (x1, x2)``."""
        x2 = _math.additive_inverse(y2, self._g(y1))
        return _math.additive_inverse(y1, self._f(x2)), x2

    def call(self, inputs):
        return _merge(*self.forward_halves(*_halves(inputs)))

    def inverse(self, y) -> tf.Tensor:
        """The exact inverse ``x = block^-1(y)``."""
        y = tf.convert_to_tensor(y, dtype=self.compute_dtype)
        if not self.built:
            self.build(y.shape)
        return _merge(*self.inverse_halves(*_halves(y)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            f=keras.saving.serialize_keras_object(self.f),
            g=keras.saving.serialize_keras_object(self.g),
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> ReversibleBlock:
        config = dict(config)
        config["f"] = keras.saving.deserialize_keras_object(config["f"])
        config["g"] = keras.saving.deserialize_keras_object(config["g"])
        return cls(**config)


def _revnet_backward(blocks, y, dy, variables):
    """Walks the blocks top-down: reconstructs each input and backprops through it."""
    sink = GradientSink(
        variables, [trainable(b.f) for b in blocks] + [trainable(b.g) for b in blocks]
    )
    y1, y2 = _halves(y)
    dy1, dy2 = _halves(dy)
    for b in reversed(blocks):
        y1, y2 = after(y1, dy1, dy2), after(y2, dy1, dy2)
        # y2 = x2 + G(y1): one G call serves the reconstruction of x2 and G's backward.
        src = sink.sources(trainable(b.g))
        x2, dy, grads = _undo_half(b._g, y1, y2, src, dy2)  # noqa: SLF001
        dy1 = dy1 + dy  # total gradient of y1
        sink.add(src, grads)
        # y1 = x1 + F(x2): one F call serves x1 and F's backward.
        src = sink.sources(trainable(b.f))
        x1, dy, grads = _undo_half(b._f, x2, y1, src, dy1)  # noqa: SLF001
        dy2 = dy2 + dy  # dx2; dx1 = dy1
        sink.add(src, grads)
        y1, y2 = x1, x2
    return _merge(dy1, dy2), sink.result()


def _undo_half(fn, u, v_out, src: list, dv: tf.Tensor) -> tuple:
    """Undoes ``v_out = v + fn(u)`` with one call of ``fn``: ``(v, dL/du through fn, dL/dsrc)``
    for the output gradient ``dv``."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(u)
        tape.watch(src)
        out = fn(u)
    grads = tape.gradient(out, [u] + src, output_gradients=dv)
    return _math.additive_inverse(v_out, out), or_zeros(grads[0], u), grads[1:]


def _revnet_memory_saving(x: tf.Tensor, blocks) -> tf.Tensor:
    @tf.custom_gradient
    def run(x):
        x1, x2 = _halves(x)
        for b in blocks:
            x1, x2 = b.forward_halves(x1, x2)
        y = _merge(x1, x2)

        def grad(dy, variables=None):
            return _revnet_backward(blocks, y, dy, variables)

        return y, grad

    return run(x)


@keras.saving.register_keras_serializable(package="tfp_nice")
class ReversibleSequential(keras.layers.Layer):
    """A stack of :class:`ReversibleBlock` whose backward pass stores no activations.

    ``y = block_n(... block_1(x))``. With ``memory_saving=True`` the stack runs inside one
    ``tf.custom_gradient`` that keeps only ``y``; the backward pass reconstructs each block's
    input from its output (``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``) and backpropagates
    through the block in the same pass, so activation memory is flat in depth and a training
    step costs one extra forward pass. ``memory_saving=False`` is ordinary backprop (the
    baseline). Both give the same values and, up to round-off, the same gradients.

    Works in eager mode, ``tf.function``, ``fit`` and under XLA (``jit_compile=True``), with
    the same values, gradients and flat memory: under XLA an optimization barrier orders each
    reconstruction after its incoming gradient; see the module docstring and
    ``bench/reversible_memory.md``.

    ``F``/``G`` must be deterministic (no dropout) and well conditioned (e.g. ``tanh``).

    Args:
      blocks: a non-empty list of :class:`ReversibleBlock`.
      memory_saving: ``True`` for the reconstructing backward pass, ``False`` for plain
        backprop.
      **kwargs: ``keras.layers.Layer`` arguments; ``dtype`` defaults to the first block's.

    Raises:
      TypeError: if a block is not a :class:`ReversibleBlock` or ``memory_saving`` not a bool.
      ValueError: if ``blocks`` is empty; at build, as :class:`ReversibleBlock`.

    Example:
      >>> import keras, numpy as np
      >>> def branch():
      ...     return keras.layers.Dense(4, activation="tanh")
      >>> stack = ReversibleSequential([ReversibleBlock(branch(), branch()) for _ in range(3)])
      >>> x = np.random.randn(2, 8).astype("float32")
      >>> stack(x).shape
      TensorShape([2, 8])
      >>> bool(np.allclose(stack.inverse(stack(x)), x, atol=1e-5))
      True
    """

    def __init__(self, blocks: Sequence[ReversibleBlock], memory_saving: bool = True, **kwargs):
        if isinstance(blocks, ReversibleBlock):
            blocks = [blocks]
        try:
            blocks = list(blocks)
        except TypeError:
            raise TypeError(
                "ReversibleSequential: `blocks` must be a list of ReversibleBlock. "
                f"Received: blocks={blocks!r}"
            ) from None
        if not blocks:
            raise ValueError("ReversibleSequential: `blocks` must not be empty. Received: []")
        for i, b in enumerate(blocks):
            if not isinstance(b, ReversibleBlock):
                raise TypeError(
                    f"ReversibleSequential: `blocks[{i}]` must be a ReversibleBlock(f, g). "
                    f"Received: {b!r}"
                )
        if not isinstance(memory_saving, bool):
            raise TypeError(
                "ReversibleSequential: `memory_saving` must be a bool. "
                f"Received: memory_saving={memory_saving!r}"
            )
        kwargs.setdefault("dtype", blocks[0].dtype_policy)
        super().__init__(**kwargs)
        self.blocks = blocks
        self.memory_saving = memory_saving

    def build(self, input_shape):
        # Every sub-layer gets its variables here, before any tf.custom_gradient call.
        for b in self.blocks:
            if not b.built:
                b.build(input_shape)
        self.built = True

    def call(self, inputs):
        if self.memory_saving:
            return _revnet_memory_saving(inputs, list(self.blocks))
        for b in self.blocks:
            inputs = b(inputs)
        return inputs

    def inverse(self, y) -> tf.Tensor:
        """The exact inverse ``x = stack^-1(y)``."""
        y = tf.convert_to_tensor(y, dtype=self.compute_dtype)
        if not self.built:
            self.build(y.shape)
        y1, y2 = _halves(y)
        for b in reversed(self.blocks):
            y1, y2 = b.inverse_halves(y1, y2)
        return _merge(y1, y2)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            blocks=[keras.saving.serialize_keras_object(b) for b in self.blocks],
            memory_saving=self.memory_saving,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> ReversibleSequential:
        config = dict(config)
        config["blocks"] = [keras.saving.deserialize_keras_object(b) for b in config["blocks"]]
        return cls(**config)
