"""``predict``: a raster in, a georeferenced class mask out, tile by tile, seam-free."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dask.base import tokenize

from tileseg.config import PredictConfig
from tileseg.errors import (
    ConfigError,
    DamagedInputError,
    InputError,
    RunError,
    SourceChangedError,
)
from tileseg.execution import Scheduler, open_client, resolve_mosaic_scheduler, run_mosaic
from tileseg.inference.mosaic import SUMS_FORMAT, Job, build_graph
from tileseg.memory import check_memory
from tileseg.models.loaded import LoadedModel
from tileseg.models.registry import ModelRef, hand_over, model_files, register_model
from tileseg.outputs.diskspace import full_disk_as_error
from tileseg.outputs.location import location
from tileseg.outputs.mask_files import (
    create_zarr,
    format_for,
    mark_zarr_complete,
    mask_dtype_for,
    zarr_to_geotiff,
)
from tileseg.outputs.ownership import is_report
from tileseg.outputs.paths import check_distinct_paths
from tileseg.outputs.staging import Staging
from tileseg.outputs.styles import publish_raster_styles
from tileseg.outputs.workdir import open_work_dir
from tileseg.plan import Plan, make_plan, model_hint, open_scene, resolve_model, warn_resolution
from tileseg.progress import ProgressCallback, listen_tiles
from tileseg.run_report import RunReport, Tally, Timings, peak_rss_mb
from tileseg.scenes import is_item_source
from tileseg.sources.pinning import SourceVersion
from tileseg.sources.raster import RasterInfo, release_datasets
from tileseg.sources.remote import is_remote
from tileseg.sources.subdatasets import local_file
from tileseg.text import counted

if TYPE_CHECKING:
    from tileseg.vectorization import VectorizeResult

logger = logging.getLogger(__name__)

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
    tiles_skipped_aoi: int = 0  # tiles with no pixel in the area of interest, never inferred
    stac_item: str | None = None  # the output's STAC item, when written


def has_valid_pixel(raster: RasterInfo, run: str | None = None) -> bool:
    """True as soon as one valid pixel is found, reading masks block row by block row.

    ``run``: the run's id; the open raster (and the blocks it read) is then handed on to the
    run's first chunk task in this process, which reads those blocks again."""
    from tileseg.sources.raster import WindowReader
    from tileseg.tiling.grid import Rect

    if not raster.has_mask and not raster.dtype.startswith("float"):
        return True
    if raster.stack is not None:
        from tileseg.scenes import overview_has_valid_pixel

        if overview_has_valid_pixel(raster):  # a cheap yes; a no is checked in full below
            return True
    step = max(raster.block_shape[0], 256)
    with WindowReader(raster, run) as reader:
        for row in range(0, raster.height, step):
            rect = Rect(row, 0, min(step, raster.height - row), raster.width)
            if reader.read(rect)[1].any():
                return True
    return False


def _check_paths(config: PredictConfig) -> None:
    """Every path the run reads or writes, pairwise: none the same file as, or inside, another
    (exit 2), so no output can replace an input, before anything is written."""
    from tileseg.scenes import source_files

    check_distinct_paths(
        {"SRC": source_files(config.src),
         "DST": config.dst, "preview": config.preview, "zarr_path": config.zarr_path,
         "vectorize": config.vectorize, "report": config.report, "model": config.model,
         "aoi": config.aoi if config.aoi and Path(config.aoi).exists() else None,
         "stac_item": stac_item_path(config)},
        read_only=("SRC", "model", "aoi"),
    )


def _check_store_keys(config: PredictConfig) -> None:
    """No output on a store is a bucket root (exit 4), before any request and before the
    format is told from a key that a root does not have."""
    location(config.dst).require_name()
    for name, url in (("zarr_path", config.zarr_path), ("report", config.report),
                      ("vectorize", config.vectorize), ("preview", config.preview)):
        if url:
            location(url).require_name(f"{name} path", params=(name,))


