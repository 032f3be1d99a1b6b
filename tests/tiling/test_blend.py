"""Blending invariants: weights normalize to one and constant logits come out constant."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tileseg.tiling.blend import WINDOWS, weight_window
from tileseg.tiling.grid import TileGrid, aligned_overlap


def _accumulate(grid: TileGrid, window: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reference numpy blend of per-tile constant logits ``values[r, c]`` over the raster."""
    pad = grid.tile_size
    acc = np.zeros((grid.height + 2 * pad, grid.width + 2 * pad))
    wsum = np.zeros_like(acc)
    for r, c in grid.tiles():
        t = grid.tile(r, c)
        sl = (slice(t.row_off + pad, t.row_end + pad), slice(t.col_off + pad, t.col_end + pad))
        acc[sl] += window * values[r, c]
        wsum[sl] += window
    inner = (slice(pad, pad + grid.height), slice(pad, pad + grid.width))
    return acc[inner], wsum[inner]


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_windows_are_non_negative_and_symmetric(name: str) -> None:
    w = weight_window(name, 33, 8)
    assert w.shape == (33, 33) and (w >= 0).all()
    assert np.allclose(w, w[::-1, ::-1])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 120), st.integers(1, 120), st.integers(4, 48), st.floats(0, 0.8),
       st.sampled_from(sorted(WINDOWS)), st.floats(-50, 50), st.sampled_from([1, 1, 4, 16]))
def test_constant_in_constant_out_and_weights_sum_to_one(
    height: int, width: int, tile: int, frac: float, name: str, value: float, divisor: int
) -> None:
    # divisor > 1: the step is rounded to a network's input multiple and the halo may be
    # off-centre (the center window must follow it)
    overlap = aligned_overlap(tile, int(frac * (tile - 1)), divisor)
    grid = TileGrid(height, width, tile, overlap, divisor=divisor)
    window = weight_window(name, tile, grid.overlap, grid.halo_before).astype(np.float64)
    acc, wsum = _accumulate(grid, window, np.full((grid.tile_rows, grid.tile_cols), value))
    # Every pixel, edges and corners included, has weight: no empty ring, no dimmed border.
    assert (wsum > 0).all()
    np.testing.assert_allclose(acc / wsum, value, rtol=1e-12, atol=1e-12)
    # Normalized per-tile weights sum to exactly one everywhere: each tile's weight over the
    # summed weight, added up in one pass (the same terms as blending each tile alone).
    pad = grid.tile_size
    wsum_padded = np.pad(wsum, pad)
    ones = np.zeros_like(wsum_padded)
    for r, c in grid.tiles():
        t = grid.tile(r, c)
        sl = (slice(t.row_off + pad, t.row_end + pad), slice(t.col_off + pad, t.col_end + pad))
        with np.errstate(divide="ignore", invalid="ignore"):  # outside the raster: cropped below
            ones[sl] += window / wsum_padded[sl]
    np.testing.assert_allclose(ones[pad : pad + grid.height, pad : pad + grid.width], 1.0,
                               rtol=1e-12)


def test_hann_crossfades_smoothly_across_an_overlap() -> None:
    grid = TileGrid(1, 200, 64, 32)
    window = weight_window("hann", 64, 32).astype(np.float64)
    values = np.zeros((grid.tile_rows, grid.tile_cols))
    values[0, ::2] = 1.0  # alternate tiles predict 0 and 1
    acc, wsum = _accumulate(grid, window, values)
    blended = (acc / wsum)[0]
    # No jump larger than a smooth ramp over the overlap would make.
    assert np.abs(np.diff(blended)).max() < 0.1
