"""Facts about a raster and the plan predict would follow, without running the model."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling

from tileseg.config import PredictConfig
from tileseg.errors import ModelError, flag_for, flagged_message
from tileseg.plan import check_model_fits, make_plan
from tileseg.sources.raster import RasterInfo, open_source
from tileseg.tiling.grid import TileGrid


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


def validity_label(raster: RasterInfo, *, flags: bool = False) -> str:
    """Where the valid pixels come from: the ``nodata`` parameter (``--nodata`` with ``flags``),
    the file's nodata value, its mask, or none."""
    if raster.nodata is not None:
        return f"{flag_for('nodata') if flags else 'nodata'} {raster.nodata:g}"
    if raster.stack is not None:
        values = sorted({b.nodata for b in raster.stack.bands if b.nodata is not None})
        masked = any(s.mask_from_gdal for s in raster.stack.sources)
        parts = ([f"nodata value{'s' if len(values) > 1 else ''} "
                  f"{', '.join(f'{v:g}' for v in values)} in the files"] if values else [])
        parts += ["the files' masks"] if masked else []
        return " and ".join(parts) or "all (no nodata, no mask)"
    with open_source(raster) as src:
        nodata = src.nodata
        mask_flags = [src.mask_flag_enums[i - 1] for i in raster.indexes]
    if nodata is not None:
        return f"nodata value {nodata:g} in the file"
    if any(MaskFlags.alpha in f for f in mask_flags):
        return "alpha band"
    if any(MaskFlags.per_dataset in f for f in mask_flags):
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
    with open_source(raster) as src:
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


def describe(config: PredictConfig, *, flags: bool = False) -> dict[str, Any]:
    """The raster's facts, the model and predict's plan, as JSON-ready values.

    Keys are snake_case, numbers are numbers and sizes are ``[height, width]``. A model that
    does not take the raster (band count, lossy dtype) is not an error here: its reason is in
    ``warnings``, and the raster facts and plan are still given. Texts name parameters as
    Python does (``nodata``), or as command-line flags (``--nodata``) with ``flags``.
    """
    from tileseg.inference.device import default_batch_size, resolve_device

    plan = make_plan(config, check_fits=False, note_resolution=False)
    raster, grid = plan.raster, plan.grid
    warnings: list[str] = []
    try:
        check_model_fits(plan.model, raster)
    except ModelError as exc:
        warnings.append(flagged_message(exc) if flags else str(exc))
    from tileseg.scenes import gsd_note, pixel_size_m

    note = gsd_note(raster, plan.model.metadata.gsd, flags=flags)
    if note is not None and config.resolution != "model":
        warnings.append(note)
    t = raster.affine
    skipped = estimate_nodata_tiles(raster, grid)
    nodata_tiles = len(skipped)
    to_infer = grid.num_tiles - nodata_tiles
    # the batch predict would use here (the --device default, auto)
    batch = config.batch_size or default_batch_size(resolve_device(config.device), plan.context)
    meta = plan.model.metadata
    return {
        "raster": {
            "path": raster.path,
            "size": [raster.height, raster.width],
            "bands": raster.count,
            "bands_read": (list(raster.band_descriptions) if raster.stack is not None
                           else list(raster.indexes)),
            "dtype": raster.dtype,
            "crs": crs_label(raster.crs_wkt),
            "pixel_size": [math.hypot(t.b, t.e), math.hypot(t.a, t.d)],
            "rotated": bool(t.b or t.d),
            "internal_block": list(raster.block_shape),
            "valid_pixels": validity_label(raster, flags=flags),
            **_scene_facts(raster, plan, pixel_size_m(raster)),
        },
        "model": {
            "source": plan.model.source,
            "format": plan.model.format,
            "architecture": plan.model.architecture,
            "classes": list(meta.class_names),
            "input_bands": meta.in_channels,
            "band_names": list(meta.bands),
            "dtype": meta.dtype,
            "gsd": meta.gsd,  # the pixel size (m) the model was trained at, if it says
        },
        "plan": {
            "tile_size": grid.tile_size,
            "overlap": grid.overlap,  # at least the one asked for: the step is on the model's grid
            "overlap_requested": config.overlap,
            "tile_step": grid.stride,
            "network_input": [plan.context, plan.context],
            "tiles": grid.num_tiles,
            "tile_grid": [grid.tile_rows, grid.tile_cols],
            "nodata_tiles_skipped": nodata_tiles,
            "tiles_to_infer": to_infer,
            "batch_size": batch,
            "batches": count_batches(grid, skipped, batch),
            "chunks": grid.num_chunks,
            "chunk_size": grid.chunk_side,  # whole cores: the side the chunks get
            "chunk_size_requested": config.chunk_size,
            "megapixels_inferred": round(to_infer * plan.context**2 / 1e6, 1),
            "overhead_vs_raster": round(to_infer * plan.context**2 / (raster.height * raster.width), 2),
        },
        "warnings": warnings,
    }


def _scene_facts(raster: RasterInfo, plan: Any, pixel_m: float | None) -> dict[str, Any]:
    """For a stack of files or a STAC item: which file each band is read from and how it
    reaches the grid; for every raster, its pixel size in metres when known."""
    out: dict[str, Any] = {"pixel_size_m": None if pixel_m is None else round(pixel_m, 6)}
    if plan.item is not None:
        out["stac_item"] = plan.item.label
    spec = raster.stack
    if spec is None:
        return out
    out["band_sources"] = [
        f"{b.name}: {spec.sources[b.source].href}"
        + (f" (resampled, {b.resampling})" if b.resampling else "")
        for b in spec.bands]
    return out
