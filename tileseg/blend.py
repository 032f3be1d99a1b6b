"""Blending weight windows (plain numpy).

Each tile's logits are multiplied by a weight window before being summed into the mosaic, and
the sum is divided by the summed weights of every pixel, so the weights are normalized exactly
per pixel: a constant prediction stays constant at edges and corners, whatever the window.
Windows are strictly positive over the part of the tile they use, so a pixel covered by a single
tile (raster edges) gets that tile's logits unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from tileseg.grid import split_halo

BlendName = Literal["hann", "gaussian", "triangular", "uniform", "center"]


def _hann(size: int, overlap: int) -> np.ndarray:
    # Sampled at pixel centres, so the end samples are small but never zero.
    x = (np.arange(size) + 0.5) / size
    return np.sin(np.pi * x) ** 2


def _gaussian(size: int, overlap: int) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    sigma = size / 8
    return np.exp(-0.5 * (x / sigma) ** 2)


def _triangular(size: int, overlap: int) -> np.ndarray:
    x = (np.arange(size) + 0.5) / size
    return 1.0 - np.abs(2.0 * x - 1.0)


def _uniform(size: int, overlap: int) -> np.ndarray:
    return np.ones(size)


def _center(size: int, overlap: int) -> np.ndarray:
    # Keep only the core: each pixel then comes from exactly one tile (no blending at all).
    w = np.zeros(size)
    before, after = split_halo(overlap)
    w[before : size - after] = 1.0
    return w


WINDOWS: dict[str, Callable[[int, int], np.ndarray]] = {
    "hann": _hann,
    "gaussian": _gaussian,
    "triangular": _triangular,
    "uniform": _uniform,
    "center": _center,
}
DEFAULT_BLEND: BlendName = "hann"


def window_1d(name: str, size: int, overlap: int = 0) -> np.ndarray:
    try:
        fn = WINDOWS[name]
    except KeyError:
        from tileseg.errors import ConfigError

        raise ConfigError(
            f"unknown blend window {name!r}; choose one of {', '.join(WINDOWS)}"
        ) from None
    return fn(size, overlap).astype(np.float64)


def weight_window(name: str, size: int, overlap: int = 0) -> np.ndarray:
    """2-D ``(size, size)`` float32 weight window, the outer product of the 1-D window.

    Examples
    --------
    >>> w = weight_window("hann", 5)
    >>> w.shape, bool((w > 0).all())
    ((5, 5), True)
    """
    w = window_1d(name, size, overlap)
    return np.outer(w, w).astype(np.float32)
