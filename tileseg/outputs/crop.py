"""Cutting an area of interest's output out of the window a run covered.

A run with an AOI covers a window a little larger than the AOI's bounds (so that its tiles are
the whole raster's, see :mod:`tileseg.scenes.aoi`); its Zarr is the window's. When the run is
done, the output Zarr is made on the AOI's bounds and filled from the window's, one output chunk
at a time (memory stays one chunk); GeoTIFF outputs are then written from it as usual.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tileseg.models.metadata import ModelMetadata
from tileseg.outputs.mask_files import create_zarr
from tileseg.outputs.store import zarr_store
from tileseg.sources.raster import RasterInfo
from tileseg.tiling.grid import Rect


def crop_zarr(src: str | os.PathLike[str], dst: str | os.PathLike[str], window: Rect,
              raster: RasterInfo, metadata: ModelMetadata, *, chunk_side: int,
              probabilities: str) -> None:
    """Create the Zarr ``dst`` on ``raster`` (the output's grid) and fill it with ``window``
    of the window's Zarr ``src``: the mask and, when kept, the probabilities."""
    import zarr

    create_zarr(dst, raster, metadata, chunk_side=chunk_side, probabilities=probabilities,
                source=raster.path)
    inside: Any = zarr.open_group(zarr_store(src, read_only=True), mode="r", zarr_format=3)
    out: Any = zarr.open_group(zarr_store(dst), mode="r+", zarr_format=3)
    names = ["mask"] + (["probabilities"] if probabilities != "none" else [])
    for name in names:
        source, target = inside[name], out[name]
        ch, cw = target.chunks[-2:]
        for r in range(0, window.height, ch):
            for c in range(0, window.width, cw):
                h, w = min(ch, window.height - r), min(cw, window.width - c)
                rows = slice(window.row_off + r, window.row_off + r + h)
                cols = slice(window.col_off + c, window.col_off + c + w)
                if name == "mask":
                    target[r : r + h, c : c + w] = np.asarray(source[rows, cols])
                else:
                    target[:, r : r + h, c : c + w] = np.asarray(source[:, rows, cols])
