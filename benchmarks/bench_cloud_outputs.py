"""Writing the outputs to object storage vs a local disk (a benchmark, not a test).

One raster, one model, runs of ``predict`` in one process, the source a local COG each time:
  * DST a local Zarr (staging beside it);
  * DST an ``s3://`` Zarr on a real S3 API server (moto) on loopback, through a counting proxy:
    spills, done markers, the run record and the lock are objects under ``DST.partial/``;
  * the same with every response delayed (``--latency-ms``, 20 by default);
  * DST an ``s3://`` COG (built locally on the driver, uploaded once).

Reported: end-to-end tiles/s, requests and bytes uploaded in all and per chunk (the staging
traffic: spills + Zarr chunks + markers). Loopback: no network latency or bandwidth limit.

    python benchmarks/bench_cloud_outputs.py              # 8192 x 8192, as the issue asks
    python benchmarks/bench_cloud_outputs.py --size 2048  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from bench_remote import make_cog, make_model  # noqa: E402
from s3_server import running_s3, s3_environment  # noqa: E402

from tileseg.config import PredictConfig  # noqa: E402
from tileseg.pipeline import predict  # noqa: E402

BUCKET = "tileseg-bench-out"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--encoder", help="smp encoder (default: a 1x1-conv model, I/O-bound)")
    p.add_argument("--tile-size", type=int, default=513)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--latency-ms", type=float, default=20.0)
    args = p.parse_args()
    model = make_model(args.encoder)

    def run(dst: str) -> tuple[float, int, int]:
        config = PredictConfig(src=str(cog), dst=dst, tile_size=args.tile_size,
                               overlap=args.overlap, chunk_size=args.chunk_size, precision="fp32")
        started = time.perf_counter()
        result = predict(config, model=model)
        return time.perf_counter() - started, result.tiles_inferred, result.chunks

    rows = []
    methods: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cog = tmp / "scene.tif"
        make_cog(cog, args.size, 512)
        seconds, tiles, chunks = run(str(tmp / "local.zarr"))
        rows.append(("local Zarr", seconds, tiles, chunks, None))
        for latency, name in ((0.0, "out.zarr"), (args.latency_ms, "slow.zarr"),
                              (0.0, "out.tif")):
            with running_s3(delay_s=latency / 1000) as server, s3_environment(server):
                server.client().create_bucket(Bucket=BUCKET)
                server.traffic.reset()
                seconds, tiles, chunks = run(f"s3://{BUCKET}/{name}")
                traffic = server.traffic
                kind = "COG" if name.endswith(".tif") else "Zarr"
                rows.append((f"loopback S3 {kind}, +{latency:g} ms/response", seconds, tiles,
                             chunks, (sum(traffic.requests.values()), traffic.bytes_in)))
                methods.append(f"{name} +{latency:g} ms: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(traffic.requests.items())))

    print(f"\n{args.size}x{args.size} source (local COG), model: {args.encoder or '1x1 conv'}, "
          f"tile {args.tile_size} overlap {args.overlap}, chunk {args.chunk_size}, CPU\n")
    print("| DST | seconds | tiles/s | requests | requests/chunk | MiB uploaded | "
          "MiB uploaded/chunk |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, tiles, chunks, traffic in rows:
        if traffic is None:
            cells = "- | - | - | -"
        else:
            requests, nbytes = traffic
            cells = (f"{requests} | {requests / chunks:.1f} | {nbytes / 2**20:.1f} | "
                     f"{nbytes / 2**20 / chunks:.2f}")
        print(f"| {name} | {seconds:.1f} | {tiles / seconds:.2f} | {cells} |")
    print("\nrequests by method: " + "; ".join(methods))


if __name__ == "__main__":
    main()
