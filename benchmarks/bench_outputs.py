"""Benchmark: what each mask output costs to write, and what the preview/styles add.

Builds a synthetic SIZE x SIZE class mask as the tileseg Zarr that ``predict`` stages, then times
:func:`tileseg.outputs.mask_files.zarr_to_geotiff` as a COG and as a plain GeoTIFF (``--format cog`` vs
``gtiff``), the GDAL/QGIS style sidecars, and :func:`tileseg.preview.make_preview` from the COG
with exact and estimated class areas.

Usage::

    python benchmarks/bench_outputs.py               # 8192 x 8192
    python benchmarks/bench_outputs.py --size 4096
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 2048
CLASSES = 7


def make_zarr(path: Path, size: int) -> None:
    """A blocky, many-class mask (fields of 64-256 px), written chunk by chunk."""
    from rasterio.crs import CRS

    from tileseg.models.metadata import ModelMetadata
    from tileseg.outputs.mask_files import create_zarr, mark_zarr_complete
    from tileseg.sources.raster import RasterInfo

    crs = CRS.from_epsg(32631).to_wkt()
    raster = RasterInfo(str(path), size, size, 3, (1, 2, 3), "uint8", crs,
                        (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0), None, False, (512, 512),
                        (None, None, None), True)
    create_zarr(path, raster, ModelMetadata.default(CLASSES, 3, "uint8"), chunk_side=CHUNK,
                probabilities="none", source="synthetic")
    import zarr

    mask = zarr.open_group(str(path), mode="r+")["mask"]
    rng = np.random.default_rng(0)
    for r in range(0, size, CHUNK):
        for c in range(0, size, CHUNK):
            rows = (np.arange(r, min(r + CHUNK, size)) // 96)[:, None]
            cols = (np.arange(c, min(c + CHUNK, size)) // 160)[None, :]
            block = ((rows * 7919 + cols * 104729) % CLASSES).astype(np.uint8)
            noise = rng.random(block.shape) < 0.01
            block[noise] = rng.integers(0, CLASSES, int(noise.sum()))
            mask[r : r + block.shape[0], c : c + block.shape[1]] = block
    mark_zarr_complete(path, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    args = parser.parse_args()

    from tileseg.outputs.mask_files import zarr_to_geotiff
    from tileseg.outputs.styles import mask_legend, publish_raster_styles
    from tileseg.preview import PreviewConfig, make_preview

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = work / "mask.zarr"
        make_zarr(store, args.size)
        rows: list[tuple[str, float, str]] = []
        for fmt in ("cog", "gtiff"):
            dst = work / f"mask_{fmt}.tif"
            start = time.perf_counter()
            zarr_to_geotiff(store, dst, cog=fmt == "cog", workdir=work)
            rows.append((f"--format {fmt}", time.perf_counter() - start,
                         f"{dst.stat().st_size / 2**20:.1f} MiB"))
        cog = work / "mask_cog.tif"
        start = time.perf_counter()
        publish_raster_styles(cog, mask_legend(cog), workdir=work)
        rows.append(("styles (.aux.xml + .qml)", time.perf_counter() - start, ""))
        for areas in ("estimate", "exact"):
            start = time.perf_counter()
            result = make_preview(cog, work / f"p_{areas}.png",
                                  PreviewConfig(areas=areas))  # type: ignore[arg-type]
            rows.append((f"preview 1024 px, areas {areas}", time.perf_counter() - start,
                         f"{result.width}x{result.height}"))
        print(f"mask {args.size} x {args.size}, {CLASSES} classes, 2048-px Zarr chunks")
        print("| step | seconds | result |")
        print("|---|---|---|")
        for name, seconds, note in rows:
            print(f"| {name} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
