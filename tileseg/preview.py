"""Quicklook pictures of a class mask: its palette, optionally over the source image, with a legend.

The picture is read as a *decimated view*: one nearest-neighbour read at the picture's size,
which GDAL serves from the mask's overviews (``predict`` writes them), so memory and time depend
on the picture size, not on the mask. Class areas come from a full pass over the mask block by
block (exact, bounded memory) or, with ``areas="estimate"``, from the decimated view's counts
scaled to the whole mask (no extra read).

Examples
--------
>>> result = make_preview("mask.tif", "mask.png", PreviewConfig(over="scene.tif"))  # doctest: +SKIP
>>> [(a.name, round(a.km2, 1)) for a in result.areas]  # doctest: +SKIP
[('forest', 812.4), ('water', 95.1)]
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling

from tileseg.choices import AreaMethod, check_choices
from tileseg.errors import ConfigError, DiskFullError, InputError, InputNotFoundError, OutputError
from tileseg.models.metadata import ClassInfo
from tileseg.outputs import mask as mask_format
from tileseg.outputs.location import location
from tileseg.outputs.styles import legend_for, mask_legend
from tileseg.sources.datasets import open_dataset
from tileseg.sources.remote import is_remote
from tileseg.sources.subdatasets import raster_exists
from tileseg.text import counted

logger = logging.getLogger(__name__)

WGS84_A, WGS84_F = 6_378_137.0, 1 / 298.257223563  # pixel areas of a geographic CRS
_NODATA_RGB = (255, 255, 255)
_MAX_LEGEND_ROWS = 24  # more classes than this: the largest, then "+N more"


@dataclass(frozen=True)
class PreviewConfig:
    """How to draw a preview (see :func:`make_preview`).

    ``size`` bounds the whole picture (map and legend) in pixels; ``over`` is a raster to show
    beneath the classes (the source image), drawn from ``bands`` (1-based; default: the bands
    tagged red/green/blue, else the first three, else band 1 in grey) with a 2-98 percentile
    stretch, and ``opacity`` says how strongly the classes cover it.
    """

    size: int = 1024
    over: str | None = None
    bands: tuple[int, ...] | None = None
    opacity: float = 0.55
    areas: AreaMethod = "exact"
    legend: bool = True

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 16384:
            raise ConfigError(f"size {self.size}: give a picture side from 64 to 16384 pixels",
                              params=("size",))
        if not 0.0 <= self.opacity <= 1.0:
            raise ConfigError(f"opacity {self.opacity}: give a value from 0 to 1", params=("opacity",))
        check_choices(self)  # areas
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise ConfigError("bands takes one band (grey) or three (red,green,blue), 1-based, "
                              "e.g. bands 3,2,1", params=("bands",))


@dataclass(frozen=True)
class ClassArea:
    """One class of the legend: its pixels in the whole mask and their area."""

    id: int
    name: str
    color: tuple[int, int, int]
    pixels: int
    km2: float | None  # None: the mask has no CRS, or one whose units are not metres/degrees
    share: float  # of the mask's valid (non-nodata) pixels


@dataclass(frozen=True)
class PreviewResult:
    """What :func:`make_preview` drew."""

    path: str
    width: int
    height: int
    map_shape: tuple[int, int]  # (height, width) of the decimated view
    mask_shape: tuple[int, int]  # (height, width) of the full mask
    areas: tuple[ClassArea, ...]  # present classes, by class id
    area_method: AreaMethod
    approximate_area: bool  # pixel areas from a geographic CRS (on the WGS84 ellipsoid)


def check_preview_destination(dst: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Fail before any work when a preview cannot be written at ``dst``.

    On an object store (``s3://``...) the bucket must answer (exit 2) and an existing object is
    replaced only when it is a preview tileseg drew, read from a downloaded copy (exit 4)."""
    out = Path(dst)
    if out.suffix.lower() != ".png":
        raise OutputError(f"{os.fspath(dst)}: a preview is a PNG; name it .png")
    location(dst).check_replaceable(overwrite=overwrite, owned=is_tileseg_png,
                                    foreign=_foreign_png(dst), what="file name")
    return out


