"""Output stores: the Zarr mosaic the tasks write into, and the GeoTIFF/COG made from it."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from tileseg.choices import OUTPUT_FORMATS, OutputFormat, check_choice
from tileseg.errors import OutputError
from tileseg.models.metadata import ModelMetadata
from tileseg.outputs import mask as mask_format
from tileseg.outputs.store import zarr_store
from tileseg.sources.datasets import open_dataset
from tileseg.sources.raster import RasterInfo

logger = logging.getLogger(__name__)

_EXTENSIONS: dict[str, OutputFormat] = {
    ".tif": "cog", ".tiff": "cog", ".gtiff": "gtiff", ".zarr": "zarr",
}


def format_for(path: str, explicit: str | None) -> OutputFormat:
    """The output format: ``explicit`` when given, else from the file extension."""
    if explicit:
        check_choice(explicit, OUTPUT_FORMATS, "format", error=OutputError)
        return explicit  # type: ignore[return-value]
    ext = Path(path.rstrip("/")).suffix.lower()
    if ext not in _EXTENSIONS:
        raise OutputError(
            f"{path}: cannot tell the output format from {ext or 'no extension'!r}; use .tif "
            "(COG) or .zarr, or name the format explicitly"
        )
    return _EXTENSIONS[ext]


def mask_dtype_for(num_classes: int) -> tuple[np.dtype[Any], int]:
    """Smallest unsigned dtype holding every class id plus a nodata value (its maximum)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        info = np.iinfo(dtype)
        if num_classes <= info.max:  # ids 0..n-1, and info.max left for nodata
            return np.dtype(dtype), int(info.max)
    raise OutputError(f"{num_classes} classes do not fit a uint32 mask")


def _gdal_geotransform(t: Affine) -> str:
    return " ".join(repr(float(v)) for v in t.to_gdal())


def create_zarr(
    path: str | os.PathLike[str],
    raster: RasterInfo,
    metadata: ModelMetadata,
    *,
    chunk_side: int,
    probabilities: str,
    source: str,
) -> None:
    """Create the Zarr v3 group (empty arrays + georeferencing) that the tasks fill chunk by chunk.

    ``chunk_side`` is the Zarr chunk side in pixels: the grid's actual chunk side
    (:attr:`tileseg.tiling.grid.TileGrid.chunk_side`), so that each task writes whole Zarr chunks.

    The layout opens georeferenced in xarray + rioxarray: ``mask(y, x)`` with a ``spatial_ref``
    grid mapping (``crs_wkt``, ``GeoTransform``), and ``x``/``y`` pixel-centre coordinates when the
    transform is not rotated. The ``tileseg`` group attribute repeats the facts as plain JSON and
    says whether the run completed.
    """
    import zarr

    mask_dtype, nodata = mask_dtype_for(metadata.num_classes)
    transform = raster.affine
    facts = mask_format.zarr_facts(
        crs_wkt=raster.crs_wkt, transform=list(transform), height=raster.height,
        width=raster.width, nodata=nodata, classes=metadata.classes, source=source)
    # tileseg's mark is in the root's first write: a store left by a run killed right after it
    # is still provably tileseg's (and incomplete), so overwrite may replace it
    root = zarr.open_group(zarr_store(path), mode="w", zarr_format=3,
                           attributes={mask_format.ZARR_ATTRIBUTE: facts})
    chunks = (min(chunk_side, raster.height), min(chunk_side, raster.width))
    grid_mapping = "spatial_ref"
    mask = root.create_array(
        "mask", shape=(raster.height, raster.width), dtype=mask_dtype, chunks=chunks,
        fill_value=nodata, dimension_names=("y", "x"),
    )
    mask.attrs.update({
        "grid_mapping": grid_mapping,
        "_FillValue": nodata,
        "long_name": "class id",
        "flag_values": list(range(metadata.num_classes)),
        "flag_meanings": " ".join(c.name.replace(" ", "_") for c in metadata.classes),
    })
    if probabilities != "none":
        pdtype = np.uint8 if probabilities == "uint8" else np.float16
        probs = root.create_array(
            "probabilities", shape=(metadata.num_classes, raster.height, raster.width),
            dtype=pdtype, chunks=(metadata.num_classes, *chunks), fill_value=0,
            dimension_names=("class", "y", "x"),
        )
        attrs: dict[str, Any] = {"grid_mapping": grid_mapping, "long_name": "class probability"}
        if probabilities == "uint8":
            attrs["scale_factor"] = 1.0 / 255.0
        probs.attrs.update(attrs)
        cls = root.create_array("class", shape=(metadata.num_classes,), dtype=np.int32,
                                chunks=(metadata.num_classes,), dimension_names=("class",))
        cls[:] = np.arange(metadata.num_classes, dtype=np.int32)
    ref = root.create_array("spatial_ref", shape=(), dtype=np.int32, fill_value=0,
                            dimension_names=())
    ref_attrs: dict[str, Any] = {"GeoTransform": _gdal_geotransform(transform)}
    if raster.crs_wkt:
        ref_attrs.update({"crs_wkt": raster.crs_wkt, "spatial_ref": raster.crs_wkt})
    ref.attrs.update(ref_attrs)
    if transform.b == 0 and transform.d == 0:
        xs = transform.c + transform.a * (np.arange(raster.width) + 0.5)
        ys = transform.f + transform.e * (np.arange(raster.height) + 0.5)
        for name, values in (("x", xs), ("y", ys)):
            arr = root.create_array(name, shape=values.shape, dtype=np.float64,
                                    chunks=(min(len(values), 1 << 20),), dimension_names=(name,))
            arr[:] = values
            arr.attrs["units"] = "metre" if raster.crs_is_metric else "unknown"


