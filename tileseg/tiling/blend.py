"""Blending weight windows (plain numpy).

Each tile's logits are multiplied by a weight window before being summed into the mosaic, and
the sum is divided by the summed weights of every pixel, so the weights are normalized exactly
per pixel: a constant prediction stays constant at edges and corners, whatever the window.
Windows are strictly positive over the part of the tile they use, so a pixel covered by a single
tile (raster edges) gets that tile's logits (up to the rounding below).

The sums are integers: each tile's weighted logits are rounded once to a multiple of
``2**-FIXED_POINT_BITS`` and then added exactly (:func:`quantize`), so the blended logits, and
the mask, do not depend on the order in which tiles are added. That is what lets the chunk size,
batch size, workers and scheduler leave the mask bitwise unchanged: float sums would round
differently whenever a chunk boundary regroups the tiles of a pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tileseg.choices import BLEND_WINDOWS, BlendName, check_choice


def _hann(size: int, overlap: int, before: int) -> np.ndarray:
    # Sampled at pixel centres, so the end samples are small but never zero.
    x = (np.arange(size) + 0.5) / size
    return np.sin(np.pi * x) ** 2


def _gaussian(size: int, overlap: int, before: int) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    sigma = size / 8
    return np.exp(-0.5 * (x / sigma) ** 2)


def _triangular(size: int, overlap: int, before: int) -> np.ndarray:
    x = (np.arange(size) + 0.5) / size
    return 1.0 - np.abs(2.0 * x - 1.0)


def _uniform(size: int, overlap: int, before: int) -> np.ndarray:
    return np.ones(size)


def _center(size: int, overlap: int, before: int) -> np.ndarray:
    # Keep only the core: each pixel then comes from exactly one tile (no blending at all).
    w = np.zeros(size)
    w[before : size - (overlap - before)] = 1.0
    return w


# one function a window name (tests/test_choices.py: the names are those of BlendName)
WINDOWS: dict[str, Callable[[int, int, int], np.ndarray]] = {
    "hann": _hann,
    "gaussian": _gaussian,
    "triangular": _triangular,
    "uniform": _uniform,
    "center": _center,
}
DEFAULT_BLEND: BlendName = "hann"


def window_1d(name: str, size: int, overlap: int = 0, halo_before: int | None = None) -> np.ndarray:
    check_choice(name, BLEND_WINDOWS, "blend")
    fn = WINDOWS[name]
    before = overlap // 2 if halo_before is None else halo_before
    return fn(size, overlap, before).astype(np.float64)


def weight_window(name: str, size: int, overlap: int = 0, halo_before: int | None = None) -> np.ndarray:
    """2-D ``(size, size)`` float32 weight window, the outer product of the 1-D window.

    ``halo_before`` is where the core starts in the tile (default: half the overlap); only the
    ``center`` window uses it.

    Examples
    --------
    >>> w = weight_window("hann", 5)
    >>> w.shape, bool((w > 0).all())
    ((5, 5), True)
    """
    w = window_1d(name, size, overlap, halo_before)
    return np.outer(w, w).astype(np.float32)


# Sums of weights and weighted logits are integers in units of 2**-40: fine enough for the
# smallest weight any window has (a 513-px hann corner, about 9e-11, is ~100 units), coarse
# enough that logits up to logit_limit() cannot overflow int64 however many tiles overlap.
FIXED_POINT_BITS = 40
FIXED_POINT_SCALE = float(2**FIXED_POINT_BITS)


def tiles_per_pixel(tile_size: int, overlap: int) -> int:
    """The most tiles that cover one pixel: ``ceil(tile / step)`` per axis, squared."""
    per_axis = -(-tile_size // max(tile_size - overlap, 1))
    return per_axis * per_axis


def logit_limit(tile_size: int, overlap: int) -> float:
    """Logits are clamped to +-this before blending, so a pixel's integer sum stays below
    2**62 (weights are at most 1): 2**20 (about a million) with up to four tiles a pixel."""
    headroom = (tiles_per_pixel(tile_size, overlap) - 1).bit_length()
    return float(2 ** (62 - FIXED_POINT_BITS - headroom))


def fixed_point_window(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float32 weight window as ``(scaled, units)``: ``scaled`` is the window times the
    fixed-point scale, still float32 (a power of two: exact), which a tile's logits are
    multiplied by; ``units`` is the window in integer units, which the weight sums add up.

    >>> scaled, units = fixed_point_window(np.array([[0.5, 1.0]], np.float32))
    >>> units.tolist(), units.dtype.name
    ([[549755813888, 1099511627776]], 'int64')
    """
    scaled = window.astype(np.float32) * np.float32(FIXED_POINT_SCALE)
    return scaled, np.rint(scaled).astype(np.int64)


def quantize(logits: np.ndarray, scaled_weights: np.ndarray, limit: float) -> np.ndarray:
    """One tile's weighted logits in integer units: ``rint(clip(logits) * scaled_weights)``,
    the numpy reference of what the engines compute (float32 product, round half to even)."""
    clipped = np.clip(logits.astype(np.float32, copy=False), -limit, limit)
    return np.rint(clipped * scaled_weights).astype(np.int64)