PNG_MARKER = "tileseg"  # the PNG's "Software" text chunk starts with it


def is_tileseg_png(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a preview tileseg drew (its ``Software`` text chunk says so)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(getattr(image, "text", {}).get("Software", "")).startswith(PNG_MARKER)
    except (OSError, ValueError):
        return False


def _foreign_png(out: str | os.PathLike[str]) -> str:
    return (f"{os.fspath(out)}: exists and is not a preview tileseg drew, so it is left as it "
            "is; choose another file name or remove it")


def make_preview(
    mask: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: PreviewConfig | None = None,
) -> PreviewResult:
    """Draw ``mask`` (GeoTIFF/COG or Zarr from ``predict``, or any single-band class raster) as a
    PNG at ``dst``, written to a temporary name and renamed, with a legend of class areas.

    Examples
    --------
    >>> make_preview("mask.tif", "mask.png", PreviewConfig(size=512)).areas[0].name  # doctest: +SKIP
    'developed'
    """
    from PIL import Image

    config = config or PreviewConfig()
    mask_path = os.fspath(mask)
    check_preview_destination(dst)
    view = _open_view(mask_path)
    legend_width = min(320, config.size // 3) if config.legend else 0
    map_h, map_w = fit_shape(view.height, view.width, max_height=config.size,
                             max_width=config.size - legend_width)
    classes_view = view.read_decimated(map_h, map_w)
    valid = classes_view != view.nodata if view.nodata is not None else np.ones_like(
        classes_view, dtype=bool)
    counts = _count(view, classes_view, valid, config.areas)
    legend = legend_for(mask_legend(mask_path), list(counts))
    areas, approximate = _areas(view, counts, legend)

    rgb = np.empty((map_h, map_w, 3), np.uint8)
    rgb[:] = _NODATA_RGB
    if config.over:
        rgb = render_source(config.over, view, (map_h, map_w), config.bands)
    # Through the distinct values, not a table indexed by class id: ids may be large (uint32).
    ids, inverse = np.unique(classes_view, return_inverse=True)
    colours = {c.id: c.color for c in legend}
    table = np.array([colours.get(int(v), _NODATA_RGB) for v in ids], np.uint8).reshape(-1, 3)
    coloured = table[inverse.reshape(classes_view.shape)]
    alpha = config.opacity if config.over else 1.0
    blend = (alpha * coloured + (1.0 - alpha) * rgb).round().astype(np.uint8)
    rgb[valid] = blend[valid]
    picture = Image.fromarray(rgb, "RGB")
    if config.legend:
        picture = _with_legend(picture, areas, legend_width, config, approximate)
    from PIL.PngImagePlugin import PngInfo

    from tileseg._version import __version__

    info = PngInfo()
    info.add_text("Software", f"{PNG_MARKER} {__version__}")
    try:
        # drawn to a temporary file, then renamed (or uploaded once) over what was checked
        with location(dst).replacing(owned=is_tileseg_png, foreign=_foreign_png(dst),
                                     what="file name") as tmp:
            picture.save(tmp, format="PNG", optimize=False, pnginfo=info)
    except DiskFullError:
        raise
    except OSError as exc:
        raise OutputError(f"{os.fspath(dst)}: cannot write the preview ({exc})") from exc
    return PreviewResult(os.fspath(dst), picture.width, picture.height, (map_h, map_w),
                         (view.height, view.width), areas, config.areas, approximate)


def fit_shape(height: int, width: int, *, max_height: int, max_width: int) -> tuple[int, int]:
    """``(height, width)`` scaled to fit ``max_height`` x ``max_width``, aspect kept (up or down)."""
    scale = min(max_width / width, max_height / height)
    return max(1, min(max_height, round(height * scale))), max(1, min(max_width,
                                                                       round(width * scale)))


# ------------------------------------------------------------------------------------------
# The mask, whatever stores it
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MaskView:
    path: str
    kind: Literal["gdal", "zarr"]
    height: int
    width: int
    nodata: int | None
    transform: Affine
    crs: Any  # rasterio CRS or None

    def read_decimated(self, height: int, width: int) -> np.ndarray:
        """The mask at ``(height, width)``, nearest neighbour: overviews serve it when present."""
        if self.kind == "zarr":
            rows = np.minimum((np.arange(height) + 0.5) * self.height / height, self.height - 1)
            cols = np.minimum((np.arange(width) + 0.5) * self.width / width, self.width - 1)
            array = _zarr_mask(self.path)
            # one chunk row at a time: orthogonal indexing would gather every chunk at once
            out = np.empty((height, width), dtype=array.dtype)
            r_idx, c_idx = rows.astype(np.int64), cols.astype(np.int64)
            ch = array.chunks[0]
            for start in range(0, self.height, ch):
                sel = np.nonzero((r_idx >= start) & (r_idx < start + ch))[0]
                if len(sel):
                    out[sel] = array.get_orthogonal_selection((r_idx[sel], c_idx))
            return out
        with open_dataset(self.path) as src:
            return src.read(1, out_shape=(height, width), resampling=Resampling.nearest)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(row_off, block)`` over the whole mask, one storage block (or chunk) at a time."""
        if self.kind == "zarr":
            array = _zarr_mask(self.path)
            ch, cw = array.chunks
            for r in range(0, self.height, ch):
                for c in range(0, self.width, cw):
                    yield r, np.asarray(array[r : r + ch, c : c + cw])
            return
        with open_dataset(self.path) as src:
            for _, window in src.block_windows(1):
                yield int(window.row_off), src.read(1, window=window)


def _zarr_mask(path: str) -> Any:
    import zarr

    return zarr.open_group(location(path).zarr_store(read_only=True), mode="r")["mask"]


def _open_view(path: str) -> _MaskView:
    if not is_remote(path) and not os.path.exists(path):
        raise InputNotFoundError(f"{path}: no such file or directory; check the mask path")
    mask = location(path)
    if mask.is_zarr():
        try:
            import zarr

            root: Any = zarr.open_group(mask.zarr_store(read_only=True), mode="r")
            facts: dict[str, Any] = dict(root.attrs[mask_format.ZARR_ATTRIBUTE])
            shape = root["mask"].shape
        except Exception as exc:  # zarr raises several unrelated types for a broken store
            raise InputError(f"{path}: not a tileseg Zarr mask ({exc}); pass a mask written by "
                             "predict") from None
        crs = rasterio.crs.CRS.from_wkt(facts["crs_wkt"]) if facts.get("crs_wkt") else None
        nodata = facts.get("nodata")
        return _MaskView(path, "zarr", int(shape[0]), int(shape[1]),
                         None if nodata is None else int(nodata), Affine(*facts["transform"][:6]),
                         crs)
    try:
        src = open_dataset(path)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{path}: not a raster GDAL can open; pass a mask written by predict") from None
    with src:
        if src.count != 1 or np.dtype(src.dtypes[0]).kind not in "ui":
            raise InputError(f"{path}: {src.count} band(s) of {src.dtypes[0]}; a preview needs a "
                             "class mask (one band of integer class ids)")
        return _MaskView(path, "gdal", src.height, src.width,
                         None if src.nodata is None else int(src.nodata), src.transform, src.crs)


# ------------------------------------------------------------------------------------------
# Areas
# ------------------------------------------------------------------------------------------


def _count(view: _MaskView, decimated: np.ndarray, valid: np.ndarray,
           method: AreaMethod) -> dict[int, float]:
    """Pixels per class in the whole mask (exact), or the decimated counts scaled (estimate).

    For a geographic CRS each pixel is weighted by its row's true area relative to the mask's
    mean pixel area, so the counts stay comparable and areas come out right.
    """
    row_weight = _row_weights(view)
    if method == "estimate":
        rows = np.nonzero(valid)[0]
        full_rows = ((rows + 0.5) * view.height / decimated.shape[0]).astype(np.int64)
        scale = view.height * view.width / decimated.size
        sums = _weighted_counts(decimated[valid], row_weight[np.minimum(full_rows,
                                                                        view.height - 1)])
        return {v: n * scale for v, n in sums.items()}
    totals: dict[int, float] = {}
    for row_off, block in view.blocks():
        ok = block != view.nodata if view.nodata is not None else np.ones(block.shape, bool)
        rows = row_off + np.nonzero(ok)[0]
        for v, n in _weighted_counts(block[ok], row_weight[rows]).items():
            totals[v] = totals.get(v, 0.0) + n
    return totals


def _weighted_counts(values: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    """Sum of ``weights`` per distinct value (any integer ids, negative or huge)."""
    if not len(values):
        return {}
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:  # masks from predict: direct
        sums = np.bincount(values, weights=weights)
        return {int(v): float(sums[v]) for v in np.nonzero(sums)[0]}
    ids, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=weights, minlength=len(ids))
    return {int(v): float(n) for v, n in zip(ids, sums, strict=True) if n > 0}


def _row_weights(view: _MaskView) -> np.ndarray:
    """Each mask row's pixel area over the mean pixel area (all ones unless geographic)."""
    if view.crs is None or not view.crs.is_geographic:
        return np.ones(view.height)
    areas = _geographic_row_areas(view)
    return areas / areas.mean()


def _geographic_row_areas(view: _MaskView) -> np.ndarray:
    # Area of a pixel row on the WGS84 ellipsoid between two latitudes: a^2/2 * dlon * |q2 - q1|
    # (q: the authalic-latitude function), taken at the middle column: exact for north-up masks,
    # close for slightly rotated ones.
    t = view.transform
    col = view.width / 2
    rows = np.arange(view.height + 1, dtype=np.float64)
    sin_lat = np.sin(np.radians(np.clip(t.d * col + t.e * rows + t.f, -90, 90)))
    e = math.sqrt(WGS84_F * (2 - WGS84_F))
    q = (1 - e * e) * (sin_lat / (1 - (e * sin_lat) ** 2)
                       - np.log((1 - e * sin_lat) / (1 + e * sin_lat)) / (2 * e))
    dlon = math.radians(math.hypot(t.a, t.d))
    return WGS84_A ** 2 / 2 * dlon * np.abs(np.diff(q))


def _mean_pixel_km2(view: _MaskView) -> tuple[float | None, bool]:
    """Mean pixel area in km² and whether it is approximate (geographic); None when unknown."""
    if view.crs is None:
        return None, False
    if view.crs.is_geographic:
        return float(_geographic_row_areas(view).mean()) / 1e6, True
    try:
        _, metres = view.crs.linear_units_factor
    except Exception:  # rasterio raises CRSError for units it cannot convert
        return None, False
    return abs(view.transform.determinant) * metres ** 2 / 1e6, False


def _areas(view: _MaskView, counts: dict[int, float],
           legend: Sequence[ClassInfo]) -> tuple[tuple[ClassArea, ...], bool]:
    pixel_km2, approximate = _mean_pixel_km2(view)
    total = sum(counts.values()) or 1.0
    by_id = {c.id: c for c in legend}
    areas = tuple(
        ClassArea(cid, by_id[cid].name, by_id[cid].color, int(round(n)),
                  None if pixel_km2 is None else n * pixel_km2, n / total)
        for cid, n in sorted(counts.items()))
    return areas, approximate


# ------------------------------------------------------------------------------------------
# Source image
# ------------------------------------------------------------------------------------------


def pick_bands(src: Any, bands: tuple[int, ...] | None) -> tuple[int, ...]:
    """RGB bands of ``src``: the given ones, else those tagged red/green/blue, else the first
    three, else band 1 (shown grey)."""
    if bands:
        if max(bands) > src.count:
            raise ConfigError(f"{src.name}: has {counted(src.count, 'band')}; bands {bands} is out "
                              "of range",
                              params=("bands",))
        return bands
    interp = list(src.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return tuple(interp.index(c) + 1 for c in wanted)
    return (1, 2, 3) if src.count >= 3 else (1,)


def render_source(path: str, view: _MaskView, shape: tuple[int, int],
                  bands: tuple[int, ...] | None) -> np.ndarray:
    """The source raster as 8-bit RGB on the mask's grid at ``shape``, 2-98 percentile stretch."""
    from rasterio.vrt import WarpedVRT

    if not is_remote(path) and not raster_exists(path):
        raise InputNotFoundError(f"{path}: no such file; check over", params=("over",))
    try:
        src = open_dataset(path)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{path}: not a raster GDAL can open; check over",
                         params=("over",)) from None
    with src:
        indexes = pick_bands(src, bands)
        same_grid = (src.height, src.width) == (view.height, view.width) and (
            src.transform.almost_equals(view.transform))
        if same_grid or view.crs is None or src.crs is None:
            data = src.read(indexes, out_shape=(len(indexes), *shape),
                            resampling=Resampling.nearest, masked=True)
        else:  # another grid: warp it onto the mask's, still one decimated read
            with WarpedVRT(src, crs=view.crs, transform=view.transform, width=view.width,
                           height=view.height, resampling=Resampling.nearest) as vrt:
                data = vrt.read(indexes, out_shape=(len(indexes), *shape),
                                resampling=Resampling.nearest, masked=True)
    return stretch(data)


def stretch(data: np.ma.MaskedArray) -> np.ndarray:
    """``(bands, h, w)`` to ``(h, w, 3)`` uint8, each band's 2nd-98th percentile to 0-255."""
    bands = np.ma.masked_invalid(data.astype(np.float64))
    out = np.empty((bands.shape[1], bands.shape[2], 3), np.uint8)
    for i in range(3):
        band = bands[i if bands.shape[0] == 3 else 0]
        values = band.compressed()
        if not len(values):
            out[..., i] = _NODATA_RGB[i]
            continue
        low, high = np.percentile(values, (2, 98))
        scaled = (band.filled(low) - low) / max(high - low, 1e-12) * 255
        channel = np.clip(scaled, 0, 255).round().astype(np.uint8)
        channel[np.ma.getmaskarray(band)] = _NODATA_RGB[i]
        out[..., i] = channel
    return out


# ------------------------------------------------------------------------------------------
# Legend
# ------------------------------------------------------------------------------------------


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType when it has FreeType
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def format_area(area: ClassArea, approximate: bool, unit: str = "km2") -> str:
    pct = f"{100 * area.share:.1f}%"
    if area.km2 is None:
        return pct
    value = f"{area.km2:,.2f}" if area.km2 < 1000 else f"{area.km2:,.0f}"
    return f"{'~' if approximate else ''}{value} {unit}  {pct}"


def _with_legend(picture: Any, areas: Sequence[ClassArea], width: int, config: PreviewConfig,
                 approximate: bool) -> Any:
    from PIL import Image, ImageDraw

    font = _font(13)
    unit = "km2"  # Pillow's bundled fonts have no superscript two
    line = 18
    # The largest classes that fit (title, "+N more" and 16 px margins aside), listed by id.
    fits = max(1, (config.size - 16 - 3 * line) // (2 * line))
    shown = sorted(areas, key=lambda a: -a.pixels)[:min(fits, _MAX_LEGEND_ROWS)]
    shown.sort(key=lambda a: a.id)
    hidden = len(areas) - len(shown)
    lines = 2 * len(shown) + 2 + (1 if hidden else 0)  # title, a name and an area per class
    height = min(config.size, max(picture.height, lines * line + 16))
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = picture.width + 10, 8
    if not areas:
        title = "no class pixels (all nodata)"
    elif areas[0].km2 is None:
        title = "class shares (no map units)"
    else:
        title = f"class areas ({config.areas})"
    draw.text((x, y), title, fill=(0, 0, 0), font=font)
    y += line + 4
    for area in shown:
        if y + line > height:
            hidden += 1
            continue
        draw.rectangle((x, y + 2, x + 14, y + 14), fill=area.color, outline=(60, 60, 60))
        draw.text((x + 20, y), area.name, fill=(0, 0, 0), font=font)
        y += line
        draw.text((x + 20, y), format_area(area, approximate, unit), fill=(70, 70, 70),
                  font=font)
        y += line
    if hidden:
        draw.text((x, min(y, height - line)), f"+{hidden} more classes", fill=(0, 0, 0),
                  font=font)
    return canvas