def mark_zarr_complete(path: str | os.PathLike[str], extra: dict[str, Any]) -> None:
    import zarr

    store = zarr_store(path)
    root: Any = zarr.open_group(store, mode="r+")
    mask_format.mark_complete(root, extra)
    # Consolidated metadata lets xarray open the store with one read; zarr warns that it is not
    # (yet) in the v3 spec, which is known and harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store)


def zarr_to_geotiff(
    zarr_path: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    cog: bool,
    workdir: str | os.PathLike[str],
) -> None:
    """Stream the Zarr mask into a tiled, compressed GeoTIFF (a COG when ``cog``), chunk by chunk.

    Carries nodata, a colour table, class names (``TILESEG_CLASSES`` tag and band description) and
    overviews (mode resampling, so class ids stay class ids).
    """
    import zarr

    root: Any = zarr.open_group(zarr_store(zarr_path, read_only=True), mode="r")
    facts = mask_format.read_facts(root) or {}
    mask = root["mask"]
    height, width = mask.shape
    dtype = np.dtype(mask.dtype)
    nodata = int(facts["nodata"])
    transform = Affine(*facts["transform"])
    crs = rasterio.crs.CRS.from_wkt(facts["crs_wkt"]) if facts.get("crs_wkt") else None
    plain = Path(workdir) / "mask.tif"
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": dtype.name,
        "crs": crs, "transform": transform, "nodata": nodata, "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }
    try:
        _write_geotiff(mask, plain, dst, profile, facts, cog=cog)
    except BaseException:  # a failed pass (a full disk) leaves no half-written file behind
        for path in (plain, Path(dst)):
            path.unlink(missing_ok=True)
        raise


def _write_geotiff(mask: Any, plain: Path, dst: str | os.PathLike[str], profile: dict[str, Any],
                   facts: dict[str, Any], *, cog: bool) -> None:
    height, width = mask.shape
    ch, cw = mask.chunks
    dtype = np.dtype(mask.dtype)
    nodata = int(profile["nodata"])
    classes = facts["classes"]
    with open_dataset(plain, "w", **profile) as out:  # quiet for --allow-no-crs rasters
        # before any pixel: libtiff cannot switch to a palette photometric once writing started
        if dtype.itemsize <= 2:
            out.write_colormap(1, mask_format.colormap(classes, nodata))
        for r0 in range(0, height, ch):
            for c0 in range(0, width, cw):
                block = np.asarray(mask[r0 : r0 + ch, c0 : c0 + cw])
                out.write(block, 1, window=Window(c0, r0, block.shape[1], block.shape[0]))
        out.update_tags(**mask_format.geotiff_tags(facts))
        out.set_band_description(1, "class")
        if not cog:
            factors = _overview_factors(height, width)
            if factors:
                out.build_overviews(factors, rasterio.enums.Resampling.mode)
                out.update_tags(ns="rio_overview", resampling="mode")
    if cog:
        rasterio.shutil.copy(
            str(plain), str(dst), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES",
            BLOCKSIZE=512, OVERVIEW_RESAMPLING="MODE", BIGTIFF="IF_SAFER",
        )
        plain.unlink()
    else:
        shutil.move(str(plain), str(dst))


def _overview_factors(height: int, width: int) -> list[int]:
    factors, f = [], 2
    while max(height, width) // f >= 256:
        factors.append(f)
        f *= 2
    return factors
