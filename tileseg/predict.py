"""``predict``: a raster in, a georeferenced class mask out, tile by tile, seam-free."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rasterio
from dask.base import tokenize

from tileseg.config import PredictConfig
from tileseg.errors import (
    ConfigError,
    InputError,
    ModelError,
    OutputError,
    RunError,
    TilesegError,
)
from tileseg.grid import TileGrid, aligned_overlap, chunk_tiles_for
from tileseg.model import LoadedModel, load_model
from tileseg.mosaic import Job, ModelRef, WorkDir, build_graph, register_model
from tileseg.outputs import (
    create_zarr,
    format_for,
    mark_zarr_complete,
    mask_dtype_for,
    zarr_to_geotiff,
)
from tileseg.progress import Progress, ProgressCallback
from tileseg.raster import RasterInfo, is_remote, open_dataset, open_raster
from tileseg.runlock import exclusive_run

if TYPE_CHECKING:
    from tileseg.vectorize import VectorizeResult

logger = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).parent / "models" / "landcover"
STAGING_SUFFIX = ".partial"


@dataclass(frozen=True)
class PredictResult:
    """What a run did; ``report`` is what ``--report`` writes."""

    dst: str
    zarr_path: str | None
    tiles_total: int
    tiles_inferred: int
    tiles_skipped_nodata: int
    chunks: int
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The raster, model and tiling plan of a run, before anything is computed."""

    raster: RasterInfo
    model: LoadedModel
    grid: TileGrid
    context: int


def default_model_path() -> Path:
    return BUNDLED_MODEL


def resolve_model(config: PredictConfig, raster: RasterInfo) -> tuple[LoadedModel, str]:
    path = config.model
    if path is None:
        if not (BUNDLED_MODEL / "config.json").is_file():
            raise ModelError("no --model given and no bundled model is installed; pass --model DIR")
        path = str(BUNDLED_MODEL)
        logger.warning(
            "no --model given: using the bundled land-cover model (Landsat, 7 classes; see "
            "tileseg/models/landcover/MODEL_CARD.md); it suits 30 m Landsat-like scenes only"
        )
    model = load_model(path, encoder_output_stride=config.encoder_output_stride,
                       decoder_atrous_rates=config.decoder_atrous_rates, raster_dtype=raster.dtype)
    return model, path


def check_model_fits(model: LoadedModel, raster: RasterInfo) -> None:
    meta = model.metadata
    if meta.in_channels != len(raster.indexes):
        raise ModelError(
            f"{raster.path}: has {len(raster.indexes)} bands (selected) but the model takes "
            f"{meta.in_channels}; choose bands with --bands (e.g. --bands "
            f"{','.join(str(i + 1) for i in range(meta.in_channels))})"
        )
    if meta.dtype is not None and meta.dtype != raster.dtype:
        raise ModelError(
            f"{raster.path}: dtype {raster.dtype} but the model was trained on {meta.dtype}; "
            f"convert the raster (gdal_translate -ot) or use a model for {raster.dtype}"
        )


def make_plan(config: PredictConfig, model: LoadedModel | None = None) -> Plan:
    """Open the raster and model and build the tiling plan (reads no pixels)."""
    raster = open_raster(config.src, bands=config.bands, nodata=config.nodata,
                         allow_no_crs=config.allow_no_crs)
    if model is None:
        model, _ = resolve_model(config, raster)
    check_model_fits(model, raster)
    # The tile step is rounded down to the model's input multiple so every network input
    # window sits on the phase a whole-raster pass would use (see tileseg.grid).
    overlap = aligned_overlap(config.tile_size, config.overlap, model.divisor)
    stride = config.tile_size - overlap
    grid = TileGrid(raster.height, raster.width, config.tile_size, overlap,
                    chunk_tiles_for(stride, config.chunk_size), divisor=model.divisor)
    return Plan(raster, model, grid, model.context_size(config.tile_size))


def has_valid_pixel(raster: RasterInfo) -> bool:
    """True as soon as one valid pixel is found, reading masks block row by block row."""
    from tileseg.grid import Rect
    from tileseg.raster import WindowReader

    if not raster.has_mask and not raster.dtype.startswith("float"):
        return True
    step = max(raster.block_shape[0], 256)
    with WindowReader(raster) as reader:
        for row in range(0, raster.height, step):
            rect = Rect(row, 0, min(step, raster.height - row), raster.width)
            if reader.read(rect)[1].any():
                return True
    return False


