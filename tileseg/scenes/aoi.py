"""Areas of interest: polygons (any vector GDAL reads, any CRS) or a bbox with its CRS.

A run with an AOI writes the source's pixel grid cropped to the AOI's bounds (whole pixels,
outward), pixels outside the polygons as nodata, and infers no tile that has no pixel inside.
Inside the polygons the mask is the one a run over the whole raster gives, bit for bit: the run
covers a slightly larger window (:func:`run_window`) whose tiles are exactly the whole run's
tiles that reach the AOI, reading the raster past the window's edges, and the output is cut
from it when published.

Which pixels are inside is a function of the pixel's position alone (its centre, tested
against the polygons' edges in the run's pixel coordinates, row by row: :class:`AoiMask`), never
of the chunk a task happens to hold, so the mask stays the same whatever the chunk size.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from tileseg.errors import ConfigError, InputError, InputNotFoundError
from tileseg.sources.raster import RasterInfo
from tileseg.tiling.grid import Rect, TileGrid

logger = logging.getLogger(__name__)

BBOX_CRS = "EPSG:4326"  # a bbox without a CRS is longitude/latitude, as STAC's bbox
_BBOX = re.compile(r"\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,"
                   r"\s*([-+0-9.eE]+)\s*")
_POLYGONAL = {"Polygon", "MultiPolygon", "CurvePolygon", "MultiSurface", "Polygon Z",
              "MultiPolygon Z", "Polygon M", "MultiPolygon M", "Polygon ZM", "MultiPolygon ZM",
              "Polygon25D", "MultiPolygon25D"}


@dataclass(frozen=True)
class AoiMask:
    """The AOI's polygon edges in a raster's pixel coordinates (x = column, y = row), as
    ``(x1, y1, x2, y2)`` rows of a float64 array kept as bytes (picklable, tokenizable)."""

    edges: bytes

    @property
    def array(self) -> np.ndarray:
        return np.frombuffer(self.edges, dtype=np.float64).reshape(-1, 4)

    def inside(self, rect: Rect) -> np.ndarray:
        """``(height, width)`` bool: pixels of ``rect`` whose centre is inside the polygons
        (even-odd rule over every ring: holes are outside)."""
        out = np.zeros((max(rect.height, 0), max(rect.width, 0)), dtype=bool)
        if out.size == 0:
            return out
        e = self.array
        y_lo, y_hi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
        near = e[(y_hi > rect.row_off) & (y_lo < rect.row_end)]
        if not len(near):
            return out
        x1, y1, x2, y2 = near.T
        centres_x = np.arange(rect.col_off, rect.col_end) + 0.5
        for k, row in enumerate(range(rect.row_off, rect.row_end)):
            yc = row + 0.5
            # half-open in y, so a vertex shared by two edges is crossed once
            hit = ((y1 <= yc) & (yc < y2)) | ((y2 <= yc) & (yc < y1))
            if not hit.any():
                continue
            xs = x1[hit] + (yc - y1[hit]) * (x2[hit] - x1[hit]) / (y2[hit] - y1[hit])
            xs.sort()
            out[k] = np.searchsorted(xs, centres_x, side="right") % 2 == 1
        return out

    def tiles_outside(self, grid: TileGrid, row: int, col: int) -> set[tuple[int, int]]:
        """Tiles of chunk ``(row, col)`` with no pixel inside: nothing they would write is
        kept, so they are not inferred."""
        extent = grid.chunk_extent(row, col).intersection(grid.raster)
        inside = self.inside(extent)
        out = set()
        for r, c in grid.chunk_tiles_of(row, col):
            part = grid.tile(r, c).intersection(grid.raster)
            rs, cs = part.relative_to(extent)
            if not inside[rs, cs].any():
                out.add((r, c))
        return out


@dataclass(frozen=True)
class AoiPlan:
    """A run's AOI: the window it covers, where the output lies in it, and the polygons."""

    raster: RasterInfo  # the run's window of the source (origin and base_shape set)
    output: Rect  # the published grid (the AOI's bounds), relative to the window
    mask: AoiMask  # in the window's pixel coordinates
    source: str  # the aoi as given

    def output_raster(self) -> RasterInfo:
        """The published grid's facts (a crop of the window)."""
        r = self.output
        t = self.raster.affine @ Affine.translation(r.col_off, r.row_off)
        return replace(self.raster, height=r.height, width=r.width, transform=tuple(t)[:6],
                       origin=(self.raster.origin[0] + r.row_off,
                               self.raster.origin[1] + r.col_off))


