"""Several rasters read as one: every band resampled lazily onto one grid.

A *stack* is what a user holds instead of one stacked raster: one file per band (a STAC item's
assets, Sentinel-2's band files), at 10, 20 and 60 m, sometimes in other CRSs. tileseg reads it
through a :class:`StackSpec`, a small picklable value: each band's file, its band number there,
and how it reaches the stack's grid. A band whose file already lies on that grid (same CRS and
pixel size, a whole-pixel offset) is read straight from the file; any other band through a GDAL
warped VRT onto the grid, described by its XML (no file: each worker opens the description
itself). Only the blocks a window needs are read, from the grid's window down to the source
blocks the warper asks for; no band is ever read whole.

A warped band is always read in whole blocks of a fixed grid (:data:`WARP_BLOCK` pixels from the
grid's origin, the warped VRT's own blocks), kept in a small cache, and windows are cut from
them. GDAL's approximate transformer (what ``gdalwarp -et 0.125`` and ``rasterio.warp.reproject``
use) interpolates source positions along the rows of each block it warps, so a pixel's value
depends on the block it was warped in: with blocks on a fixed grid, that is a function of the
pixel's position alone, and the mask stays the same whatever the chunk size. Between grids of one
CRS the warp uses the exact transformer (the transform is affine, the cost nil) and agrees with
``reproject`` bitwise; across CRSs, computing every pixel's position with PROJ costs about 2 s
per 2048 x 2048 pixels, so positions are approximated to 1/100 pixel (:data:`WARP_MAX_ERROR`),
against 1/8 for ``reproject``: their values differ by at most 0.135 source pixel times the band's
slope, plus one for rounding (docs/guide/scenes.md, "The same mask whatever the chunks").
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tileseg.choices import RESAMPLING_METHODS, choice_words
from tileseg.errors import ConfigError, InputError
from tileseg.sources import SUPPORTED_DTYPES

logger = logging.getLogger(__name__)

CONTINUOUS_DEFAULT = "bilinear"  # reflectance and other measured values
CATEGORICAL_DEFAULT = "nearest"  # class codes: never averaged into codes that do not exist
WARP_BLOCK = 512  # the warped VRT's block side: every warp covers one such block of the grid
WARP_MAX_ERROR = 0.01  # source pixels: the approximation of positions across CRSs
WARP_CACHE_BYTES = 64 << 20  # warped blocks a reader keeps (each band's strip of a chunk row)
MAX_GRID_SIDE = 10_000_000  # pixels: a resolution this fine is a typing mistake


@dataclass(frozen=True)
class BandRequest:
    """One band to put in the stack, before the grid is chosen.

    ``name`` is how the user knows the band (an asset key, a file name and band number);
    ``categorical`` picks nearest-neighbour resampling by default; ``nodata`` overrides the file's
    (a STAC item may state a nodata value its files do not carry).
    """

    href: str
    band: int = 1
    name: str = ""
    categorical: bool = False
    resampling: str | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS, north-up transform and size."""

    crs_wkt: str
    transform: tuple[float, ...]
    height: int
    width: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def pixel_size(self) -> float:
        return math.sqrt(abs(self.affine.determinant))


@dataclass(frozen=True)
class StackSource:
    """One file as the stack reads it: straight (``vrt`` None, the grid's origin at pixel
    ``offset`` of the file) or through the warped VRT ``vrt`` (its XML)."""

    href: str
    vrt: str | None = None
    offset: tuple[int, int] = (0, 0)  # (row, col)
    mask_from_gdal: bool = False  # the file's own mask (or the warp's alpha) says what is valid


@dataclass(frozen=True)
class StackBand:
    source: int  # index into StackSpec.sources
    band: int  # 1-based band of that source
    name: str
    dtype: str
    nodata: float | None
    resampling: str | None  # None: read straight from its file


@dataclass(frozen=True)
class StackSpec:
    """Everything a worker needs to read the stack (picklable, no open handles)."""

    sources: tuple[StackSource, ...]
    bands: tuple[StackBand, ...]
    grid: Grid
    dtype: str
    label: str = ""
    hrefs: tuple[str, ...] = field(default=())  # every file, for messages and sizes

    def open(self) -> StackDataset:
        return StackDataset(self)

    @property
    def warped(self) -> bool:
        return any(s.vrt is not None for s in self.sources)


