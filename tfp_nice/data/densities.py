"""The 2-D toy densities of FFJORD and nflows, drawn with NumPy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["NAMES", "load_density"]


def load_density(name: str, seed: int, num_samples: int) -> dict[str, np.ndarray]:
    """Draws train / validation / test sets of a 2-D toy density from independent streams."""
    sample = _SAMPLERS[name]
    n_eval = max(num_samples // 4, 1)
    sizes = {"train": num_samples, "validation": n_eval, "test": n_eval}
    return {
        split: sample(np.random.default_rng([seed, i]), n).astype(np.float32)
        for i, (split, n) in enumerate(sizes.items())
    }


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    # sklearn.datasets.make_moons(noise=0.1) with random angles, scaled as in FFJORD.
    n_outer = n // 2
    t = rng.uniform(0.0, np.pi, n)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where((np.arange(n) < n_outer)[:, None], outer, inner)
    x = x + rng.normal(0.0, 0.1, (n, 2))
    return rng.permutation(x * 2.0 + np.array([-1.0, -0.2]))


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    # Four concentric circles of radii 0.75, 1.5, 2.25, 3 plus N(0, 0.08^2) noise (FFJORD).
    radius = 0.75 * rng.integers(1, 5, n)
    t = rng.uniform(0.0, 2.0 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return x + rng.normal(0.0, 0.08, (n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform on the black squares of a 4x4 board over [-4, 4]^2 (FFJORD).
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    # Eight N(c, 0.5^2) on a circle of radius 4, then divided by 1.414 (FFJORD).
    angles = np.arange(8) * (np.pi / 4)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = centers[rng.integers(0, 8, n)] + rng.normal(0.0, 0.5, (n, 2))
    return x / 1.414


_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "moons": _moons,
    "rings": _rings,
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
}

#: The density names :func:`tfp_nice.data.load` accepts.
NAMES = tuple(_SAMPLERS)