def parse_bbox(text: str) -> tuple[float, float, float, float] | None:
    """``(west, south, east, north)`` when ``text`` is four comma-separated numbers."""
    match = _BBOX.fullmatch(text)
    if not match:
        return None
    try:
        values = tuple(float(v) for v in match.groups())
    except ValueError:
        return None
    return values  # type: ignore[return-value]


def read_aoi(aoi: str, aoi_crs: str | None) -> tuple[Any, Any]:
    """The AOI as one shapely (multi)polygon and its rasterio CRS."""
    import shapely
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    def crs_of(text: str, what: str) -> Any:
        try:
            return CRS.from_user_input(text)
        except CRSError:
            raise ConfigError(f"{what} {text!r} is not a CRS GDAL knows; give e.g. EPSG:32631",
                              params=("aoi_crs",)) from None

    bbox = parse_bbox(aoi)
    if bbox is not None:
        west, south, east, north = bbox
        if not all(math.isfinite(v) for v in bbox) or not (west < east and south < north):
            raise ConfigError(f"aoi {aoi}: a bbox is west,south,east,north with west < east and "
                              "south < north", params=("aoi",))
        return shapely.box(west, south, east, north), crs_of(aoi_crs or BBOX_CRS, "aoi_crs")
    geometry, crs_wkt = _read_vector(aoi)
    if crs_wkt is None:
        if aoi_crs is None:
            raise InputError(f"{aoi}: the AOI has no CRS; give it one (ogr2ogr -a_srs) or pass "
                             "aoi_crs", params=("aoi_crs",))
        return geometry, crs_of(aoi_crs, "aoi_crs")
    return geometry, crs_of(aoi_crs, "aoi_crs") if aoi_crs else CRS.from_user_input(crs_wkt)


def _read_vector(path: str) -> tuple[Any, str | None]:
    import shapely

    from tileseg.sources.remote import is_remote

    if not is_remote(path) and not Path(path).exists():
        raise InputNotFoundError(f"{path}: no such AOI file; check the path, or give a bbox "
                                 "as west,south,east,north", params=("aoi",))
    try:
        import pyogrio
        from pyogrio.errors import DataSourceError

        meta, _, wkb, _ = pyogrio.raw.read(path, read_geometry=True, columns=[])
    except ImportError as exc:
        from tileseg.deps import missing_dependency

        raise missing_dependency(exc, "aoi", params=("aoi",)) from exc
    except DataSourceError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise InputError(f"{path}: not a vector file GDAL can read ({detail}); give polygons "
                         "(GeoPackage, GeoJSON, Shapefile...) or a bbox", params=("aoi",)) from None
    except Exception as exc:  # noqa: BLE001 - GDAL's errors: one line naming the file
        detail = " ".join(str(exc).split())[:160]
        raise InputError(f"{path}: cannot read the AOI ({detail})", params=("aoi",)) from None
    geoms = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] \
        if wkb is not None else []
    if not geoms:
        raise InputError(f"{path}: the AOI holds no geometry; give polygons", params=("aoi",))
    kinds = sorted({g.geom_type for g in geoms} - {"Polygon", "MultiPolygon"})
    if kinds:
        raise InputError(f"{path}: the AOI holds {', '.join(kinds)}, not polygons; an area of "
                         "interest is polygons (buffer lines or points first)", params=("aoi",))
    merged = shapely.make_valid(shapely.union_all(geoms))
    merged = _polygonal_part(merged)
    if merged.is_empty:
        raise InputError(f"{path}: the AOI's polygons have no area", params=("aoi",))
    return merged, meta.get("crs")


