"""Train a small reversible residual network (RevNet) on the 8x8 digits with memory-saving backprop.

Run:  python examples/revnet_digits.py [--epochs 40] [--blocks 4] [--channels 16]
The RevNet blocks' backward pass reconstructs activations instead of storing them
(`memory_saving=True`), so activation memory does not grow with `--blocks`.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits

from tfp_nice import data
from tfp_nice.reversible import ReversibleBlock, ReversibleSequential


def digits_with_labels():
    """`data.load("digits")` splits (scaled to [0, 1]) with their sklearn labels."""
    splits, digits = data.load("digits"), load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))  # data.load's fixed split
    n = len(splits.test)
    labels = np.split(digits.target[order], [n, 2 * n])  # test, validation, train
    if not np.array_equal(splits.test[..., 0], digits.images[order][:n]):
        raise RuntimeError("the labels do not line up with data.load('digits')")
    return [(x / 16.0, y) for x, y in zip((splits.train, splits.validation, splits.test),
                                          (labels[2], labels[1], labels[0]))]


def branch(channels: int) -> keras.layers.Layer:
    """F or G: keeps the half's shape [8, 8, channels / 2]; tanh keeps it well conditioned."""
    return keras.Sequential([
        keras.layers.Conv2D(channels, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(channels // 2, 3, padding="same", activation="tanh"),
    ])


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--channels", type=int, default=16, help="even: split into two halves")
    p.add_argument("--plain", action="store_true", help="ordinary backprop (the baseline)")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = digits_with_labels()

    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(args.channels, 3, padding="same"),  # lift to an even width
        ReversibleSequential(
            [ReversibleBlock(branch(args.channels), branch(args.channels))
             for _ in range(args.blocks)],
            memory_saving=not args.plain),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    # jit_compile=False: XLA drops the control dependencies that keep memory flat.
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    model.fit(x_train, y_train, validation_data=(x_val, y_val), batch_size=64,
              epochs=args.epochs, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"RevNet ({args.blocks} blocks, memory_saving={not args.plain}) on digits: "
          f"held-out accuracy {accuracy:.3f}")
    return float(accuracy)


if __name__ == "__main__":
    main()
