"""Tile-grid geometry, in pixels, as plain value objects (no I/O, no torch).

Vocabulary: the raster is cut into *cores* of ``stride = tile_size - overlap`` pixels that
partition it exactly. A *tile* is a core grown by a *halo* (``halo_before`` above/left,
``halo_after`` below/right), so neighbouring tiles share ``overlap`` pixels. Tiles at the right
and bottom edges may reach past the raster; those pixels are explicit padding (reflected), never
real data, and never written. Tiles are grouped into square *chunks* of ``chunk_tiles`` cores per
side; a chunk is the unit of dask work and of Zarr storage. A chunk's side in pixels,
:attr:`TileGrid.chunk_side`, is a whole number of cores: the ``chunk_size`` a user asks for
(:meth:`TileGrid.for_raster`) is rounded to it.

The network sees a *context* window around each tile: the tile grown to the next multiple of
the model's ``divisor`` (its input multiple, e.g. 16 for an encoder that downsamples by 16).
Such a network is not shift-invariant: moving its input by a pixel that is not a multiple of
the divisor changes what every stride-2 layer samples. So when ``divisor > 1`` the stride must be
a multiple of the divisor (see :func:`aligned_overlap`) and every context window starts on the
divisor grid, at the phase a single whole-raster pass would use (origin 0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from tileseg.errors import ConfigError


@dataclass(frozen=True, order=True)
class Rect:
    """Half-open pixel rectangle ``[row_off, row_off+height) x [col_off, col_off+width)``."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def empty(self) -> bool:
        return self.height <= 0 or self.width <= 0

    @property
    def size(self) -> int:
        return max(self.height, 0) * max(self.width, 0)

    @classmethod
    def from_bounds(cls, row_off: int, col_off: int, row_end: int, col_end: int) -> Rect:
        return cls(row_off, col_off, max(row_end - row_off, 0), max(col_end - col_off, 0))

    def intersection(self, other: Rect) -> Rect:
        return Rect.from_bounds(
            max(self.row_off, other.row_off),
            max(self.col_off, other.col_off),
            min(self.row_end, other.row_end),
            min(self.col_end, other.col_end),
        )

    def grow(self, before: int, after: int) -> Rect:
        return Rect(self.row_off - before, self.col_off - before,
                    self.height + before + after, self.width + before + after)

    def relative_to(self, outer: Rect) -> tuple[slice, slice]:
        """Row and column slices that select this rectangle inside an array covering ``outer``."""
        r = self.row_off - outer.row_off
        c = self.col_off - outer.col_off
        return slice(r, r + self.height), slice(c, c + self.width)

    def subtract(self, inner: Rect) -> list[Rect]:
        """This rectangle minus ``inner`` as at most four disjoint bands (top, bottom, left, right)."""
        inner = inner.intersection(self)
        if inner.empty:
            return [] if self.empty else [self]
        bands = [
            Rect.from_bounds(self.row_off, self.col_off, inner.row_off, self.col_end),
            Rect.from_bounds(inner.row_end, self.col_off, self.row_end, self.col_end),
            Rect.from_bounds(inner.row_off, self.col_off, inner.row_end, inner.col_off),
            Rect.from_bounds(inner.row_off, inner.col_end, inner.row_end, self.col_end),
        ]
        return [b for b in bands if not b.empty]


def split_halo(overlap: int) -> tuple[int, int]:
    """The halo above/left and below/right of a core: ``overlap`` split, the odd pixel after."""
    before = overlap // 2
    return before, overlap - before