def _polygonal_part(geometry: Any) -> Any:
    """The polygons of ``geometry`` (make_valid may add lines where polygons touched)."""
    import shapely

    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", [geometry])
             if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def to_raster_pixels(geometry: Any, crs: Any, raster: RasterInfo) -> Any:
    """``geometry`` (in ``crs``) in the raster's pixel coordinates (x = column, y = row); edges
    are densified first, so a bbox in degrees bends as it should in a projected CRS."""
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    if raster.crs_wkt is None:
        raise InputError(f"{raster.path}: has no CRS, so an AOI cannot be placed on it; "
                         "assign one (gdal_edit.py -a_srs)", params=("aoi",))
    target = CRS.from_wkt(raster.crs_wkt)
    if crs != target:
        minx, miny, maxx, maxy = geometry.bounds
        step = max(maxx - minx, maxy - miny) / 64 or 1.0
        dense = shapely.segmentize(geometry, step)
        geometry = shapely.geometry.shape(transform_geom(crs, target, dense.__geo_interface__))
        geometry = _polygonal_part(shapely.make_valid(geometry))
    inverse = ~raster.affine
    return shapely.affinity.affine_transform(
        geometry, [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f])


def _edges(geometry: Any, shift_col: float, shift_row: float) -> bytes:
    rings = []
    for polygon in getattr(geometry, "geoms", [geometry]):
        for ring in (polygon.exterior, *polygon.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)[:, :2]
            xy = xy - np.array([shift_col, shift_row])
            rings.append(np.hstack([xy[:-1], xy[1:]]))
    edges = np.vstack(rings) if rings else np.zeros((0, 4))
    flat = edges[edges[:, 1] != edges[:, 3]]  # horizontal edges are never crossed by a centre
    return np.ascontiguousarray(flat, dtype=np.float64).tobytes()


def run_window(output: Rect, grid: TileGrid) -> Rect:
    """The window to run over so that every pixel of ``output`` gets exactly the tiles a run
    over the whole raster gives it: those tiles' cores, from the first tile reaching the window
    to the last (``grid`` is the whole raster's)."""
    s, before, after = grid.stride, grid.halo_before, grid.halo_after

    def span(start: int, end: int, size: int) -> tuple[int, int]:
        first = max(0, (start - after) // s)  # tile k reaches down to (k + 1) * s + after
        last = -(-(end + before) // s) - 1  # and up from k * s - before
        return first * s, min(size, (last + 1) * s)

    r0, r1 = span(output.row_off, output.row_end, grid.height)
    c0, c1 = span(output.col_off, output.col_end, grid.width)
    return Rect.from_bounds(r0, c0, r1, c1)


def plan_aoi(aoi: str, aoi_crs: str | None, raster: RasterInfo, grid: TileGrid) -> AoiPlan:
    """The AOI's window of ``raster`` (tiled as ``grid``, the whole raster's plan); exit 2 when
    the AOI lies outside the raster."""
    geometry, crs = read_aoi(aoi, aoi_crs)
    pixels = to_raster_pixels(geometry, crs, raster)
    minx, miny, maxx, maxy = pixels.bounds
    whole = Rect(0, 0, raster.height, raster.width)
    bounds = Rect.from_bounds(math.floor(miny), math.floor(minx), math.ceil(maxy),
                              math.ceil(maxx)).intersection(whole)
    if pixels.is_empty or bounds.empty:
        raise InputError(f"{aoi}: the AOI lies outside {raster.path}; check its CRS and "
                         "coordinates (a bbox is west,south,east,north)", params=("aoi",))
    window = run_window(bounds, grid)
    mask = AoiMask(_edges(pixels, window.col_off, window.row_off))
    output = Rect(bounds.row_off - window.row_off, bounds.col_off - window.col_off,
                  bounds.height, bounds.width)
    if not mask.inside(output).any():
        raise InputError(f"{aoi}: the AOI covers no pixel centre of {raster.path}; give a larger "
                         "area", params=("aoi",))
    t = raster.affine @ Affine.translation(window.col_off, window.row_off)
    cropped = replace(raster, height=window.height, width=window.width, transform=tuple(t)[:6],
                      origin=(raster.origin[0] + window.row_off,
                              raster.origin[1] + window.col_off),
                      base_shape=raster.base_shape or (raster.height, raster.width))
    logger.info("AOI %s: output %d x %d pixels (rows %d-%d, cols %d-%d of the raster)", aoi,
                bounds.height, bounds.width, bounds.row_off, bounds.row_end, bounds.col_off,
                bounds.col_end)
    return AoiPlan(cropped, output, mask, aoi)