def _check_destination(config: PredictConfig, fmt: str) -> tuple[Path, Path]:
    dst = Path(config.dst)
    if is_remote(config.dst):
        raise OutputError(f"{config.dst}: remote outputs are not supported; write locally and copy")
    parent = dst.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{dst}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{dst}: folder {parent} is not writable; choose another destination")
    staging = dst.with_name(dst.name + STAGING_SUFFIX)
    if dst.exists() and not (config.overwrite or config.resume):
        raise OutputError(f"{dst}: already exists; pass --overwrite to replace it")
    if config.zarr_path and Path(config.zarr_path).exists() and not config.overwrite:
        raise OutputError(f"{config.zarr_path}: already exists; pass --overwrite to replace it")
    if config.vectorize:
        from tileseg.vectorize import format_for as vector_format_for

        vector_format_for(config.vectorize)
        if Path(config.vectorize).exists() and not config.overwrite:
            raise OutputError(f"{config.vectorize}: already exists; pass --overwrite to replace it")
    if fmt == "zarr" and config.zarr_path:
        raise OutputError("--zarr is for GeoTIFF destinations; the destination is already Zarr")
    return dst, staging


def _fingerprint(config: PredictConfig, raster: RasterInfo, model_source: str) -> str:
    """What must not change between a run and its --resume.

    The source's modification time is left out on purpose: repairing an unreadable block in
    place must not lock the run out of resuming (its size and raster facts still must match).
    """
    size = None if is_remote(raster.path) else os.stat(raster.path).st_size
    weights = [p for p in Path(model_source).glob("*") if p.is_file()] if model_source else []
    return tokenize(
        raster, size,
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights),
        config.tile_size, config.overlap, config.chunk_size, config.blend, config.precision,
        config.probabilities, config.encoder_output_stride, config.decoder_atrous_rates,
    )


def _source_mtime(raster: RasterInfo) -> int | None:
    """Newest modification time of the files GDAL reads for the raster: the file itself and,
    for a VRT or a raster with sidecars (.ovr, .msk), those too."""
    if is_remote(raster.path):
        return None
    try:
        with open_dataset(raster.path) as src:
            files = [f for f in src.files if not is_remote(f)] or [raster.path]
    except rasterio.errors.RasterioIOError:
        files = [raster.path]
    times = [os.stat(f).st_mtime_ns for f in files if os.path.exists(f)]
    return max(times) if times else None