def gdal_path(href: str) -> str:
    """The name GDAL opens ``href`` by (as rasterio would): ``s3://b/k`` is ``/vsis3/b/k``."""
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/"),
                        ("azure://", "/vsiaz/")):
        if href.startswith(scheme):
            return vsi + href[len(scheme):]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    return href


def check_resampling(method: str, where: str = "resampling") -> str:
    if method not in RESAMPLING_METHODS:
        raise ConfigError(f"{where}: unknown method {method!r}; choose "
                          f"{choice_words(RESAMPLING_METHODS)}", params=("resampling",))
    return method


# ------------------------------------------------------------------------------------------
# Building a stack (on the driver: opens each file once for its facts)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileFacts:
    href: str
    crs: Any  # rasterio CRS or None
    transform: Affine
    height: int
    width: int
    dtypes: tuple[str, ...]
    nodata: float | None
    per_dataset_mask: tuple[bool, ...]
    colormapped: tuple[bool, ...]
    block: tuple[int, int]

    @property
    def pixel_area(self) -> float:
        return abs(self.transform.determinant)

    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the file's CRS."""
        from rasterio.transform import array_bounds

        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return west, south, east, north


def _open_facts(href: str, name: str, label: str) -> _FileFacts:
    from rasterio.enums import MaskFlags

    from tileseg.sources.datasets import gdal_message, open_dataset
    from tileseg.sources.remote import is_remote

    try:
        with open_dataset(href) as src:
            if src.count == 0:
                raise InputError(f"{label}: {name} ({href}) holds no raster band; check the "
                                 "file (a container needs a subdataset name)")
            colormapped = []
            for i in src.indexes:
                try:
                    src.colormap(i)
                    colormapped.append(True)
                except ValueError:
                    colormapped.append(False)
            return _FileFacts(
                href=href, crs=src.crs, transform=src.transform, height=src.height,
                width=src.width, dtypes=tuple(src.dtypes), nodata=src.nodata,
                per_dataset_mask=tuple(MaskFlags.per_dataset in f or MaskFlags.alpha in f
                                       for f in src.mask_flag_enums),
                colormapped=tuple(colormapped),
                block=tuple(int(v) for v in src.block_shapes[0]),  # type: ignore[arg-type]
            )
    except RasterioIOError as exc:
        where = ("check the URL, the credentials (AWS_* variables or profile) and the endpoint "
                 "(AWS_ENDPOINT_URL)" if is_remote(href) else "check the path")
        raise InputError(f"{label}: {name} ({href}) cannot be read ({gdal_message(exc)}); "
                         f"{where}") from None