def stac_item_path(config: PredictConfig) -> str | None:
    """Where the output's STAC item goes, or None when it is not written."""
    if not config.stac_item:
        return None
    from tileseg.outputs.stac_item import item_path

    return item_path(config.dst)


def _check_outputs(config: PredictConfig, fmt: str, staging: Staging) -> None:
    """Every destination can be written, and what exists there may be replaced (exit 4)."""
    location(config.dst).check_folder("destination")
    if fmt == "zarr" and config.zarr_path:
        raise ConfigError("zarr_path is for GeoTIFF destinations; the destination is already Zarr",
                          params=("zarr_path",))
    if config.probabilities != "none" and fmt != "zarr" and not config.zarr_path:
        raise ConfigError(f"probabilities {config.probabilities} is stored in the Zarr mosaic "
                          "only; add zarr_path PATH to keep it, or write DST as .zarr",
                          params=("probabilities", "zarr_path"))
    if config.zarr_path:
        location(config.zarr_path).check_folder("zarr_path path", params=("zarr_path",))
    staging.check(overwrite=config.overwrite, resume=config.resume)
    if config.vectorize:
        from tileseg.vectorization import check_destination as check_vector_destination

        location(config.vectorize).check_folder("vectorize path", params=("vectorize",))
        # before the run: --overwrite replaces only a layer tileseg wrote (its marker)
        check_vector_destination(config.vectorize, config.overwrite)
    if config.preview:
        from tileseg.preview import check_preview_destination

        check_preview_destination(config.preview, config.overwrite)
    if config.report:
        _check_report(config.report, config)
    item = stac_item_path(config)
    if item is not None:
        from tileseg.outputs.stac_item import check_item_destination

        location(item).check_folder("STAC item path", params=("stac_item",))
        check_item_destination(item)


def _check_report(path: str, config: PredictConfig) -> None:
    """``--report`` replaces only a tileseg report, and only with --overwrite (or --resume)."""
    location(path).check_replaceable(
        overwrite=config.overwrite or config.resume, owned=is_report,
        foreign=(f"{path}: exists and was not written by tileseg (no tileseg marker key), so "
                 "overwrite does not replace it; move it away or choose another report path"),
        what="report path", params=("report",))


def _fingerprint(config: PredictConfig, raster: RasterInfo, model_source: str,
                 model: LoadedModel | None = None, aoi: Any = None) -> str:
    """What must not change between a run and its --resume.

    The source's version (modification time, ETag) is left out on purpose: it is compared on
    its own (:func:`_check_source`), which names what changed and lets a file repaired in place
    after a damaged block resume. Its size and raster facts must match here too.
    The model counts by its files (every one it was read from: a checkpoint and the
    tileseg.json beside it, an MLM item and its artifact) and its format facts, and the
    test-time augmentation with it.
    """
    if raster.stack is not None:  # every local file of the stack
        size: Any = tuple(None if is_remote(f) else os.stat(f).st_size
                          for f in raster.stack.hrefs)
    else:
        file = local_file(raster.path)  # a subdataset's (NETCDF:"scene.nc":ndvi) is scene.nc
        size = None if is_remote(file) else os.stat(file).st_size
    weights = [p for p in Path(model_source).glob("*") if p.is_file()] if model_source else []
    if model is not None and model.files:
        weights = [Path(f) for f in model.files]
    # names, not paths: the same model given by another path (relative, absolute) resumes
    facts = (None if model is None else
             (model.format, model.architecture, model.divisor, model.input_size,
              model.item is not None, config.architecture, config.encoder_name))
    return tokenize(
        replace(raster, version=None), size, aoi,
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights),
        config.tile_size, config.overlap, config.chunk_size, config.blend, config.precision,
        config.probabilities, config.encoder_output_stride, config.decoder_atrous_rates,
        SUMS_FORMAT, config.tta, facts,
    )