def predict(
    config: PredictConfig,
    *,
    model: LoadedModel | None = None,
    progress: ProgressCallback | None = None,
    client: Any = None,
) -> PredictResult:
    """Segment ``config.src`` into a class mask at ``config.dst``.

    Parameters
    ----------
    config
        What to read, how to tile and infer, and where to write.
    model
        An already loaded model (for in-process runs); by default ``config.model`` is loaded,
        once per worker process.
    progress
        Called with a :class:`~tileseg.progress.Progress` as chunks finish.
    client
        A ``dask.distributed.Client`` to run on; by default ``config.scheduler`` decides
        (in-process threads when unset).

    Examples
    --------
    >>> result = predict(PredictConfig("scene.tif", "mask.tif", model="models/landcover"))  # doctest: +SKIP
    >>> result.tiles_inferred  # doctest: +SKIP
    """
    started = time.perf_counter()
    fmt = format_for(config.dst, config.format)
    dst, staging = _check_destination(config, fmt)
    raster = open_raster(config.src, bands=config.bands, nodata=config.nodata,
                         allow_no_crs=config.allow_no_crs)
    if model is not None:
        model_ref = ModelRef(key=register_model(model))
        model_source = ""
    else:
        model, model_source = resolve_model(config, raster)
        model_ref = ModelRef(path=str(Path(model_source).absolute()),
                             encoder_output_stride=config.encoder_output_stride,
                             decoder_atrous_rates=config.decoder_atrous_rates)
    plan = make_plan(config, model)
    grid = plan.grid
    _check_device(config)

    with exclusive_run(dst), (exclusive_run(Path(config.zarr_path)) if config.zarr_path
                              else contextlib.nullcontext()):
        # checked again under the lock: a run that just finished may have published dst
        _check_destination(config, fmt)
        if config.resume and dst.exists() and not staging.exists():
            logger.info("%s is already complete; nothing to resume", dst)
            return PredictResult(str(dst), config.zarr_path, grid.num_tiles, 0, 0, grid.num_chunks,
                                 0.0, {"status": "already complete"})
        fingerprint = _fingerprint(config, raster, model_source)
        zarr_store = staging / "mosaic.zarr"
        work = WorkDir(staging / "work")
        run_file = staging / "run.json"
        if staging.exists():
            if config.resume:
                try:
                    recorded = json.loads(run_file.read_text())
                    previous = recorded["fingerprint"]
                except (OSError, KeyError, json.JSONDecodeError):
                    recorded, previous = {}, None
                if previous != fingerprint:
                    raise RunError(
                        f"{staging}: left by a run with other inputs or options; rerun with the same "
                        "ones, or pass --overwrite to start over"
                    )
                if recorded.get("src_mtime_ns") != _source_mtime(raster):
                    logger.warning("%s changed since the interrupted run; finished chunks are kept "
                                   "as they were", raster.path)
            elif config.overwrite:
                shutil.rmtree(staging)
            else:
                raise OutputError(
                    f"{staging}: an interrupted run is in the way; pass --resume to continue it or "
                    "--overwrite to start over"
                )
        if not staging.exists():
            if not has_valid_pixel(raster):
                raise InputError(f"{raster.path}: every pixel is nodata; nothing to segment (check "
                                 "--nodata or the file's mask)")
            staging.mkdir()
            create_zarr(zarr_store, raster, model.metadata, chunk_size=grid.chunk_size,
                        probabilities=config.probabilities, source=raster.path)
            work.create()
            run_file.write_text(json.dumps({"fingerprint": fingerprint, "src": raster.path,
                                            "src_mtime_ns": _source_mtime(raster)}))
        resumed_chunks = sum(1 for r, c in grid.chunks() if work.is_done(r, c))

        mask_dtype, nodata = mask_dtype_for(model.metadata.num_classes)
        job = Job(
            raster=raster, grid=grid, model=model_ref, num_classes=model.metadata.num_classes,
            device=config.device, precision=config.precision, batch_size=config.batch_size,
            blend=config.blend, compile_model=config.compile_model,
            probabilities=config.probabilities, mask_dtype=mask_dtype.name, nodata=nodata,
            work_dir=str(work.path.absolute()), zarr_path=str(zarr_store.absolute()),
            engine=config.engine,
        )
        mosaic = build_graph(job)
        graph_built = time.perf_counter()
        logger.info("%d tiles in %d chunks (%d already done); graph of %d tasks", grid.num_tiles,
                    grid.num_chunks, resumed_chunks, len(mosaic.graph))

        totals = {"tiles": 0, "skipped": 0, "done_tiles": 0}
        engines: set[str] = set()  # as the workers resolved --engine
        tile_counts = {(r, c): len(grid.chunk_tiles_of(r, c)) for r, c in grid.chunks()}

        def on_result(result: dict[str, Any], kind: str) -> None:
            if kind == "infer":
                totals["tiles"] += result["tiles"]
                totals["skipped"] += result["skipped"]
                if "engine" in result:
                    engines.add(result["engine"])
            else:
                totals["done_tiles"] += tile_counts[tuple(result["chunk"])]  # type: ignore[index]
                if progress is not None:
                    progress(Progress(totals["done_tiles"], grid.num_tiles,
                                      time.perf_counter() - graph_built))

        from tileseg.scheduler import run_graph

        run_graph(mosaic, config.scheduler, config.workers, on_result, client=client,
                      device=config.device)
        computed = time.perf_counter()
        rss_compute = _peak_rss_mb()  # the peak so far: tiles, blending, Zarr chunks

        mark_zarr_complete(zarr_store, {"tiles": grid.num_tiles})
        zarr_out = None
        if fmt == "zarr":
            _publish(zarr_store, dst)
            zarr_out = str(dst)
        else:
            tif_tmp = staging / ("output" + (dst.suffix or ".tif"))
            zarr_to_geotiff(zarr_store, tif_tmp, cog=fmt == "cog", workdir=staging)
            _publish(tif_tmp, dst)
            if config.zarr_path:
                _publish(zarr_store, Path(config.zarr_path))
                zarr_out = config.zarr_path
        shutil.rmtree(staging, ignore_errors=True)
        finished = time.perf_counter()

        seconds = finished - started
        report = _report(config, plan, totals, started, graph_built, computed, finished,
                         resumed_chunks, model_source or "<in-process model>", len(mosaic.graph),
                         rss_compute, _cluster_address(config, client))
        report["engine"] = ",".join(sorted(engines)) or config.engine
        if report["scheduler"] in ("threads", "sync"):
            from tileseg.scheduler import default_workers

            report["workers"] = 1 if report["scheduler"] == "sync" else (
                config.workers or default_workers(config.device))
        result = PredictResult(str(dst), zarr_out, grid.num_tiles, totals["tiles"],
                               totals["skipped"], grid.num_chunks, seconds, report)
        if config.vectorize:
            polygons = _vectorize(result, config)
            report["vectorize"] = {"dst": polygons.dst, "features": polygons.features,
                                   "seconds": round(polygons.seconds, 3),
                                   "features_per_class": {polygons.class_names.get(k, str(k)): v
                                                          for k, v in polygons.counts.items()}}
        if config.report:
            Path(config.report).write_text(json.dumps(report, indent=2) + "\n")
        return result