def choose_grid(files: Sequence[_FileFacts], resolution: float | None, label: str) -> Grid:
    """The stack's grid: the finest file's pixel grid (the first of equals), cropped to where
    every file has data; with ``resolution``, a grid of that pixel size in the finest file's
    CRS from the same corner (as ``gdalwarp -tr``)."""
    from rasterio.warp import transform_bounds

    ref = min(files, key=lambda f: f.pixel_area)  # min() keeps the first of equal ones
    if ref.crs is None:
        raise InputError(f"{label}: {ref.href} has no CRS, so its bands cannot be placed on one "
                         "grid; assign one (gdal_edit.py -a_srs EPSG:XXXX)")
    left, bottom, right, top = -math.inf, -math.inf, math.inf, math.inf
    for f in files:
        if f.crs is None:
            raise InputError(f"{label}: {f.href} has no CRS, so it cannot be placed on the "
                             "grid of the others; assign one (gdal_edit.py -a_srs EPSG:XXXX)")
        bounds = f.bounds()
        if f.crs != ref.crs:
            bounds = transform_bounds(f.crs, ref.crs, *bounds, densify_pts=21)
        left, bottom = max(left, bounds[0]), max(bottom, bounds[1])
        right, top = min(right, bounds[2]), min(top, bounds[3])
    if not (left < right and bottom < top):
        raise InputError(f"{label}: the bands do not overlap (no place where every file has "
                         "pixels); check that they belong to one scene")
    t = ref.transform
    if resolution is None:
        if t.b or t.d:
            if all(f.crs == ref.crs and f.transform == t and (f.height, f.width) ==
                   (ref.height, ref.width) for f in files):
                return Grid(ref.crs.to_wkt(), tuple(t)[:6], ref.height, ref.width)
            raise InputError(f"{label}: {ref.href} has a rotated grid; tileseg resamples only "
                             "onto north-up grids: warp it first (gdalwarp)")
        eps = 1e-6
        col0 = max(0, math.floor((left - t.c) / t.a + eps))
        col1 = min(ref.width, math.ceil((right - t.c) / t.a - eps))
        row0 = max(0, math.floor((top - t.f) / t.e + eps))
        row1 = min(ref.height, math.ceil((bottom - t.f) / t.e - eps))
        if col1 <= col0 or row1 <= row0:
            raise InputError(f"{label}: the bands do not overlap on a whole pixel; check that "
                             "they belong to one scene")
        grid_t = t @ Affine.translation(col0, row0)
        return Grid(ref.crs.to_wkt(), tuple(grid_t)[:6], row1 - row0, col1 - col0)
    if not (math.isfinite(resolution) and resolution > 0):
        raise ConfigError(f"resolution {resolution}: give a positive pixel size in the CRS's "
                          "units, or model", params=("resolution",))
    width = max(1, math.ceil((right - left) / resolution - 1e-6))
    height = max(1, math.ceil((top - bottom) / resolution - 1e-6))
    if max(width, height) > MAX_GRID_SIDE:
        raise ConfigError(f"resolution {resolution:g} gives a {height} x {width} grid (height x "
                          "width); give a pixel size in the CRS's units (metres for UTM)",
                          params=("resolution",))
    grid_t = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    return Grid(ref.crs.to_wkt(), tuple(grid_t)[:6], height, width)