def _check_source(raster: RasterInfo, recorded: dict[str, Any]) -> bool:
    """On ``--resume``: the source is the version the interrupted run read, else
    :class:`SourceChangedError` naming what changed. One exception: a run that stopped on a
    damaged block (``source_damaged`` in its record) may go on with the file repaired in place
    (same sizes); True then, and the repaired version is what the run reads from now on."""
    before = SourceVersion.from_record(recorded.get("source"))
    now = raster.version
    if before is None or now is None:
        return False
    change = now.change_from(before)
    if change is None:
        return False
    if recorded.get("source_damaged") and now.same_sizes(before):
        logger.warning("%s changed since the interrupted run, which stopped on a damaged block "
                       "(%s): taken as repaired; the finished chunks are kept", raster.path, change)
        return True
    raise SourceChangedError(
        f"{raster.path}: changed since the interrupted run ({change}), so its finished chunks "
        "and the rest would come from two versions; restore it, or pass overwrite to start "
        "over", params=("overwrite",))


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
        Called with a :class:`~tileseg.progress.Progress` as tiles are inferred (after each
        batch), from the thread that inferred them (or the cluster client's); whatever it
        raises (``KeyboardInterrupt`` to stop) is raised here once that chunk is saved.
    client
        A ``dask.distributed.Client`` to run on, or the :class:`~tileseg.execution.Scheduler`
        a caller resolved already (a batch hands its own to every scene); by default
        ``config.scheduler`` is resolved (in-process threads when unset).

    Examples
    --------
    >>> result = predict(PredictConfig("scene.tif", "mask.tif", model="models/landcover"))  # doctest: +SKIP
    >>> result.tiles_inferred  # doctest: +SKIP
    """
    started = time.perf_counter()
    _check_store_keys(config)
    fmt = format_for(config.dst, config.format)
    _check_paths(config)
    staging = location(config.dst).staging(config.zarr_path, zarr_dst=fmt == "zarr")
    _check_outputs(config, fmt, staging)
    # resolved once, here; everything below is handed this one
    scheduler = resolve_mosaic_scheduler(client if client is not None else config.scheduler)
    plan = _plan_run(config, model, scheduler)
    if not scheduler.is_distributed:
        check_memory(config, plan)
    else:
        from tileseg.execution import no_worker_timeout

        no_worker_timeout()  # a setting that is not a duration: exit 2 before any staging
    fingerprint = _fingerprint(config, plan.raster, plan.model_source, plan.model,
                               plan.aoi.mask if plan.aoi is not None else None)

    # the cluster is reached before anything is written: unreachable is exit 2, nothing staged
    with open_client(scheduler) as run_client, staging.lock():
        # checked again under the lock: a run that just finished may have published dst
        _check_outputs(config, fmt, staging)
        if config.resume and staging.finished(fingerprint):
            logger.info("%s is already complete; nothing to resume", config.dst)
            return PredictResult(config.dst, config.zarr_path, plan.grid.num_tiles, 0, 0,
                                 plan.grid.num_chunks, 0.0, {"status": "already complete"})
        run = uuid.uuid4().hex
        _stage(config, plan, staging, fingerprint, run)
        job = _job(config, plan, staging, run)
        mosaic = build_graph(job)
        timings = Timings(started, graph_built=time.perf_counter())
        tally = Tally.for_run(plan, open_work_dir(staging.work_path), progress,
                              timings.graph_built, resuming=config.resume)
        logger.info("%s in %s (%d already done); graph of %s",
                    counted(plan.grid.num_tiles, "tile"), counted(plan.grid.num_chunks, "chunk"),
                    tally.chunks_done_before, counted(len(mosaic.graph), "task"))
        try:
            # tiles count as they are inferred, not when their chunk is written: the bar moves
            with listen_tiles(job.run, tally.on_tiles, run_client):
                run_mosaic(mosaic, scheduler, tally.on_result, client=run_client,
                           workers=config.workers, device=config.device)
        except DamagedInputError:
            # its --resume may go on with the file repaired in place (_check_source)
            _note(staging, {"source_damaged": True})
            raise
        finally:  # worker processes close theirs when idle (tileseg.sources.raster._DatasetPool)
            release_datasets(job.run)
        timings.computed, timings.rss_compute_mb = time.perf_counter(), peak_rss_mb()
        _check_one_runtime(config, tally)
        zarr_out = _publish(config, plan, fmt, staging, fingerprint, tally)
        timings.finished = time.perf_counter()
        report = RunReport(config, plan, tally, timings,
                           plan.model_source or "<in-process model>", len(mosaic.graph),
                           _cluster_address(scheduler, run_client), scheduler.kind).to_json()
        result = PredictResult(config.dst, zarr_out, plan.grid.num_tiles, tally.tiles,
                               tally.skipped, plan.grid.num_chunks,
                               timings.finished - timings.started, report,
                               tiles_skipped_aoi=tally.skipped_aoi,
                               stac_item=stac_item_path(config))
        _follow_ups(result, config, plan, fingerprint, scheduler, run_client)
        return result


def _check_one_runtime(config: PredictConfig, tally: Tally) -> None:
    """Refuse to publish a mask whose chunks came from runtimes whose logits differ (an
    interrupted run resumed on another device or engine, with ``auto`` resolving otherwise):
    the staging stays, to be resumed with the interrupted run's settings."""
    if len(tally.runtimes) > 1:
        raise RunError(
            f"{config.dst}: the chunks of this mask were inferred by different runtimes "
            f"({'; '.join(sorted(tally.runtimes))}), whose logits differ; resume with the "
            "engine, device and precision of the interrupted run, or pass overwrite to start "
            "over", params=("resume", "engine", "device", "precision", "overwrite"))


def _plan_run(config: PredictConfig, model: LoadedModel | None, scheduler: Scheduler) -> Plan:
    """The run's plan: the raster opened once, the model loaded (or registered, for a caller's
    object) and checked against it, the tiling, and the device checked."""
    scene = open_scene(config, model_hint(config, model))
    raster = scene.raster
    if model is not None:
        ref, source = ModelRef(key=register_model(model)), ""
    else:
        model, source = resolve_model(config, raster)
        ref = ModelRef(path=str(Path(source).absolute()),
                       encoder_output_stride=config.encoder_output_stride,
                       decoder_atrous_rates=config.decoder_atrous_rates,
                       files=model_files(source, model), architecture=config.architecture,
                       encoder_name=config.encoder_name)
        hand_over(ref, model)  # in-process tasks use it instead of loading the model again
    plan = replace(make_plan(config, model, raster=raster, note_resolution=False),
                   model_ref=ref, model_source=source, item=scene.item)
    _check_device(config, plan.model, local=not scheduler.is_distributed)
    _check_export_cache(config, plan, local=not scheduler.is_distributed)
    # said once every check has passed: a warning never stands before an error line
    warn_resolution(config, raster, plan.model)
    return plan


def _check_export_cache(config: PredictConfig, plan: Plan, local: bool) -> None:
    """With engine onnxruntime here, the export is in the cache or can be written there; an
    OutputError naming the cache otherwise (exit 4), before anything is staged. (``auto`` uses
    torch instead, with a warning; a cluster's workers each have their own cache.)"""
    if (config.engine != "onnxruntime" or not local
            or plan.model.onnx_path is not None):  # a user's ONNX file is run as it is
        return
    from tileseg.inference.engine import check_export_cache

    model = plan.model
    check_export_cache(model.module, plan.context, model.metadata.in_channels, model.architecture)


def _stage(config: PredictConfig, plan: Plan, staging: Staging, fingerprint: str,
           run: str | None = None) -> None:
    """Create (or, resuming, reopen) the staged Zarr store and work folder of the run."""
    raster = plan.raster
    if not staging.in_progress() and not has_valid_pixel(raster, run):
        # the hint says "value", not the parameter: its name is also the state of the pixels
        raise InputError(f"{raster.path}: every pixel is nodata; nothing to segment (check "
                         "the nodata value or the file's mask)")

    def create(stage: Staging) -> None:
        # with an AOI the tasks fill the window's Zarr; the output is cut from it when published
        create_zarr(_run_zarr(stage, plan), raster, plan.model.metadata,
                    chunk_side=plan.grid.chunk_side, probabilities=config.probabilities,
                    source=raster.path)
        open_work_dir(stage.work_path).create()

    repaired: list[bool] = []

    def on_resume(recorded: dict[str, Any]) -> None:
        repaired.append(_check_source(raster, recorded))  # first: a changed source matters most
        _check_options(config, recorded)

    version = raster.version.to_record() if raster.version is not None else None
    resumed = staging.prepare(fingerprint, resume=config.resume, overwrite=config.overwrite,
                              facts={"src": raster.path, "source": version,
                                     "options": _resume_options(config)},
                              create=create, on_resume=on_resume)
    if resumed and any(repaired):
        _note(staging, {"source": version, "source_damaged": False})


# Options the staged work depends on (the chunk layout, what the sums hold): a resume with
# another value of one is refused by name. Batch size, workers and scheduler may change.
RESUME_OPTIONS = ("tile_size", "overlap", "chunk_size", "blend", "precision", "probabilities", "tta",
                  "encoder_output_stride", "decoder_atrous_rates")


def _resume_options(config: PredictConfig) -> dict[str, Any]:
    values = {name: getattr(config, name) for name in RESUME_OPTIONS}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def _check_options(config: PredictConfig, recorded: dict[str, Any]) -> None:
    """On ``--resume``: every option of :data:`RESUME_OPTIONS` as the interrupted run had it,
    else one line naming those that differ (before, only "other inputs or options")."""
    before = recorded.get("options")
    if not isinstance(before, dict):
        return  # a record without them: the fingerprint alone decides
    now = _resume_options(config)
    changed = [name for name in RESUME_OPTIONS if name in before and before[name] != now[name]]
    if changed:
        what = ", ".join(f"{name} {_shown(now[name])} (the interrupted run had "
                         f"{_shown(before[name])})" for name in changed)
        raise ConfigError(f"{config.dst}: {what}; resume with the interrupted run's values, "
                          "or pass overwrite to start over", params=(*changed, "overwrite"))


def _shown(value: Any) -> str:
    if value is None:
        return "the default"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _note(staging: Staging, facts: dict[str, Any]) -> None:
    """Add to the run record; a record that cannot be updated costs only the repair's resume."""
    try:
        staging.note(facts)
    except Exception as exc:  # noqa: BLE001 - the run's own error matters more
        logger.warning("could not update the run record (%s)", exc)


def _run_zarr(staging: Staging, plan: Plan) -> str:
    """The Zarr the tasks write: the output's, or with an AOI the window's in the work folder."""
    if plan.aoi is None:
        return str(staging.zarr_store)
    return location(str(staging.work_path)).child("window.zarr").text


def _job(config: PredictConfig, plan: Plan, staging: Staging, run: str = "") -> Job:
    """What every task of the run gets: small, picklable settings and paths."""
    assert plan.model_ref is not None
    mask_dtype, nodata = mask_dtype_for(plan.model.metadata.num_classes)
    return Job(
        raster=plan.raster, grid=plan.grid, model=plan.model_ref,
        num_classes=plan.model.metadata.num_classes, settings=config.runtime,
        blend=config.blend, probabilities=config.probabilities,
        mask_dtype=mask_dtype.name, nodata=nodata,
        work_dir=open_work_dir(staging.work_path).location,
        zarr_path=location(_run_zarr(staging, plan)).address,
        run=run or uuid.uuid4().hex,
        aoi=plan.aoi.mask if plan.aoi is not None else None,
    )


def _publish(config: PredictConfig, plan: Plan, fmt: str, staging: Staging,
             fingerprint: str, tally: Any = None) -> str | None:
    """Mark the Zarr complete and move the outputs into place; the Zarr path kept, if any."""
    zarr_store, dst = staging.zarr_store, config.dst
    if plan.aoi is not None:  # the output is the AOI's bounds, cut from the window's Zarr
        from tileseg.outputs.crop import crop_zarr

        crop_zarr(_run_zarr(staging, plan), zarr_store, plan.aoi.output,
                  plan.output_raster, plan.model.metadata, chunk_side=plan.grid.chunk_side,
                  probabilities=config.probabilities)
    # the fingerprint travels into the published output: a later --resume compares it
    with full_disk_as_error(str(zarr_store), resumable=True):
        mark_zarr_complete(zarr_store, {"tiles": plan.grid.num_tiles, "fingerprint": fingerprint})
    if fmt == "zarr":
        _write_stac_item(config, plan, fingerprint, tally, fmt, None, staging)
        staging.publish(zarr_store, zarr_too=False)
        return str(dst)
    # a full disk in the GeoTIFF pass: every chunk is done and kept, --resume only redoes this
    # (on a store the scratch is a temporary folder of this machine, TMPDIR)
    with staging.building() as scratch:
        tif_tmp = scratch / ("output" + (Path(dst).suffix or ".tif"))
        zarr_to_geotiff(zarr_store, tif_tmp, cog=fmt == "cog", workdir=scratch)
        # the styles are in place before the mask: a complete mask always has them
        staging.ensure_lock_held()  # a run that lost its lock (on a store) uploads nothing
        publish_raster_styles(dst, plan.model.metadata.classes)
        # the item, like the styles, is in place before the mask: a published mask has its item
        _write_stac_item(config, plan, fingerprint, tally, fmt, tif_tmp, staging)
    staging.publish(tif_tmp, zarr_too=config.zarr_path is not None)
    return config.zarr_path


def _write_stac_item(config: PredictConfig, plan: Plan, fingerprint: str, tally: Any, fmt: str,
                     mask_file: Path | None, staging: Staging | None = None,
                     polygons: str | None = None, preview: str | None = None) -> None:
    """Write (or, after the follow-ups, rewrite) the output's STAC item."""
    path = stac_item_path(config)
    if path is None:
        return
    from tileseg.outputs.stac_item import OutputAssets, build_item, write_item

    if staging is not None:
        staging.ensure_lock_held()  # a run that lost its lock (on a store) uploads nothing
    mask_dtype, nodata = mask_dtype_for(plan.model.metadata.num_classes)
    tiles = None
    if tally is not None:
        tiles = {"total": plan.grid.num_tiles, "inferred": tally.tiles,
                 "skipped_nodata": tally.skipped, "skipped_aoi": tally.skipped_aoi}
    extra = {}
    for name, written in (("preview", preview), ("polygons", polygons)):
        local = location(written).local_file() if written else None
        if local is not None:  # measured and hashed here; an object on a store is not
            extra[name] = local
    if mask_file is None and fmt != "zarr":
        # the rewrite after the follow-ups: the published file (on this disk)
        mask_file = location(config.dst).local_file()
    assets = OutputAssets(
        mask=config.dst, mask_format=fmt, mask_file=mask_file,
        zarr=config.zarr_path or (config.dst if fmt == "zarr" else None),
        probabilities=None if config.probabilities == "none" else config.probabilities,
        polygons=polygons, preview=preview, extra_files=extra)
    raster = plan.output_raster
    item = build_item(item_href=path, raster=raster, model=plan.model,
                      input_size=plan.context, assets=assets, nodata=nodata,
                      mask_dtype=mask_dtype.name, source=raster.path,
                      source_item=plan.item, fingerprint=fingerprint, tiles=tiles,
                      source_bands=tuple(b or "" for b in raster.band_descriptions)
                      if plan.item is not None else ())
    write_item(path, item)


def _follow_ups(result: PredictResult, config: PredictConfig, plan: Plan | None = None,
                fingerprint: str = "", scheduler: Scheduler | None = None,
                client: Any = None) -> None:
    """Polygons, a preview and the report file, each when asked for (the report last); the
    STAC item is written again with the polygons and preview as assets."""
    report = result.report
    if config.vectorize:
        polygons = _vectorize(result, config, scheduler, client)
        report["vectorize"] = {"dst": polygons.dst, "features": polygons.features,
                               "seconds": round(polygons.seconds, 3),
                               "features_per_class": {polygons.class_names.get(k, str(k)): v
                                                      for k, v in polygons.counts.items()}}
    if config.preview:
        report["preview"] = _preview(result, config)
    if plan is not None and (config.vectorize or config.preview) and config.stac_item:
        fmt = format_for(config.dst, config.format)
        _write_stac_item(config, plan, fingerprint, _ReportTally(report), fmt, None,
                         polygons=report.get("vectorize", {}).get("dst"),
                         preview=report.get("preview", {}).get("path"))
    if config.report:
        _check_report(config.report, config)  # again: the run took a while
        location(config.report).write_text(json.dumps(report, indent=2) + "\n")


@dataclass(frozen=True)
class _ReportTally:
    """A finished run's tile counts, read back from its report (for the item's rewrite)."""

    report: dict[str, Any]

    @property
    def tiles(self) -> int:
        return int(self.report.get("tiles_inferred", 0))

    @property
    def skipped(self) -> int:
        return int(self.report.get("tiles_skipped_nodata", 0))

    @property
    def skipped_aoi(self) -> int:
        return int(self.report.get("tiles_skipped_aoi", 0))


def _check_device(config: PredictConfig, model: LoadedModel | None = None, *,
                  local: bool = True) -> None:
    """Fail before anything is written: locally (``local``: not on a cluster) the device must
    exist, remotely parse; a user's ONNX file runs on ONNX Runtime, in fp32, where it is
    installed."""
    import torch

    from tileseg.inference.device import resolve_device, resolve_precision
    from tileseg.inference.engine import resolve_engine

    if model is not None and model.onnx_path is not None:
        from tileseg.inference.infer import onnx_device

        onnx_device(config.device if local else "cpu", config.precision, config.engine,
                    config.compile_model)
        if local:
            return
    if local:
        device = resolve_device(config.device)
        autocast = resolve_precision(config.precision, device)
        resolve_engine(config.engine, device, autocast=autocast, compile_model=config.compile_model)
    elif config.device != "auto":
        try:
            torch.device(config.device)
        except RuntimeError as exc:
            raise ConfigError(f"device {config.device!r} is not a torch device", params=("device",)) from exc


def _vectorize(result: PredictResult, config: PredictConfig, scheduler: Scheduler | None,
               client: Any) -> VectorizeResult:
    try:
        from tileseg.vectorization import VectorizeConfig, vectorize
    except ImportError as exc:
        from tileseg.deps import missing_dependency

        raise missing_dependency(exc, "vectorize", params=("vectorize",)) from exc
    assert config.vectorize is not None
    # The Zarr carries probabilities when asked for, so polygons get their mean probability.
    source = result.zarr_path or result.dst
    # on the run's scheduler (and client): not resolved, nor a client opened, again
    return vectorize(source, config.vectorize, VectorizeConfig(
        overwrite=config.overwrite, allow_no_crs=config.allow_no_crs, workers=config.workers),
        scheduler=scheduler if client is None or scheduler is None
        else replace(scheduler, client=client, wait_workers=0))


def _preview(result: PredictResult, config: PredictConfig) -> dict[str, Any]:
    """Draw the published mask over its source; what the report says about it."""
    from tileseg.preview import PreviewConfig, make_preview

    assert config.preview is not None
    plain = isinstance(config.src, str) and not is_item_source(config.src)
    bands = (config.bands if plain and config.bands and len(config.bands) == 3
             else None)  # e.g. 4,3,2
    over = config.src if plain else None  # drawn over a raster; a stack's mask alone
    drawn = make_preview(result.dst, config.preview,
                         PreviewConfig(over=over, bands=bands))  # type: ignore[arg-type]
    return {"path": drawn.path, "km2_per_class": {a.name: None if a.km2 is None else
                                                  round(a.km2, 4) for a in drawn.areas}}


def _cluster_address(scheduler: Scheduler, client: Any) -> str | None:
    """Where the tasks ran: the run's cluster, or None (here)."""
    if client is not None:
        return str(client.scheduler.address)
    return scheduler.address
