"""Facts about a raster and the plan predict would follow, without running the model."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling

from tileseg.config import PredictConfig
from tileseg.grid import TileGrid
from tileseg.infer import default_batch_size, resolve_device
from tileseg.predict import make_plan
from tileseg.raster import RasterInfo, open_dataset


def crs_label(wkt: str | None) -> str:
    """``EPSG:32633 (WGS 84 / UTM zone 33N)`` when the CRS is that EPSG definition; a near match
    (same projection, datum not named, e.g. a GeoTIFF storing only parameters) says so."""
    if not wkt:
        return "none"
    crs = rasterio.crs.CRS.from_wkt(wkt)
    try:
        exact = crs.to_epsg(confidence_threshold=100)
        epsg = exact or crs.to_epsg(confidence_threshold=70)
    except rasterio.errors.CRSError:
        exact = epsg = None
    if not epsg:
        return f"{_wkt_name(wkt)} (no EPSG code)"
    code = f"EPSG:{epsg} ({_wkt_name(rasterio.crs.CRS.from_epsg(epsg).to_wkt())})"
    return code if exact else f"{_wkt_name(wkt)}, close to {code}"


def _wkt_name(wkt: str) -> str:
    match = re.match(r'\s*\w+\[\s*"([^"]*)"', wkt)
    return match.group(1) if match else "unnamed"


def validity_label(raster: RasterInfo) -> str:
    """Where the valid pixels come from: --nodata, the file's nodata value, its mask, or none."""
    if raster.nodata is not None:
        return f"--nodata {raster.nodata:g}"
    with open_dataset(raster.path) as src:
        nodata = src.nodata
        flags = [src.mask_flag_enums[i - 1] for i in raster.indexes]
    if nodata is not None:
        return f"nodata value {nodata:g} in the file"
    if any(MaskFlags.alpha in f for f in flags):
        return "alpha band"
    if any(MaskFlags.per_dataset in f for f in flags):
        return "internal mask"
    return "all (no nodata, no mask)"


def estimate_nodata_tiles(raster: RasterInfo, grid: TileGrid) -> set[tuple[int, int]]:
    """Tiles whose core is all nodata, from a decimated read of the mask (overviews if any)."""
    if not raster.has_mask:
        return set()
    stride = grid.stride
    # Sample each core with at least 8x8 mask pixels, but never read more than ~4 Mpixels.
    factor = max(1, min(stride // 8, math.ceil(math.sqrt(raster.height * raster.width / 4e6))))
    shape = (max(1, raster.height // factor), max(1, raster.width // factor))
    with open_dataset(raster.path) as src:
        masks = src.read_masks(raster.indexes, out_shape=(len(raster.indexes), *shape),
                               resampling=Resampling.nearest)
    valid = (masks != 0).all(axis=0)
    empty = set()
    for r, c in grid.tiles():
        block = valid[r * stride // factor : (r + 1) * stride // factor + 1,
                      c * stride // factor : (c + 1) * stride // factor + 1]
        if block.size and not np.any(block):
            empty.add((r, c))
    return empty


def count_batches(grid: TileGrid, skipped: set[tuple[int, int]], batch_size: int) -> int:
    """Batches predict runs: each chunk task batches its own tiles, so a chunk's last batch
    is usually a partial one."""
    total = 0
    for row, col in grid.chunks():
        tiles = sum(1 for t in grid.chunk_tiles_of(row, col) if t not in skipped)
        total += math.ceil(tiles / batch_size)
    return total


def describe(config: PredictConfig) -> dict[str, dict[str, Any]]:
    plan = make_plan(config)
    raster, grid = plan.raster, plan.grid
    t = raster.affine
    skipped = estimate_nodata_tiles(raster, grid)
    nodata_tiles = len(skipped)
    to_infer = grid.num_tiles - nodata_tiles
    # the batch size predict would use on this machine (4 on a CPU, from memory on a GPU)
    batch = config.batch_size or default_batch_size(resolve_device(config.device), plan.context)
    return {
        "raster": {
            "path": raster.path,
            "size (h x w)": f"{raster.height} x {raster.width}",
            "bands read": ",".join(str(i) for i in raster.indexes),
            "dtype": raster.dtype,
            "crs": crs_label(raster.crs_wkt),
            "pixel size": f"{math.hypot(t.a, t.d):g} x {math.hypot(t.b, t.e):g}",
            "rotated": bool(t.b or t.d),
            "internal block": f"{raster.block_shape[0]} x {raster.block_shape[1]}",
            "valid pixels": validity_label(raster),
        },
        "model": {
            "source": plan.model.source,
            "architecture": plan.model.architecture,
            "classes": ", ".join(plan.model.metadata.class_names),
            "input bands": plan.model.metadata.in_channels,
        },
        "plan": {
            "tile size": grid.tile_size,
            "overlap": grid.overlap,  # at least --overlap: the step is on the model's grid
            "overlap requested": config.overlap,
            "tile step": f"{grid.stride} (a multiple of the model's input multiple {grid.divisor})",
            "network input": f"{plan.context} x {plan.context}",
            "tiles (rows x cols)": f"{grid.num_tiles} ({grid.tile_rows} x {grid.tile_cols})",
            "nodata tiles skipped": nodata_tiles,
            "tiles to infer": to_infer,
            "batch size": batch,
            "batches": count_batches(grid, skipped, batch),
            "chunks": f"{grid.num_chunks} of {grid.chunk_size} px",
            "megapixels inferred": round(to_infer * plan.context**2 / 1e6, 1),
            "overhead vs raster": round(to_infer * plan.context**2 / (raster.height * raster.width), 2),
        },
    }