def _direct_offset(f: _FileFacts, grid: Grid) -> tuple[int, int] | None:
    """Where the grid's origin lies in ``f`` (row, col) when ``f`` already is on the grid (same
    CRS and pixel size, a whole-pixel offset, the grid inside the file); None otherwise."""
    from rasterio.crs import CRS

    t, g = f.transform, grid.affine
    if f.crs is None or f.crs != CRS.from_wkt(grid.crs_wkt) or t.b or t.d or g.b or g.d:
        return None
    if not (math.isclose(t.a, g.a, rel_tol=1e-9) and math.isclose(t.e, g.e, rel_tol=1e-9)):
        return None
    col, row = (g.c - t.c) / t.a, (g.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    r, c = round(row), round(col)
    if r < 0 or c < 0 or r + grid.height > f.height or c + grid.width > f.width:
        return None
    return r, c


def warped_vrt(href: str, grid: Grid, resampling: str, nodata: float | None) -> str:
    """The XML of a GDAL warped VRT of ``href`` onto ``grid``: the exact transformer within one
    CRS, positions approximated to :data:`WARP_MAX_ERROR` pixel across CRSs.

    GDAL writes the description (the transformer with its CRSs and axis orders, the band
    mapping) from a rasterio ``WarpedVRT``; tileseg sets the approximation, names the source by
    its GDAL path and sets the block size.
    """
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from tileseg.sources.datasets import open_dataset

    options: dict[str, Any] = {}
    if nodata is not None:
        options.update(src_nodata=nodata, nodata=nodata)
    target = CRS.from_wkt(grid.crs_wkt)
    with open_dataset(href) as src:
        if nodata is None:
            options["add_alpha"] = src.nodata is None
        same_crs = src.crs == target
        with WarpedVRT(src, crs=target, transform=grid.affine,
                       width=grid.width, height=grid.height,
                       resampling=Resampling[resampling], **options) as vrt:
            xml = str(vrt.tags(ns="xml:VRT")["xml:VRT"])
    approx = (r"<ApproxTransformer>\s*<MaxError>[^<]*</MaxError>\s*<BaseTransformer>(.*)"
              r"</BaseTransformer>\s*</ApproxTransformer>")
    if same_crs:
        exact, n = re.subn(approx, r"\1", xml, flags=re.S)
    else:
        exact, n = re.subn(r"<MaxError>[^<]*</MaxError>",
                           f"<MaxError>{WARP_MAX_ERROR!r}</MaxError>", xml)
    if n != 1:  # a GDAL that serializes otherwise: never warp other than described
        raise InputError(f"{href}: GDAL's warped VRT has an unexpected form; report this "
                         "with your GDAL version")
    source = f'<SourceDataset relativeToVRT="0">{escape(gdal_path(href))}</SourceDataset>'
    exact = re.sub(r"<SourceDataset[^>]*>.*?</SourceDataset>", lambda _: source, exact,
                   flags=re.S)
    side_x, side_y = min(WARP_BLOCK, grid.width), min(WARP_BLOCK, grid.height)
    exact = re.sub(r"<BlockXSize>\d+</BlockXSize>", f"<BlockXSize>{side_x}</BlockXSize>", exact)
    return re.sub(r"<BlockYSize>\d+</BlockYSize>", f"<BlockYSize>{side_y}</BlockYSize>", exact)


def with_warp_threads(vrt: str, threads: str) -> str:
    """``vrt`` warping on ``threads`` threads (``GDAL_NUM_THREADS``'s values): the warper
    splits a block's rows among them, each row interpolated as a whole, so the values do not
    change, only the time (the reader's own setting, added where it opens the VRT)."""
    option = f'<Option name="NUM_THREADS">{escape(threads)}</Option>'
    return vrt.replace("<WarpMemoryLimit>", option + "<WarpMemoryLimit>", 1)


def common_dtype(dtypes: Sequence[str], label: str) -> str:
    """The dtype every band fits without loss (numpy's promotion), if tileseg reads it."""
    result = np.result_type(*[np.dtype(d) for d in dtypes]).name
    if result not in SUPPORTED_DTYPES:
        raise InputError(f"{label}: the bands' dtypes {', '.join(sorted(set(dtypes)))} have no "
                         f"common type tileseg reads ({result}); convert some (gdal_translate "
                         "-ot)")
    return result


def build_stack(requests: Sequence[BandRequest], *, resolution: float | None, label: str,
                default_resampling: dict[str, str] | None = None) -> StackSpec:
    """Open each file once, choose the grid and describe how every band reaches it.

    ``default_resampling`` maps ``"continuous"`` and ``"categorical"`` to the methods used
    for bands without their own.
    """
    if not requests:
        raise InputError(f"{label}: no band to read")
    defaults = {"continuous": CONTINUOUS_DEFAULT, "categorical": CATEGORICAL_DEFAULT,
                **(default_resampling or {})}
    facts: dict[str, _FileFacts] = {}
    for req in requests:
        if req.href not in facts:
            facts[req.href] = _open_facts(req.href, req.name or req.href, label)
        f = facts[req.href]
        if not 1 <= req.band <= len(f.dtypes):
            raise InputError(f"{label}: {req.name or req.href} asks for band {req.band} of "
                             f"{req.href}, which has {len(f.dtypes)}")
    used = [facts[h] for h in dict.fromkeys(r.href for r in requests)]
    grid = choose_grid(used, resolution, label)
    sources: list[StackSource] = []
    index: dict[tuple[str, str | None], int] = {}
    bands: list[StackBand] = []
    for req in requests:
        f = facts[req.href]
        nodata = f.nodata if f.nodata is not None else req.nodata
        offset = _direct_offset(f, grid)
        categorical = req.categorical or f.colormapped[req.band - 1]
        method = req.resampling or defaults["categorical" if categorical else "continuous"]
        check_resampling(method)
        key = (req.href, None if offset is not None else f"{method}|{nodata}")
        if key not in index:
            index[key] = len(sources)
            if offset is not None:
                sources.append(StackSource(req.href, None, offset,
                                           mask_from_gdal=nodata is None
                                           and any(f.per_dataset_mask)))
            else:
                sources.append(StackSource(req.href, warped_vrt(req.href, grid, method, nodata),
                                           mask_from_gdal=nodata is None))
        warped = offset is None
        bands.append(StackBand(index[key], req.band, req.name or f"{req.href}:{req.band}",
                               f.dtypes[req.band - 1], nodata, method if warped else None))
        if warped:
            logger.info("%s: %s resampled onto the grid (%s)", label, bands[-1].name, method)
    dtype = common_dtype([b.dtype for b in bands], label)
    return StackSpec(tuple(sources), tuple(bands), grid, dtype, label,
                     tuple(dict.fromkeys(r.href for r in requests)))


# ------------------------------------------------------------------------------------------
# Reading a stack (in any process: the spec is all it needs)
# ------------------------------------------------------------------------------------------


class StackDataset:
    """The stack as the reader sees a rasterio dataset: ``read``, ``read_masks``, ``close``.

    Each source file (or warped VRT) is opened once and kept, so GDAL's block cache serves the
    blocks that neighbouring windows share. Not thread-safe, like a rasterio dataset: one reader
    at a time (:class:`tileseg.sources.raster.WindowReader` and its pool see to that).
    """

    def __init__(self, spec: StackSpec) -> None:
        from tileseg.sources.datasets import decode_threads, open_dataset
        from tileseg.sources.remote import gdal_options

        self.spec = spec
        self.count = len(spec.bands)
        self.nodata = None
        self.files = list(spec.hrefs)
        self._datasets: list[Any] = []
        self._options = [gdal_options(s.href) for s in spec.sources]
        self._last: tuple[Any, np.ndarray] | None = None
        # warped blocks by (source, band, masks, block row, block col), least recent first
        self._blocks: OrderedDict[tuple[int, int, bool, int, int], np.ndarray] = OrderedDict()
        self._block_bytes = 0
        try:
            threads = decode_threads()
            for source, options in zip(spec.sources, self._options, strict=True):
                with rasterio.Env(**options):
                    name = source.href if source.vrt is None else with_warp_threads(source.vrt,
                                                                                    threads)
                    self._datasets.append(open_dataset(name, quiet=False))
        except RasterioIOError as exc:
            self.close()
            from tileseg.sources.datasets import gdal_message

            raise RasterioIOError(f"{source.href}: {gdal_message(exc)}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def mask_flag_enums(self) -> list[list[Any]]:
        from rasterio.enums import MaskFlags

        flags = []
        for band in self.spec.bands:
            if band.nodata is not None:
                flags.append([MaskFlags.nodata])
            elif self.spec.sources[band.source].mask_from_gdal:
                flags.append([MaskFlags.per_dataset])
            else:
                flags.append([MaskFlags.all_valid])
        return flags

    def __enter__(self) -> StackDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._blocks.clear()
        self._block_bytes = 0
        while self._datasets:
            self._datasets.pop().close()

    def _window(self, band: StackBand, window: Window) -> Window:
        source = self.spec.sources[band.source]
        if source.vrt is not None:
            return window
        row, col = source.offset
        return Window(window.col_off + col, window.row_off + row, window.width, window.height)

    def _read_band(self, band: StackBand, window: Window, out_shape: Any = None,
                   resampling: Any = None, masks: bool = False) -> np.ndarray:
        if out_shape is None and self.spec.sources[band.source].vrt is not None:
            return self._read_warped(band, window, masks)
        return self._read_window(band, window, out_shape, resampling, masks)

    def _read_warped(self, band: StackBand, window: Window, masks: bool) -> np.ndarray:
        """``window`` of a warped band, cut from whole blocks of the fixed block grid."""
        grid = self.spec.grid
        side_y, side_x = min(WARP_BLOCK, grid.height), min(WARP_BLOCK, grid.width)
        row0, col0 = int(window.row_off), int(window.col_off)
        row1, col1 = row0 + int(window.height), col0 + int(window.width)
        out: np.ndarray | None = None
        for br in range(row0 // side_y, -(-row1 // side_y)):
            for bc in range(col0 // side_x, -(-col1 // side_x)):
                block = self._warped_block(band, br, bc, side_y, side_x, masks)
                top, left = br * side_y, bc * side_x
                r0, r1 = max(row0, top), min(row1, top + block.shape[0])
                c0, c1 = max(col0, left), min(col1, left + block.shape[1])
                if out is None:
                    out = np.empty((row1 - row0, col1 - col0), dtype=block.dtype)
                out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = \
                    block[r0 - top : r1 - top, c0 - left : c1 - left]
        assert out is not None
        return out

    def _warped_block(self, band: StackBand, br: int, bc: int, side_y: int, side_x: int,
                      masks: bool) -> np.ndarray:
        key = (band.source, band.band, masks, br, bc)
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
            return block
        grid = self.spec.grid
        window = Window(bc * side_x, br * side_y, min(side_x, grid.width - bc * side_x),
                        min(side_y, grid.height - br * side_y))
        block = self._read_window(band, window, None, None, masks)
        self._blocks[key] = block
        self._block_bytes += block.nbytes
        while self._block_bytes > WARP_CACHE_BYTES and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self._block_bytes -= old.nbytes
        return block

    def _read_window(self, band: StackBand, window: Window, out_shape: Any = None,
                     resampling: Any = None, masks: bool = False) -> np.ndarray:
        ds = self._datasets[band.source]
        kwargs: dict[str, Any] = {"window": self._window(band, window)}
        if out_shape is not None:
            kwargs.update(out_shape=out_shape, resampling=resampling)
        with rasterio.Env(**self._options[band.source]):
            try:
                if masks:
                    return np.asarray(ds.read_masks(band.band, **kwargs))
                return np.asarray(ds.read(band.band, **kwargs))
            except RasterioIOError as exc:
                from tileseg.sources.datasets import gdal_message

                href = self.spec.sources[band.source].href
                raise RasterioIOError(f"{band.name} ({href}): {gdal_message(exc)}") from exc

    def read(self, indexes: Sequence[int] | int, window: Window | None = None) -> np.ndarray:
        """Bands ``indexes`` (1-based in the stack) of ``window`` in the stack's dtype; the
        valid pixels of the same call are kept for :meth:`read_masks`."""
        one = isinstance(indexes, int)
        wanted = [indexes] if isinstance(indexes, int) else list(indexes)
        if window is None:
            window = Window(0, 0, self.spec.grid.width, self.spec.grid.height)
        data = np.empty((len(wanted), int(window.height), int(window.width)),
                        dtype=self.spec.dtype)
        valid = np.empty_like(data, dtype=np.uint8)
        for k, i in enumerate(wanted):
            band = self.spec.bands[i - 1]
            values = self._read_band(band, window)
            data[k] = values
            if band.nodata is not None:
                nd = band.nodata
                bad = np.isnan(values) if isinstance(nd, float) and math.isnan(nd) else values == nd
                valid[k] = np.where(bad, 0, 255)
            elif self.spec.sources[band.source].mask_from_gdal:
                valid[k] = self._read_band(band, window, masks=True)
            else:
                valid[k] = 255
        self._last = ((tuple(wanted), _window_key(window)), valid)
        return data[0] if one else data

    def read_masks(self, indexes: Sequence[int] | int, window: Window | None = None,
                   out_shape: Any = None, resampling: Any = None) -> np.ndarray:
        """Valid pixels (255) of bands ``indexes``: those of the last :meth:`read` of the same
        window, or read anew (decimated to ``out_shape`` for an overview of the masks)."""
        one = isinstance(indexes, int)
        wanted = [indexes] if isinstance(indexes, int) else list(indexes)
        if window is None:
            window = Window(0, 0, self.spec.grid.width, self.spec.grid.height)
        if out_shape is None and self._last is not None and self._last[0] == (
                tuple(wanted), _window_key(window)):
            masks = self._last[1]
            return masks[0] if one else masks
        shape = None if out_shape is None else tuple(out_shape)[-2:]
        planes = []
        for i in wanted:
            band = self.spec.bands[i - 1]
            if band.nodata is None and not self.spec.sources[band.source].mask_from_gdal:
                size = shape or (int(window.height), int(window.width))
                planes.append(np.full(size, 255, np.uint8))
                continue
            if band.nodata is None:
                planes.append(self._read_band(band, window, shape, resampling, masks=True))
                continue
            values = self._read_band(band, window, shape, resampling)
            nd = band.nodata
            bad = np.isnan(values) if isinstance(nd, float) and math.isnan(nd) else values == nd
            planes.append(np.where(bad, 0, 255).astype(np.uint8))
        masks = np.stack(planes)
        return masks[0] if one else masks


def _window_key(window: Window) -> tuple[int, int, int, int]:
    return (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
