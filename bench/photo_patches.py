"""32x32x3 colour images offline: patches of scikit-learn's two bundled photographs.

Run from the repo root:
    python bench/photo_patches.py                        # writes /tmp/photo-patches-32.npz
    python bench/photo_patches.py --out mine.npz --size 32 --stride 4

CIFAR-10 and other colour datasets need a download (TFDS, `keras.datasets`); scikit-learn ships
two real photographs (`load_sample_images`: "china.jpg" and "flower.jpg", 427x640x3 uint8).
This cuts each into three column bands, so no pixel of a held-out patch is in a training
patch: the left 70 % gives overlapping training patches (every `--stride` pixels), the next
15 % validation and the last 15 % test patches (every `--size / 2` pixels). The file has
`x_train`, `x_val`, `x_test` as `[N, size, size, 3]` uint8, which `tfp-nice train --data`
and `bench/image_speed.py --data` take as they are. Two photographs are a small, correlated
sample of natural images: use the file for speed and for comparing settings on colour
images, not as a density benchmark (CIFAR-10 is that).
"""

from __future__ import annotations

import argparse

import numpy as np


def _patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    h, w, _ = image.shape
    rows = range(0, h - size + 1, stride)
    cols = range(0, w - size + 1, stride)
    return np.stack([image[r:r + size, c:c + size] for r in rows for c in cols])


def build(size: int = 32, stride: int = 4) -> dict[str, np.ndarray]:
    """The three splits of patches, ``{"x_train", "x_val", "x_test"}``, uint8."""
    from sklearn.datasets import load_sample_images

    splits: dict[str, list] = {"x_train": [], "x_val": [], "x_test": []}
    for image in load_sample_images().images:
        w = image.shape[1]
        a, b = int(0.70 * w), int(0.85 * w)
        splits["x_train"].append(_patches(image[:, :a], size, stride))
        splits["x_val"].append(_patches(image[:, a:b], size, size // 2))
        splits["x_test"].append(_patches(image[:, b:], size, size // 2))
    return {k: np.concatenate(v).astype(np.uint8) for k, v in splits.items()}


def main(argv=None) -> dict[str, np.ndarray]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/photo-patches-32.npz")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--stride", type=int, default=4)
    args = p.parse_args(argv)
    arrays = build(args.size, args.stride)
    np.savez_compressed(args.out, **arrays)
    print(args.out, {k: list(v.shape) for k, v in arrays.items()})
    return arrays


if __name__ == "__main__":
    main()
