"""Dask execution of ``predict`` (a benchmark, not a test).

Three measurements, printed as tables:

1. **Dry run of a huge plan**: the graph of a 200,000 x 200,000 raster (default tiling: 513 px
   tiles, 64 px overlap, 2048 px chunks) built without computing anything: task count, build
   time, pickled size.
2. **Throughput** on one generated raster with a small model (DeepLabV3+ resnet18): the
   in-process threads default vs ``LocalCluster`` with 1 and 2 worker processes (one thread
   each). Workers are warmed up first (model loaded), so the times are steady-state compute.
3. **Scheduler overhead per task**: the same graph shape (infer + finalize per chunk) with no-op
   task functions, on the threads, sync and distributed schedulers.

CPU (minutes):  python benchmarks/bench_dask.py --size 1536 --tile-size 256 --overlap 32 \
                    --chunk-size 512
GPU box:        python benchmarks/bench_dask.py --size 8192 --device cuda --gpu-workers 1
                (--gpu-workers N starts N worker processes with CUDA_VISIBLE_DEVICES=i and
                resources GPU=1 each, i.e. one worker per GPU, instead of CPU workers)
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))


def fake_raster(height: int, width: int, bands: int = 3) -> Any:
    from tileseg.sources.raster import RasterInfo

    return RasterInfo(path="/dry-run/huge.vrt", height=height, width=width, count=bands,
                      indexes=tuple(range(1, bands + 1)), dtype="uint8", crs_wkt=None,
                      transform=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0), nodata=None, has_mask=False,
                      block_shape=(512, 512), band_descriptions=(None,) * bands,
                      crs_is_metric=True)


def make_job(raster: Any, tile_size: int, overlap: int, chunk_size: int, work: str) -> Any:
    from tileseg.config import RuntimeConfig
    from tileseg.inference.mosaic import Job
    from tileseg.models.registry import ModelRef
    from tileseg.tiling.grid import TileGrid, chunk_tiles_for

    grid = TileGrid(raster.height, raster.width, tile_size, overlap,
                    chunk_tiles_for(tile_size - overlap, chunk_size))
    return Job(raster=raster, grid=grid, model=ModelRef(path="/dry-run/model"), num_classes=7,
               settings=RuntimeConfig(), blend="hann", probabilities="none", mask_dtype="uint8", nodata=255,
               work_dir=f"{work}/work", zarr_path=f"{work}/mosaic.zarr")


def dry_run(size: int, tile_size: int, overlap: int, chunk_size: int) -> list[tuple[str, str]]:
    from tileseg.inference.mosaic import build_graph

    started = time.perf_counter()
    job = make_job(fake_raster(size, size), tile_size, overlap, chunk_size, "/dry-run")
    planned = time.perf_counter()
    mosaic = build_graph(job)
    built = time.perf_counter()
    again = build_graph(job)
    blob = pickle.dumps(mosaic.graph, protocol=5)
    grid = job.grid
    return [
        ("raster", f"{size:,} x {size:,} px"),
        ("tiling", f"tile {tile_size}, overlap {overlap}, chunk {grid.chunk_side} px"),
        ("tiles", f"{grid.num_tiles:,}"),
        ("chunks", f"{grid.num_chunks:,} ({grid.chunk_rows} x {grid.chunk_cols})"),
        ("tasks", f"{len(mosaic.graph):,} (2 per chunk + 1 job key)"),
        ("plan (grid + job)", f"{(planned - started) * 1e3:.1f} ms"),
        ("graph build", f"{(built - planned):.3f} s"),
        ("deterministic names", str(list(mosaic.graph) == list(again.graph))),
        ("pickled graph", f"{len(blob) / 2**20:.1f} MiB"),
    ]


def make_inputs(folder: Path, size: int) -> tuple[Path, Path]:
    from bench_predict import make_model, make_raster

    src, model = folder / f"scene_{size}.tif", folder / "model"
    make_raster(src, size)
    make_model(model, "resnet18", 4)
    return src, model


def timed_predict(src: Path, model: Path, dst: Path, args: argparse.Namespace,
                  client: Any = None, workers: int | None = None) -> tuple[float, int]:
    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    config = PredictConfig(str(src), str(dst), model=str(model), tile_size=args.tile_size,
                           overlap=args.overlap, chunk_size=args.chunk_size, device=args.device,
                           batch_size=args.batch_size, workers=workers, overwrite=True)
    result = predict(config, client=client)
    return float(result.report["seconds"]["compute"]), result.tiles_inferred


def start_cluster(n: int, args: argparse.Namespace) -> Any:
    import distributed

    if args.gpu_workers:
        # One worker process per GPU, each seeing only its own card (what `dask worker
        # --resources GPU=1` with CUDA_VISIBLE_DEVICES does on a real fleet).
        from distributed import Nanny, Scheduler, SpecCluster

        workers = {
            f"gpu{i}": {"cls": Nanny, "options": {
                "nthreads": 2, "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
            for i in range(n)
        }
        cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": ":0"}})
    else:
        cluster = distributed.LocalCluster(n_workers=n, processes=True, threads_per_worker=1,
                                           dashboard_address=":0")
    return cluster, distributed.Client(cluster)


def throughput(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src, model = make_inputs(folder, args.size)
        warm = make_warmup_raster(folder)
        # In-process default: threads (2 unless --threads), model cached in this process.
        timed_predict(warm, model, folder / "w.tif", args, workers=args.threads)
        seconds, tiles = timed_predict(src, model, folder / "t.tif", args, workers=args.threads)
        rows.append((f"in-process threads ({args.threads or 2})", f"{tiles}", f"{seconds:.2f}",
                     f"{tiles / seconds:.1f}"))
        counts = [args.gpu_workers] if args.gpu_workers else [1, 2]
        for n in counts:
            cluster, client = start_cluster(n, args)
            try:
                # Warm every worker: each loads the model once (cached per process).
                timed_predict(warm, model, folder / "w.tif", args, client=client)
                seconds, tiles = timed_predict(src, model, folder / f"d{n}.tif", args,
                                               client=client)
            finally:
                client.close()
                cluster.close()
            label = f"{n} GPU worker(s)" if args.gpu_workers else f"{n} worker process(es) x 1 thread"
            rows.append((label, f"{tiles}", f"{seconds:.2f}", f"{tiles / seconds:.1f}"))
    return rows


def make_warmup_raster(folder: Path) -> Path:
    from bench_predict import make_raster

    warm = folder / "warm.tif"
    make_raster(warm, 768)
    return warm


def _noop_infer(job: Any, row: int, col: int) -> dict[str, Any]:
    return {"chunk": (row, col), "tiles": 0, "skipped": 0}


def _noop_finalize(job: Any, row: int, col: int, *deps: Any) -> dict[str, Any]:
    return {"chunk": (row, col)}


def overhead(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Seconds per task for the real graph shape with no-op tasks."""
    from tileseg.execution import run_graph
    from tileseg.inference.mosaic import MosaicGraph, build_graph, finalize_task, infer_task

    size = args.overhead_chunks * 64
    job = make_job(fake_raster(size, size), 64, 16, 64, "/unused")
    real = build_graph(job)
    swap = {infer_task: _noop_infer, finalize_task: _noop_finalize}
    graph = {k: (swap[v[0]], *v[1:]) if isinstance(v, tuple) and v[0] in swap else v
             for k, v in real.graph.items()}
    mosaic = MosaicGraph(graph, real.infer_keys, real.finalize_keys)
    tasks = len(real.infer_keys) + len(real.finalize_keys)
    rows = []

    def measure(label: str, **kw: Any) -> None:
        seen = [0]
        started = time.perf_counter()
        run_graph(mosaic, on_result=lambda r, k: seen.__setitem__(0, seen[0] + 1), **kw)
        seconds = time.perf_counter() - started
        assert seen[0] == tasks
        rows.append((label, f"{tasks:,}", f"{seconds:.2f}", f"{seconds / tasks * 1e3:.3f}"))

    measure("sync (one thread)", scheduler="sync", workers=None)
    measure("threads (2)", scheduler="threads", workers=2)
    import distributed

    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client.run(lambda: __import__("tileseg.inference.mosaic"))
        measure("distributed, 2 worker processes", scheduler=None, workers=None, client=client)
    return rows


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"\n{title}", "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1536, help="throughput raster side (px)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="in-process threads")
    parser.add_argument("--gpu-workers", type=int, default=0,
                        help="N: compare N one-GPU worker processes with the in-process default")
    parser.add_argument("--dry-size", type=int, default=200_000)
    parser.add_argument("--overhead-chunks", type=int, default=30,
                        help="no-op graph of N x N chunks (2 N^2 tasks)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["dry-run", "throughput", "overhead"])
    args = parser.parse_args()
    import torch

    print(f"host: {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads in this process; load average "
          f"{os.getloadavg()[0]:.1f}")
    if "dry-run" not in args.skip:
        rows = dry_run(args.dry_size, 513, 64, 2048)
        print(table("Dry run (graph only, nothing computed)", ("what", "value"), rows))
    if "throughput" not in args.skip:
        rows = throughput(args)
        print(table(f"Throughput: {args.size} x {args.size} px, DeepLabV3+ resnet18, tile "
                    f"{args.tile_size}, overlap {args.overlap}, chunk {args.chunk_size}, "
                    f"device {args.device}",
                    ("scheduler", "tiles", "compute s", "tiles/s"), rows))
    if "overhead" not in args.skip:
        rows = overhead(args)
        print(table("Scheduler overhead (no-op tasks, the real graph shape)",
                    ("scheduler", "tasks", "seconds", "ms/task"), rows))


if __name__ == "__main__":
    main()