@dataclass(frozen=True)
class TileGrid:
    """The tiling plan of one raster.

    Examples
    --------
    >>> grid = TileGrid(height=1000, width=1500, tile_size=513, overlap=64)
    >>> grid.stride, grid.tile_rows, grid.tile_cols
    (449, 3, 4)
    >>> grid.tile(0, 0)
    Rect(row_off=-32, col_off=-32, height=513, width=513)

    On a network's divisor grid (``overlap`` from :func:`aligned_overlap`):

    >>> grid = TileGrid(1000, 1500, 513, aligned_overlap(513, 64, 16), divisor=16)
    >>> grid.stride, grid.overlap, grid.context, grid.context_window(1, 1)
    (448, 65, 528, Rect(row_off=416, col_off=416, height=528, width=528))
    """

    height: int
    width: int
    tile_size: int = 513
    overlap: int = 64
    chunk_tiles: int = 4
    divisor: int = 1  # the network's input multiple; > 1 puts context windows on its grid

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"raster size {self.height} x {self.width} (height x width) is empty")
        if self.tile_size < 1:
            raise ConfigError(f"tile_size must be at least 1, got {self.tile_size}", params=("tile_size",))
        if not 0 <= self.overlap < self.tile_size:
            raise ConfigError(
                f"overlap must be between 0 and tile size - 1 ({self.tile_size - 1}), "
                f"got {self.overlap}",
                params=("overlap",))
        if self.chunk_tiles < 1:
            raise ConfigError(f"chunk must hold at least one tile, got {self.chunk_tiles}")
        if self.divisor < 1:
            raise ConfigError(f"divisor must be at least 1, got {self.divisor}")
        if self.stride >= self.divisor and self.stride % self.divisor:
            raise ConfigError(
                f"tile step {self.stride} is not a multiple of the model's input multiple "
                f"{self.divisor}; use overlap {aligned_overlap(self.tile_size, self.overlap, self.divisor)}"
            )

    # -- tiles -------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    @cached_property
    def halo_before(self) -> int:
        """Halo above/left of the core: half the overlap, or the nearest value that lets the
        context window start on the divisor grid (``halo_before + pad_before`` a multiple of it)."""
        spare = self.context - self.tile_size
        return min(range(self.overlap + 1),
                   key=lambda h: (-h % self.divisor > spare, abs(2 * h - self.overlap), h))

    @property
    def halo_after(self) -> int:
        return self.overlap - self.halo_before

    @classmethod
    def for_raster(cls, height: int, width: int, tile_size: int, overlap: int,
                   chunk_size: int, divisor: int = 1) -> TileGrid:
        """The grid whose chunks are close to the requested ``chunk_size`` pixels per side: a
        whole number of cores, at least one (the side they get is :attr:`chunk_side`).

        >>> TileGrid.for_raster(5000, 5000, 513, 64, chunk_size=2048).chunk_side  # 5 cores of 449
        2245
        """
        one = cls(height, width, tile_size, overlap, chunk_tiles=1, divisor=divisor)
        return dataclasses.replace(one, chunk_tiles=chunk_tiles_for(one.stride, chunk_size))

    @property
    def context(self) -> int:
        """Network input size: the tile size rounded up to a multiple of the divisor."""
        return round_up(self.tile_size, self.divisor)

    @property
    def pad_before(self) -> int:
        """Context pixels above/left of the tile (real neighbours; reflection past the raster)."""
        return -self.halo_before % self.divisor

    @property
    def pad_after(self) -> int:
        return self.context - self.tile_size - self.pad_before

    @property
    def tile_rows(self) -> int:
        return math.ceil(self.height / self.stride)

    @property
    def tile_cols(self) -> int:
        return math.ceil(self.width / self.stride)

    @property
    def num_tiles(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def raster(self) -> Rect:
        return Rect(0, 0, self.height, self.width)

    def core(self, row: int, col: int) -> Rect:
        """The pixels this tile owns; cores partition the raster."""
        s = self.stride
        return Rect(row * s, col * s, s, s).intersection(self.raster)

    def tile(self, row: int, col: int) -> Rect:
        """The tile window (core plus halo); may reach outside the raster at its edges."""
        s = self.stride
        return Rect(row * s - self.halo_before, col * s - self.halo_before,
                    self.tile_size, self.tile_size)

    def context_window(self, row: int, col: int) -> Rect:
        """The network input window around tile ``(row, col)``; its origin is a multiple of the
        divisor, the phase at which a whole-raster pass would see the same pixels."""
        return self.tile(row, col).grow(self.pad_before, self.pad_after)

    def tiles(self) -> Iterator[tuple[int, int]]:
        for row in range(self.tile_rows):
            for col in range(self.tile_cols):
                yield row, col

    # -- chunks ------------------------------------------------------------------------------
    @property
    def chunk_side(self) -> int:
        """Pixels per chunk side: ``chunk_tiles`` whole cores (the requested ``chunk_size``
        rounded to them); chunks at the right and bottom edges may be cut by the raster."""
        return self.chunk_tiles * self.stride

    @property
    def chunk_rows(self) -> int:
        return math.ceil(self.tile_rows / self.chunk_tiles)

    @property
    def chunk_cols(self) -> int:
        return math.ceil(self.tile_cols / self.chunk_tiles)

    @property
    def num_chunks(self) -> int:
        return self.chunk_rows * self.chunk_cols

    def chunks(self) -> Iterator[tuple[int, int]]:
        for row in range(self.chunk_rows):
            for col in range(self.chunk_cols):
                yield row, col

    def chunk_tile_range(self, row: int, col: int) -> tuple[range, range]:
        """Tile rows and tile columns whose cores lie in this chunk."""
        k = self.chunk_tiles
        return (range(row * k, min((row + 1) * k, self.tile_rows)),
                range(col * k, min((col + 1) * k, self.tile_cols)))

    def chunk_tiles_of(self, row: int, col: int) -> list[tuple[int, int]]:
        rows, cols = self.chunk_tile_range(row, col)
        return [(r, c) for r in rows for c in cols]

    def chunk(self, row: int, col: int) -> Rect:
        """The raster pixels the chunk owns (union of its cores); chunks partition the raster."""
        c = self.chunk_side
        return Rect(row * c, col * c, c, c).intersection(self.raster)

    def chunk_extent(self, row: int, col: int) -> Rect:
        """Union of the chunk's tile windows: every pixel its tiles write logits to."""
        rows, cols = self.chunk_tile_range(row, col)
        first = self.tile(rows[0], cols[0])
        last = self.tile(rows[-1], cols[-1])
        return Rect.from_bounds(first.row_off, first.col_off, last.row_end, last.col_end)

    def chunk_safe(self, row: int, col: int) -> Rect:
        """Pixels of the chunk that no tile of another chunk reaches: final after one task."""
        own = self.chunk(row, col)
        top = own.row_off + (self.halo_after if row > 0 else 0)
        left = own.col_off + (self.halo_after if col > 0 else 0)
        bottom = own.row_end - (self.halo_before if row < self.chunk_rows - 1 else 0)
        right = own.col_end - (self.halo_before if col < self.chunk_cols - 1 else 0)
        return Rect.from_bounds(top, left, bottom, right)

    def chunk_spill(self, row: int, col: int) -> list[Rect]:
        """Parts of the chunk's extent (inside the raster) that other chunks also write to."""
        extent = self.chunk_extent(row, col).intersection(self.raster)
        return extent.subtract(self.chunk_safe(row, col))

    def chunk_border(self, row: int, col: int) -> list[Rect]:
        """Parts of the chunk that need logits from neighbouring chunks before they are final."""
        return self.chunk(row, col).subtract(self.chunk_safe(row, col))

    def neighbours(self, row: int, col: int) -> list[tuple[int, int]]:
        """The chunk itself and the up-to-eight chunks around it, in a fixed order."""
        out = []
        for r in range(max(row - 1, 0), min(row + 2, self.chunk_rows)):
            for c in range(max(col - 1, 0), min(col + 2, self.chunk_cols)):
                out.append((r, c))
        return out


def round_up(size: int, multiple: int) -> int:
    """``size`` rounded up to a multiple of ``multiple``: the smallest network input that holds
    ``size`` pixels, for a network whose input multiple (divisor) is ``multiple``.

    >>> round_up(513, 16), round_up(512, 16), round_up(5, 1)
    (528, 512, 5)
    """
    return -(-size // multiple) * multiple


def aligned_overlap(tile_size: int, overlap: int, divisor: int) -> int:
    """The overlap to use so the tile step is a multiple of ``divisor``: at least ``overlap``,
    with the step ``tile_size - overlap`` rounded down to the divisor (513/64/16 -> 65, step 448).

    A step below one divisor keeps ``overlap`` (such tiles cannot all be aligned).

    >>> aligned_overlap(513, 64, 16), aligned_overlap(512, 64, 16), aligned_overlap(513, 64, 1)
    (65, 64, 64)
    """
    step = (tile_size - overlap) // divisor * divisor
    return tile_size - step if step > 0 else overlap


def chunk_tiles_for(stride: int, chunk_size: int) -> int:
    """Cores per chunk side so that a chunk is close to the requested ``chunk_size`` pixels per
    side (at least one)."""
    return max(1, round(chunk_size / stride))
