"""Sample figures: image grids, or a 2-D scatter over the data, one panel per temperature.

Uses matplotlib's non-interactive Agg backend; imported lazily by the CLI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from tfp_nice._internal import files

__all__ = ["image_grid", "save_samples_figure", "save_image_panels"]


def image_grid(
    images: np.ndarray, low: float, high: float, columns: int | None = None
) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images into a ``[rows·(H+1), cols·(W+1), C]`` array in ``[0, 1]``."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    cols = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    scaled = np.clip((images - low) / max(high - low, 1e-12), 0.0, 1.0)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 0.3)  # grey separators
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = scaled[i]
    return grid


def save_samples_figure(
    path: str | os.PathLike,
    samples: dict[float, np.ndarray],
    low: float,
    high: float,
    data: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Writes a PNG with one panel per temperature (``{temperature: samples}``).

    Images (``[N, H, W, C]``) are shown as image grids (values mapped from ``[low, high]``);
    2-D vectors as a scatter plot over ``data``; other vectors as image-like rows.
    The file is written to a temporary name and renamed, so a crash leaves no partial PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps: Sequence[float] = sorted(samples, reverse=True)
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 5), squeeze=False)
    for ax, t in zip(axes[0], temps):
        s = np.asarray(samples[t])
        if s.ndim == 4 or s.ndim == 3:
            grid = image_grid(s, low, high)
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray_r"
                      if grid.shape[-1] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
        elif s.ndim == 2 and s.shape[1] == 2:
            if data is not None:
                d = np.asarray(data)[:5000]
                ax.scatter(d[:, 0], d[:, 1], s=2, c="0.75", label="data")
            ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", label="samples")
            ax.set_aspect("equal")
            ax.legend(loc="upper right", markerscale=4)
        else:
            ax.imshow(s, aspect="auto", cmap="viridis")
        ax.set_title(f"temperature {t:g}")
    _save(fig, path, title)


def save_image_panels(
    path: str | os.PathLike,
    panels: dict[str, np.ndarray],
    low: float,
    high: float,
    columns: int | None = None,
    title: str = "",
) -> None:
    """Writes a PNG with one titled image grid per entry of ``panels`` (``{title: [N, H, W, C]}``).

    Like :func:`save_samples_figure`, written to a temporary name and renamed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        grid = image_grid(panels[name], low, high, columns=columns)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid,
                  cmap="gray_r" if grid.shape[-1] == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
        ax.set_title(name)
    _save(fig, path, title)


def _save(fig, path: str | os.PathLike, title: str = "") -> None:
    """Titles, lays out and writes ``fig`` under a temporary name, renamed into ``path``.

    A crash mid-write leaves any earlier file at ``path`` intact; the figure is closed.
    """
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with files.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
