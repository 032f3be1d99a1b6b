"""Tile-grid invariants (pure geometry, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tileseg.errors import ConfigError
from tileseg.tiling.grid import Rect, TileGrid, aligned_overlap, round_up

# divisor 1: any overlap; > 1: a network's input multiple, the step rounded to it
grids = st.builds(
    lambda h, w, t, o_frac, k, d: TileGrid(h, w, t, aligned_overlap(t, int(o_frac * (t - 1)), d),
                                           k, divisor=d),
    st.integers(1, 300), st.integers(1, 300), st.integers(2, 96), st.floats(0, 0.9),
    st.integers(1, 4), st.sampled_from([1, 1, 2, 8, 16]),
)


def _paint(grid: TileGrid, rects: list[Rect]) -> np.ndarray:
    counts = np.zeros((grid.height, grid.width), dtype=np.int32)
    for rect in rects:
        inside = rect.intersection(grid.raster)
        counts[inside.row_off : inside.row_end, inside.col_off : inside.col_end] += 1
    return counts


@settings(max_examples=150, deadline=None)
@given(grids)
def test_cores_partition_the_raster(grid: TileGrid) -> None:
    counts = _paint(grid, [grid.core(r, c) for r, c in grid.tiles()])
    assert (counts == 1).all()


@settings(max_examples=150, deadline=None)
@given(grids)
def test_tiles_have_fixed_size_contain_their_core_and_touch_the_raster(grid: TileGrid) -> None:
    for r, c in grid.tiles():
        tile, core = grid.tile(r, c), grid.core(r, c)
        assert (tile.height, tile.width) == (grid.tile_size, grid.tile_size)
        assert tile.intersection(core) == core and not core.empty
        # Padding never exceeds the halo before the raster, or the halo plus a partial core after.
        assert tile.row_off >= -grid.halo_before and tile.col_off >= -grid.halo_before
        assert tile.row_end <= grid.height + grid.stride + grid.halo_after


@settings(max_examples=60, deadline=None)
@given(grids)
def test_chunks_partition_and_safe_regions_are_untouched_by_other_chunks(grid: TileGrid) -> None:
    assert (_paint(grid, [grid.chunk(r, c) for r, c in grid.chunks()]) == 1).all()
    for r, c in grid.chunks():
        safe = grid.chunk_safe(r, c)
        chunk = grid.chunk(r, c)
        # safe + border = chunk, disjoint
        pieces = [safe, *grid.chunk_border(r, c)] if not safe.empty else grid.chunk_border(r, c)
        assert sum(p.size for p in pieces) == chunk.size
        # every tile window of this chunk lies in its extent
        extent = grid.chunk_extent(r, c)
        for tr, tc in grid.chunk_tiles_of(r, c):
            assert grid.tile(tr, tc).intersection(extent) == grid.tile(tr, tc)
        # no tile of another chunk reaches the safe region
        for nr, nc in grid.neighbours(r, c):
            if (nr, nc) != (r, c):
                assert grid.chunk_extent(nr, nc).intersection(safe).empty
        # spill + safe covers the extent inside the raster exactly once
        spill = grid.chunk_spill(r, c)
        inside = extent.intersection(grid.raster)
        assert sum(s.size for s in spill) + safe.size == inside.size


@settings(max_examples=200, deadline=None)
@given(st.integers(16, 700), st.floats(0, 0.9), st.sampled_from([1, 2, 8, 16, 32]),
       st.integers(0, 3), st.integers(0, 3))
def test_context_windows_sit_on_the_whole_raster_phase(
    tile: int, o_frac: float, divisor: int, row: int, col: int
) -> None:
    requested = int(o_frac * (tile - 1))
    grid = TileGrid(5000, 5000, tile, aligned_overlap(tile, requested, divisor), divisor=divisor)
    assert grid.overlap >= requested and grid.context % divisor == 0
    assert grid.overlap - requested < divisor  # the step is rounded down, never by more
    context, tile_rect = grid.context_window(row, col), grid.tile(row, col)
    assert context.height == context.width == grid.context
    assert context.intersection(tile_rect) == tile_rect  # the tile lies inside its context
    assert grid.pad_before >= 0 and grid.pad_after >= 0
    if grid.stride >= divisor:
        # the same phase as a whole-raster pass, which starts at pixel 0
        assert context.row_off % divisor == 0 and context.col_off % divisor == 0


def test_default_tiles_step_on_a_16_px_grid_with_a_centred_halo() -> None:
    grid = TileGrid(4096, 4096, 513, aligned_overlap(513, 64, 16), chunk_tiles=5, divisor=16)
    assert (grid.stride, grid.overlap, grid.halo_before, grid.pad_before) == (448, 65, 32, 0)
    assert [grid.context_window(r, 0).row_off for r in range(3)] == [-32, 416, 864]
    # without a divisor nothing moves: 513/64 keeps its 449-px step
    assert TileGrid(4096, 4096).stride == 449
    with pytest.raises(ConfigError, match="overlap 65"):
        TileGrid(4096, 4096, 513, 64, divisor=16)


def test_odd_and_tiny_sizes() -> None:
    g = TileGrid(101, 203, tile_size=64, overlap=16)
    assert (g.tile_rows, g.tile_cols) == (3, 5)
    one = TileGrid(1, 1)
    assert one.num_tiles == 1 and one.core(0, 0) == Rect(0, 0, 1, 1)
    assert one.chunk_safe(0, 0) == Rect(0, 0, 1, 1)


def test_rect_subtract_returns_disjoint_bands() -> None:
    outer = Rect(0, 0, 10, 10)
    bands = outer.subtract(Rect(2, 3, 4, 4))
    assert sum(b.size for b in bands) == 100 - 16
    assert outer.subtract(Rect(20, 20, 1, 1)) == [outer]


def test_for_raster_rounds_chunks_to_whole_cores_and_halos_split_once() -> None:
    from tileseg.config import PredictConfig
    from tileseg.tiling.blend import window_1d
    from tileseg.tiling.grid import split_halo

    config = PredictConfig("a.tif", "b.tif", tile_size=100, overlap=21, chunk_size=500)
    t = config.tiling
    grid = TileGrid.for_raster(1000, 900, t.tile_size, t.overlap, t.chunk_size)
    assert (grid.stride, grid.chunk_tiles) == (79, 6)  # round(500 / 79)
    assert (grid.halo_before, grid.halo_after) == split_halo(21) == (10, 11)
    center = window_1d("center", 100, 21)
    assert center[:10].sum() == 0 and center[10:89].all() and center[89:].sum() == 0
    assert config.runtime.device == "auto" and config.runtime.precision == "auto"


def test_chunk_side_is_the_requested_chunk_size_in_whole_cores() -> None:
    """``chunk_size`` is what a user asks for; ``chunk_side`` what the chunks get."""
    grid = TileGrid.for_raster(1000, 900, tile_size=100, overlap=21, chunk_size=500)
    assert grid.chunk_side == 6 * 79 == 474 != 500
    assert grid.chunk(0, 0) == Rect(0, 0, 474, 474)
    assert grid.chunk(2, 1) == Rect(948, 474, 52, 426)  # cut by the raster's edges
    tiny = TileGrid.for_raster(1000, 900, tile_size=100, overlap=21, chunk_size=1)
    assert tiny.chunk_side == tiny.stride  # at least one core


@given(st.integers(1, 5000), st.integers(1, 64))
def test_round_up_is_the_smallest_multiple_holding_the_size(size: int, multiple: int) -> None:
    rounded = round_up(size, multiple)
    assert rounded % multiple == 0 and size <= rounded < size + multiple
    # the grid's network input is that rounding (the model's context_size uses the same rule)
    overlap = aligned_overlap(size, 0, multiple)
    assert TileGrid(100, 100, size, overlap, divisor=multiple).context == rounded
