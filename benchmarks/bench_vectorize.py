"""Benchmark: chunked (Dask) vs whole-mask vectorization of a large class mask.

Builds a synthetic SIZE x SIZE uint8 mask (one random disc of class 1-4 per 18x18-pixel cell, so
about a million objects at 20,000 x 20,000, many of them across chunk borders), stores it as a
tileseg Zarr, then runs each method in its own process and prints polygons/s, Mpix/s and peak RSS.

* whole-mask: the full mask in RAM, ``rasterio.features.shapes`` + shapely (the reference).
* chunked: :func:`tileseg.vectorization.polygonize` (threads scheduler), and the same plus writing
  GeoParquet with :func:`tileseg.vectorization.vectorize`.

Usage::

    python benchmarks/bench_vectorize.py                     # 20,000 x 20,000
    python benchmarks/bench_vectorize.py --size 4000         # quick run
    python benchmarks/bench_vectorize.py --whole-size 10000  # whole-mask on a smaller mask
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CELL = 18  # one object per CELL x CELL pixels: 20,000² / 18² ≈ 1.2 M discs, ≈ 1 M components
CHUNK = 2048
TRANSFORM = [1.0, 0.0, 500000.0, 0.0, -1.0, 5200000.0]


def make_mask(path: Path, size: int, seed: int = 0) -> None:
    """Write the synthetic mask chunk by chunk (never whole in RAM) as a tileseg Zarr."""
    import zarr
    from rasterio.crs import CRS

    cells = -(-size // CELL) + 2  # one spare ring of cells so edge discs may reach in
    rng = np.random.default_rng(seed)
    cy = (np.arange(cells)[:, None] - 1 + rng.random((cells, cells))) * CELL
    cx = (np.arange(cells)[None, :] - 1 + rng.random((cells, cells))) * CELL
    radius = rng.uniform(2.0, 7.5, (cells, cells))
    cls = rng.integers(1, 5, (cells, cells)).astype(np.uint8)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["tileseg"] = {
        "version": 1, "complete": True, "crs_wkt": CRS.from_epsg(32633).to_wkt(),
        "transform": TRANSFORM, "height": size, "width": size, "nodata": 255,
        "classes": [{"id": i, "name": n, "color": "#000000"} for i, n in
                    enumerate(["background", "water", "building", "forest", "road"])],
    }
    mask = root.create_array("mask", shape=(size, size), dtype=np.uint8, chunks=(CHUNK, CHUNK),
                             fill_value=255, dimension_names=("y", "x"))
    for r0 in range(0, size, CHUNK):
        for c0 in range(0, size, CHUNK):
            rows = np.arange(r0, min(r0 + CHUNK, size))[:, None]
            cols = np.arange(c0, min(c0 + CHUNK, size))[None, :]
            out = np.zeros((rows.shape[0], cols.shape[1]), dtype=np.uint8)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    i = rows // CELL + 1 + di
                    j = cols // CELL + 1 + dj
                    i, j = np.clip(i, 0, cells - 1), np.clip(j, 0, cells - 1)
                    inside = (rows - cy[i, j]) ** 2 + (cols - cx[i, j]) ** 2 <= radius[i, j] ** 2
                    out = np.where(inside & (out == 0), cls[i, j], out)
            mask[r0 : r0 + out.shape[0], c0 : c0 + out.shape[1]] = out


def run_whole(path: Path, size: int, connectivity: int) -> dict[str, float]:
    import rasterio.features
    import shapely
    import zarr
    from affine import Affine

    from tileseg.vectorization.polygons import shapes_to_polygons

    started = time.perf_counter()
    mask = np.asarray(zarr.open_array(str(path / "mask"), mode="r")[:size, :size])
    # Same GDAL polygonize and the same fast shapely conversion as the chunked path, so the
    # difference is chunking, labelling and merging only.
    array, _ = shapes_to_polygons(rasterio.features.shapes(
        mask, mask=(mask != 0) & (mask != 255), connectivity=connectivity,
        transform=Affine(*TRANSFORM)))
    bad = ~shapely.is_valid(array)
    array[bad] = shapely.make_valid(array[bad])
    return {"polygons": len(array), "seconds": time.perf_counter() - started}


def run_chunked(path: Path, connectivity: int, write: bool) -> dict[str, float]:
    from tileseg.vectorization import VectorizeConfig, polygonize, vectorize

    config = VectorizeConfig(connectivity=connectivity, workers=2)  # type: ignore[arg-type]
    started = time.perf_counter()
    if write:
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            result = vectorize(path, Path(tmp) / "polygons.parquet", config)
        count, merged = result.features, result.merged
    else:
        polys = polygonize(path, config)
        count, merged = len(polys), polys.merged
    return {"polygons": count, "merged": merged, "seconds": time.perf_counter() - started}


def _child(args: argparse.Namespace) -> None:
    path = Path(args.mask)
    if args.method == "whole":
        out = run_whole(path, args.size, args.connectivity)
    else:
        out = run_chunked(path, args.connectivity, write=args.method == "chunked+parquet")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def _measure(method: str, mask: Path, size: int, connectivity: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", method, "--mask", str(mask), "--size", str(size),
           "--connectivity", str(connectivity)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="mask side in pixels")
    parser.add_argument("--whole-size", type=int, help="side for the whole-mask run "
                        "(default: --size); a smaller one keeps it feasible on small machines")
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8)
    parser.add_argument("--workdir", help="keep the synthetic masks here and reuse them on the "
                        "next run (default: a temporary folder)")
    parser.add_argument("--child", dest="method", help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp)
        whole_size = args.whole_size or args.size
        rows = []
        for method, size in (("chunked", args.size), ("chunked+parquet", args.size),
                             ("whole", whole_size)):
            mask = folder / f"bench-mask-{size}.zarr"
            if not mask.exists():
                started = time.perf_counter()
                partial = mask.with_suffix(".partial")  # reused next time only once complete
                make_mask(partial, size)
                partial.rename(mask)
                print(f"mask {size} x {size} written in {time.perf_counter() - started:.0f} s",
                      file=sys.stderr)
            print(f"running {method} on {size} x {size}...", file=sys.stderr)
            rows.append((method, size, _measure(method, mask, size, args.connectivity)))
    header = (f"{'method':<16} {'size':>7} {'polygons':>10} {'seconds':>8} {'polygons/s':>11} "
              f"{'Mpix/s':>8} {'peak RSS MB':>12}")
    print(f"connectivity {args.connectivity}, chunks {CHUNK} x {CHUNK}, 2 threads for chunked")
    print(header)
    print("-" * len(header))
    for method, size, r in rows:
        print(f"{method:<16} {size:>7} {int(r['polygons']):>10} {r['seconds']:>8.1f} "
              f"{r['polygons'] / r['seconds']:>11.0f} {size * size / 1e6 / r['seconds']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f}")
    chunked = rows[0][2]
    whole_size, whole = rows[2][1], rows[2][2]
    if whole_size == args.size:
        print(f"same polygon count: {chunked['polygons'] == whole['polygons']}; "
              f"chunked/whole speed: {whole['seconds'] / chunked['seconds']:.2f}x, "
              f"peak memory: {chunked['peak_rss_mb'] / whole['peak_rss_mb']:.2f}x")
    else:
        speed = (args.size**2 / chunked["seconds"]) / (whole_size**2 / whole["seconds"])
        print(f"whole-mask measured on {whole_size} x {whole_size}; chunked/whole Mpix/s ratio: "
              f"{speed:.2f}x")


if __name__ == "__main__":
    main()