def _check_device(config: PredictConfig) -> None:
    """Fail before anything is written: locally the device must exist, remotely parse."""
    import torch

    from tileseg.engine import resolve_engine
    from tileseg.infer import resolve_device, resolve_precision
    from tileseg.scheduler import scheduler_address

    if scheduler_address(config.scheduler) is None:
        device = resolve_device(config.device)
        autocast = resolve_precision(config.precision, device)
        resolve_engine(config.engine, device, autocast=autocast, compile_model=config.compile_model)
    elif config.device != "auto":
        try:
            torch.device(config.device)
        except RuntimeError as exc:
            raise ConfigError(f"--device {config.device!r} is not a torch device") from exc


def _publish(tmp: Path, dst: Path) -> None:
    """Move a finished output into place; the old one is removed only now (after success)."""
    if dst.exists():
        if dst.is_dir():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    os.replace(tmp, dst)


def _vectorize(result: PredictResult, config: PredictConfig) -> VectorizeResult:
    try:
        from tileseg.vectorize import VectorizeConfig, vectorize
    except ImportError as exc:
        raise TilesegError(f"--vectorize is unavailable ({exc})") from exc
    assert config.vectorize is not None
    # The Zarr carries probabilities when asked for, so polygons get their mean probability.
    source = result.zarr_path or result.dst
    return vectorize(source, config.vectorize, VectorizeConfig(
        overwrite=config.overwrite, allow_no_crs=config.allow_no_crs,
        scheduler=config.scheduler, workers=config.workers))


def _cluster_address(config: PredictConfig, client: Any) -> str | None:
    """Where the tasks ran: the given client's scheduler, the configured one, or None (here)."""
    from tileseg.scheduler import scheduler_address

    if client is not None:
        return str(client.scheduler.address)
    return scheduler_address(config.scheduler)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(
    config: PredictConfig, plan: Plan, totals: dict[str, int], started: float,
    graph_built: float, computed: float, finished: float, resumed_chunks: int,
    model_source: str, tasks: int, rss_compute: float, cluster: str | None,
) -> dict[str, Any]:
    import torch

    from tileseg.infer import resolve_device

    raster = plan.raster
    seconds = finished - started
    compute_s = max(computed - graph_built, 1e-9)
    device = resolve_device(config.device) if cluster is None else None
    area_km2 = raster.pixel_area * raster.height * raster.width / 1e6 if raster.crs_is_metric else None
    report: dict[str, Any] = {
        "src": raster.path,
        "dst": config.dst,
        "model": model_source,
        "raster": {"height": raster.height, "width": raster.width, "bands": len(raster.indexes),
                   "dtype": raster.dtype},
        "tiling": {"tile_size": config.tile_size, "overlap": plan.grid.overlap,
                   "overlap_requested": config.overlap, "context": plan.context,
                   "chunk_size": plan.grid.chunk_size,
                   "blend": config.blend},
        "tiles_total": plan.grid.num_tiles,
        "tiles_inferred": totals["tiles"],
        "tiles_skipped_nodata": totals["skipped"],
        "chunks": plan.grid.num_chunks,
        "chunks_resumed": resumed_chunks,
        "tasks": tasks,
        "seconds": {"setup": graph_built - started, "compute": compute_s,
                    "write": finished - computed, "total": seconds},
        "tiles_per_second": totals["tiles"] / compute_s,
        "km2_per_hour": (area_km2 / seconds * 3600) if area_km2 else None,
        "device": str(device) if device else f"dask cluster {cluster}",
        "precision": config.precision,
        "scheduler": cluster or config.scheduler or "threads",
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_mb_compute": rss_compute,  # before the GeoTIFF/COG pass
        "host": platform.node(),
    }
    if device is not None and device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return report
