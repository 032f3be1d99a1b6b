"""Throughput and memory of ``tileseg predict`` (a benchmark, not a test).

In one run, for one model, precision and batch size:
  * model-only tiles/s: random batches already on the device, forward pass only;
  * end-to-end tiles/s: ``predict`` on a generated tiled GeoTIFF (read, normalize, infer, blend,
    write Zarr, convert to COG), counting only inferred tiles;
  * peak host RSS of ``predict`` for two raster sizes, each in a fresh process.

GPU (as the issue asks):   python benchmarks/bench_predict.py --size 16384 --small 8192 \
                               --encoder resnet50 --precision bf16
CPU (about 2 minutes):     python benchmarks/bench_predict.py --size 8192 --small 4096 \
                               --encoder resnet18 --tile-size 256 --overlap 32 --batch-size 4

The smaller raster must hold at least as many chunks (2048 px) as there are worker threads;
otherwise fewer tasks run at once on it and the memory ratio measures concurrency, not size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine


def make_raster(path: Path, size: int, bands: int = 3) -> None:
    """A tiled, compressed uint8 GeoTIFF with smooth structure (written block row by block row)."""
    profile = dict(driver="GTiff", height=size, width=size, count=bands, dtype="uint8",
                   crs="EPSG:32631", transform=Affine(1, 0, 500000, 0, -1, 6000000),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="YES")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            yy, xx = np.mgrid[row : row + h, 0:size]
            base = (np.sin(xx / 97.0) + np.cos(yy / 131.0)) * 60 + 128
            for b in range(bands):
                noise = rng.integers(0, 30, (h, size))
                block = np.clip(base + noise + 10 * b, 0, 255).astype(np.uint8)
                dst.write(block, b + 1, window=rasterio.windows.Window(0, row, size, h))


def make_model(path: Path, encoder: str, classes: int) -> None:
    from tileseg.models.loaded import ModelSpec, build_model, save_model
    from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization

    torch.manual_seed(0)
    module = build_model(ModelSpec(encoder_name=encoder, in_channels=3, classes=classes))
    meta = ModelMetadata(classes=tuple(ClassInfo(i, f"c{i}", (i, i, i)) for i in range(classes)),
                         in_channels=3, dtype="uint8", normalization=Normalization(scale=(1 / 255,)))
    save_model(module, path, meta)


def model_only(model_dir: Path, args: argparse.Namespace) -> tuple[float, int, str]:
    from tileseg.inference.infer import make_runtime
    from tileseg.models.formats import load_model

    rt = make_runtime(load_model(model_dir), device=args.device, precision=args.precision,
                      batch_size=args.batch_size, tile_size=args.tile_size, overlap=args.overlap,
                      blend="hann", compile_model=args.compile, engine=args.engine,
                      from_directory=True)
    x = torch.randn(rt.batch_size, 3, rt.context, rt.context, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(args.warmup):
            rt.forward(x)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.batches):
            rt.forward(x)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return args.batches * rt.batch_size / seconds, rt.batch_size, f"{rt.device} ({rt.engine})"


def input_only(src: Path, model_dir: Path, args: argparse.Namespace, batch: int,
               decode_threads: str) -> float:
    """Tiles/s one reader thread delivers (read, decode, cut, stack; no model): the ceiling of
    the input side for one task. ``decode_threads`` is GDAL_NUM_THREADS for the reads."""
    from tileseg.config import DEFAULT_CHUNK_SIZE
    from tileseg.inference.infer import iter_batches
    from tileseg.models.formats import load_model
    from tileseg.sources.raster import WindowReader, open_raster
    from tileseg.tiling.grid import TileGrid, chunk_tiles_for

    previous = os.environ.get("GDAL_NUM_THREADS")
    os.environ["GDAL_NUM_THREADS"] = decode_threads
    try:
        raster = open_raster(src)
        context = load_model(model_dir).context_size(args.tile_size)
        stride = args.tile_size - args.overlap
        grid = TileGrid(raster.height, raster.width, tile_size=args.tile_size,
                        overlap=args.overlap, chunk_tiles=chunk_tiles_for(stride,
                                                                          DEFAULT_CHUNK_SIZE))
        tiles = 0
        start = time.perf_counter()
        for r, c in grid.chunks():
            with WindowReader(raster) as reader:
                for b in iter_batches(reader, grid, grid.chunk_tiles_of(r, c),
                                      grid.chunk_extent(r, c), context, batch, False):
                    tiles += len(b.offsets)
        return tiles / (time.perf_counter() - start)
    finally:
        if previous is None:
            os.environ.pop("GDAL_NUM_THREADS", None)
        else:
            os.environ["GDAL_NUM_THREADS"] = previous


def run_predict(src: Path, model_dir: Path, dst: Path, args: argparse.Namespace,
                batch_size: int) -> dict:
    """Run the CLI in a fresh process so its peak RSS is its own."""
    report = dst.with_suffix(".json")
    cmd = [sys.executable, "-m", "tileseg", "predict", str(src), str(dst),
           "--model", str(model_dir), "--tile-size", str(args.tile_size),
           "--overlap", str(args.overlap), "--precision", args.precision,
           "--batch-size", str(batch_size), "--device", args.device, "--report", str(report),
           "--engine", args.engine,
           "--overwrite", "-q"]
    if args.compile:
        cmd.append("--compile")
    subprocess.run(cmd, check=True)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="large raster side (px)")
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="inference engine, the same for model-only and end to end")
    # at least as many chunks as worker threads, or the memory ratio measures concurrency
    parser.add_argument("--small", type=int, default=4096, help="small raster side (px)")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--tile-size", type=int, default=513)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tileseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    make_model(model_dir, args.encoder, args.classes)
    rasters = {}
    for size in (args.small, args.size):
        path = work / f"scene_{size}.tif"
        if not path.exists():
            t = time.perf_counter()
            make_raster(path, size)
            print(f"generated {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rasters[size] = path

    only, batch, device = model_only(model_dir, args)
    read_mt = input_only(rasters[args.small], model_dir, args, batch, "ALL_CPUS")
    read_1 = input_only(rasters[args.small], model_dir, args, batch, "1")
    # the same pipeline for both sizes (GeoTIFF/COG output), so the memory ratio compares like
    # with like
    small = run_predict(rasters[args.small], model_dir, work / "small.tif", args, batch)
    large = run_predict(rasters[args.size], model_dir, work / "large.tif", args, batch)

    rows = [
        ("device", device),
        ("encoder / precision / batch", f"{args.encoder} / {args.precision} / {batch}"),
        ("tile / overlap / net input", f"{args.tile_size} / {args.overlap} / "
                                       f"{large['tiling']['context']}"),
        ("model-only tiles/s", f"{only:.2f}"),
        (f"input-only tiles/s, one reader ({args.small}^2; decode on all cores / one core)",
         f"{read_mt:.1f} / {read_1:.1f}"),
        (f"end-to-end tiles/s ({args.size}^2, compute)", f"{large['tiles_per_second']:.2f}"),
        (f"end-to-end tiles/s ({args.size}^2, incl. COG)",
         f"{large['tiles_inferred'] / large['seconds']['total']:.2f}"),
        ("end-to-end / model-only", f"{large['tiles_per_second'] / only:.2f}"),
        (f"tiles ({args.small}^2 / {args.size}^2)",
         f"{small['tiles_inferred']} / {large['tiles_inferred']}"),
        (f"peak RSS MB ({args.small}^2)", f"{small['peak_rss_mb']:.0f}"),
        (f"peak RSS MB ({args.size}^2)", f"{large['peak_rss_mb']:.0f}"),
        ("peak RSS large / small", f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}"),
        (f"peak RSS MB before the COG pass ({args.small}^2 / {args.size}^2)",
         f"{small['peak_rss_mb_compute']:.0f} / {large['peak_rss_mb_compute']:.0f}"),
    ]
    if "peak_gpu_mb" in large:
        rows.append(("peak GPU MB", f"{large['peak_gpu_mb']:.0f}"))
    width = max(len(k) for k, _ in rows)
    print("| measure".ljust(width + 2) + " | value |")
    print("|" + "-" * (width + 2) + "|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
