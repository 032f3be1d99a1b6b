"""Reading the raster from object storage vs a local file (a benchmark, not a test).

One COG, one model, three runs of ``predict`` in one process:
  * the local file;
  * the same COG on a real S3 API server (moto) on loopback, through a proxy that counts
    requests and response bytes;
  * the same with the proxy delaying every response (``--latency-ms``, 20 by default), which
    shows whether block reads overlap (chunks read in parallel) or queue up.

Reported per run: end-to-end tiles/s, bytes fetched / COG size, GET requests and requests per
tile. The loopback figures have no network latency or bandwidth limit: they measure how much
tileseg asks for, not how fast a real store answers.

    python benchmarks/bench_remote.py                     # 8192 x 8192, 1x1-conv model
    python benchmarks/bench_remote.py --size 2048 --encoder resnet18   # a real network

The default model is a per-pixel (1x1 convolution) model so the reads dominate; with a real
encoder on CPU the model hides the I/O.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import rasterio.shutil
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from s3_server import running_s3, s3_environment  # noqa: E402

from tileseg.config import PredictConfig  # noqa: E402
from tileseg.metadata import ClassInfo, ModelMetadata, Normalization  # noqa: E402
from tileseg.model import LoadedModel, ModelSpec, build_model, wrap_module  # noqa: E402
from tileseg.pipeline import predict  # noqa: E402

BUCKET = "tileseg-bench"


def make_cog(path: Path, size: int, block: int) -> None:
    """bench_predict's smooth 3-band raster, converted to a deflate COG."""
    from bench_predict import make_raster

    tmp = path.with_suffix(".src.tif")
    make_raster(tmp, size)
    rasterio.shutil.copy(tmp, path, driver="COG", blocksize=block, compress="deflate",
                         BIGTIFF="YES", overviews="NONE")
    tmp.unlink()


def make_model(encoder: str | None, classes: int = 4) -> LoadedModel:
    meta = ModelMetadata(classes=tuple(ClassInfo(i, f"c{i}", (40 * i, 40 * i, 40 * i))
                                       for i in range(classes)),
                         in_channels=3, dtype="uint8", normalization=Normalization(scale=(1 / 255,)))
    torch.manual_seed(0)
    if encoder is None:
        return wrap_module(torch.nn.Conv2d(3, classes, 1).eval(), meta)
    module = build_model(ModelSpec(encoder_name=encoder, in_channels=3, classes=classes))
    return wrap_module(module.eval(), meta)


def run(src: str, dst: Path, model: LoadedModel, args: argparse.Namespace) -> tuple[float, int]:
    config = PredictConfig(src=src, dst=str(dst), tile_size=args.tile_size, overlap=args.overlap,
                           batch_size=args.batch_size, precision="fp32", format="zarr")
    started = time.perf_counter()
    result = predict(config, model=model)
    return time.perf_counter() - started, result.tiles_inferred


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--block", type=int, default=512, help="COG internal block size")
    p.add_argument("--encoder", help="smp encoder (default: a 1x1-conv model, I/O-bound)")
    p.add_argument("--tile-size", type=int, default=513)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=20.0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cog = tmp / "scene.tif"
        make_cog(cog, args.size, args.block)
        size = cog.stat().st_size
        model = make_model(args.encoder)
        rows = []
        seconds, tiles = run(str(cog), tmp / "local.zarr", model, args)
        rows.append(("local file", seconds, tiles, None, None))
        for latency in (0.0, args.latency_ms):
            with running_s3(delay_s=latency / 1000) as server, s3_environment(server):
                client = server.client()
                client.create_bucket(Bucket=BUCKET)
                client.upload_file(str(cog), BUCKET, "scene.tif")
                server.traffic.reset()
                seconds, tiles = run(f"s3://{BUCKET}/scene.tif", tmp / f"s3-{latency}.zarr",
                                     model, args)
                rows.append((f"loopback S3, +{latency:g} ms/response", seconds, tiles,
                             server.traffic.bytes_out, server.traffic.gets))

    print(f"\n{args.size}x{args.size} COG (3 x uint8, deflate, {args.block}-px blocks, "
          f"{size / 2**20:.1f} MiB), model: {args.encoder or '1x1 conv'}, tile {args.tile_size} "
          f"overlap {args.overlap}, batch {args.batch_size}, CPU\n")
    print("| source | seconds | tiles/s | bytes fetched / COG size | GET requests | requests/tile |")
    print("|---|---|---|---|---|---|")
    for name, seconds, tiles, nbytes, gets in rows:
        ratio = "-" if nbytes is None else f"{nbytes / size:.3f}"
        per_tile = "-" if gets is None else f"{gets / tiles:.2f}"
        print(f"| {name} | {seconds:.1f} | {tiles / seconds:.2f} | {ratio} | "
              f"{'-' if gets is None else gets} | {per_tile} |")


if __name__ == "__main__":
    main()
