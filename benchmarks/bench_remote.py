"""A run reading from and writing to object storage vs a local run (a benchmark, not a test).

One COG, one model, runs of ``predict`` in one process:
  * local file -> local Zarr;
  * the same COG on a real S3 API server (moto) on loopback, through a proxy that counts
    requests and bytes per bucket: S3 -> local Zarr (the reads alone), then S3 -> an ``s3://``
    Zarr (end to end: staging, spills, done markers, lock and the mask are objects too);
  * S3 -> S3 again with the proxy delaying every response (``--latency-ms``, 20 by default),
    which shows whether block reads and staging writes overlap (chunks in parallel) or queue up.

Reported per run: end-to-end tiles/s; for the source bucket, bytes fetched / COG size, GET
requests and requests per tile; for the destination bucket, requests and MiB uploaded and
downloaded per chunk (the staging traffic), with the requests by method below the table. The
loopback figures have no network latency or bandwidth limit (except the latency row): they
measure how much tileseg asks for, not how fast a real store answers.

    python benchmarks/bench_remote.py                     # 8192 x 8192, 1x1-conv model
    python benchmarks/bench_remote.py --size 2048 --encoder resnet18   # a real network
    python benchmarks/bench_remote.py --reads-only --chunk-size 4096   # fewer chunk borders

The default model is a per-pixel (1x1 convolution) model so the I/O dominates; with a real
encoder on CPU the model hides it.
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
from s3_server import Traffic, running_s3, s3_environment  # noqa: E402

from tileseg.config import PredictConfig  # noqa: E402
from tileseg.models.loaded import LoadedModel, ModelSpec, build_model, wrap_module  # noqa: E402
from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization  # noqa: E402
from tileseg.pipeline import predict  # noqa: E402

BUCKET = "tileseg-bench"
OUT_BUCKET = "tileseg-bench-out"


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


def run(src: str, dst: str, model: LoadedModel,
        args: argparse.Namespace) -> tuple[float, int, int]:
    config = PredictConfig(src=src, dst=dst, tile_size=args.tile_size, overlap=args.overlap,
                           chunk_size=args.chunk_size, batch_size=args.batch_size,
                           precision="fp32", format="zarr")
    started = time.perf_counter()
    result = predict(config, model=model)
    return time.perf_counter() - started, result.tiles_inferred, result.chunks


def repeated_heads(traffic: Traffic) -> int:
    """HEAD requests beyond the first on the same object (asked again within one run)."""
    heads = [path for method, path in traffic.log if method == "HEAD"]
    return len(heads) - len(set(heads))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--block", type=int, default=512, help="COG internal block size")
    p.add_argument("--encoder", help="smp encoder (default: a 1x1-conv model, I/O-bound)")
    p.add_argument("--tile-size", type=int, default=513)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--reads-only", action="store_true",
                   help="only the local run and S3 -> local Zarr (how much is read)")
    args = p.parse_args()
    s3_runs = [(0.0, False)] if args.reads_only else [(0.0, False), (0.0, True),
                                                      (args.latency_ms, True)]

    rows: list[tuple[str, float, int, int, Traffic | None, Traffic | None]] = []
    methods: list[str] = []
    overlaps: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cog = tmp / "scene.tif"
        make_cog(cog, args.size, args.block)
        size = cog.stat().st_size
        model = make_model(args.encoder)
        seconds, tiles, chunks = run(str(cog), str(tmp / "local.zarr"), model, args)
        rows.append(("local file -> local Zarr", seconds, tiles, chunks, None, None))
        for latency, s3_dst in s3_runs:
            with running_s3(delay_s=latency / 1000) as server, s3_environment(server):
                client = server.client()
                client.create_bucket(Bucket=BUCKET)
                client.create_bucket(Bucket=OUT_BUCKET)
                client.upload_file(str(cog), BUCKET, "scene.tif")
                server.traffic.reset()
                # moto's state outlives one server in this process: a new key per run
                dst = (f"s3://{OUT_BUCKET}/out-{len(rows)}.zarr" if s3_dst
                       else str(tmp / f"from-s3-{latency:g}.zarr"))
                seconds, tiles, chunks = run(f"s3://{BUCKET}/scene.tif", dst, model, args)
                name = (f"loopback S3 -> {'S3' if s3_dst else 'local'} Zarr"
                        + (f", +{latency:g} ms/response" if latency else ""))
                out = server.traffic.bucket(OUT_BUCKET) if s3_dst else None
                rows.append((name, seconds, tiles, chunks, server.traffic.bucket(BUCKET), out))
                overlaps.append(f"{name}: peak {server.traffic.peak_in_flight} requests in "
                                f"flight, {server.traffic.overlap:.1f} on average while busy")
                if out is not None:
                    methods.append(f"{name}: " + ", ".join(
                        f"{k} {v}" for k, v in sorted(out.requests.items()))
                        + f" (HEADs repeated on one object: {repeated_heads(out)})")

    print(f"\n{args.size}x{args.size} COG (3 x uint8, deflate, {args.block}-px blocks, "
          f"{size / 2**20:.1f} MiB), model: {args.encoder or '1x1 conv'}, tile {args.tile_size} "
          f"overlap {args.overlap}, chunk {args.chunk_size}, batch {args.batch_size}, CPU\n")
    print("| run | seconds | tiles/s | bytes fetched / COG size | GET requests | requests/tile "
          "| staging requests/chunk | MiB uploaded/chunk | MiB downloaded/chunk |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds, tiles, chunks, src, out in rows:
        read = ("- | - | -" if src is None else
                f"{src.bytes_out / size:.3f} | {src.gets} | {src.gets / tiles:.2f}")
        write = ("- | - | -" if out is None else
                 f"{sum(out.requests.values()) / chunks:.1f} | "
                 f"{out.bytes_in / 2**20 / chunks:.2f} | {out.bytes_out / 2**20 / chunks:.2f}")
        print(f"| {name} | {seconds:.1f} | {tiles / seconds:.2f} | {read} | {write} |")
    print(f"\n{rows[0][2]} tiles, {rows[0][3]} chunks."
          + (" Destination requests by method: " + "; ".join(methods) if methods else ""))
    print("Overlap of requests (1.0: one after another): " + "; ".join(overlaps))


if __name__ == "__main__":
    main()
