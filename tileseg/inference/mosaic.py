"""The mosaic as a dask graph over chunks: every tile inferred once, overlaps summed without
re-inference.

Two tasks per chunk:

``infer``     infers the tiles whose cores lie in the chunk, blends their logits on the device,
              finishes the chunk's *safe* interior (pixels no other chunk's tile reaches), and
              saves its *spill* (summed logits and weights where it overlaps neighbours) to the
              work directory, split by the neighbour each part belongs to.
``finalize``  once the chunk and its neighbours have been inferred, sums the spill that lands on
              the chunk's border, normalizes it, and writes the whole chunk into the Zarr store.

Everything a task produces goes to the run's work directory
(:mod:`tileseg.outputs.workdir`: on a disk or under a prefix on an object store) and is recorded
there, which is what makes ``--resume`` and retries after a lost worker cheap: an infer
task whose spill is already saved does nothing, and a finalize task whose chunk is marked done
does nothing. Task results are small dicts, so the scheduler never holds arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from dask.base import tokenize

from tileseg.config import ProbabilityMode, RuntimeConfig
from tileseg.errors import (
    DamagedInputError,
    InputError,
    RunError,
    SourceChangedError,
    SourceUnavailableError,
    TilesegError,
)
from tileseg.inference.infer import Runtime, blend_to_mask, infer_chunk_logits, make_runtime
from tileseg.models.loaded import cached
from tileseg.models.registry import ModelRef
from tileseg.outputs.diskspace import full_disk_as_error
from tileseg.outputs.location import location
from tileseg.outputs.workdir import WorkDir, open_work_dir
from tileseg.progress import report_tiles
from tileseg.sources.pinning import check_unchanged
from tileseg.sources.raster import RasterInfo
from tileseg.tiling.blend import FIXED_POINT_BITS
from tileseg.tiling.grid import Rect, TileGrid

if TYPE_CHECKING:
    from tileseg.scenes.aoi import AoiMask

logger = logging.getLogger(__name__)

# How saved spills hold their sums: part of the run fingerprint, so a staging folder written in
# another format (float32 sums, before tileseg 0.2) is never resumed into this one
SUMS_FORMAT = f"int64-fixed-point-{FIXED_POINT_BITS}"

@dataclass(frozen=True)
class Job:
    """Everything a task needs; small and picklable (no arrays, no open files, no model)."""

    raster: RasterInfo
    grid: TileGrid
    model: ModelRef
    num_classes: int
    settings: RuntimeConfig  # device, precision, batch size, compile, engine: one frozen value
    blend: str
    probabilities: ProbabilityMode
    mask_dtype: str
    nodata: int
    work_dir: str
    zarr_path: str
    # this run's own id: the open datasets chunk tasks hand on (tileseg.sources.raster) are this run's
    # only; not part of the token, so graph names stay the same for the same job
    run: str = ""
    aoi: AoiMask | None = None  # an area of interest: pixels outside are nodata, tiles skipped

    def runtime(self) -> Runtime:
        # every field that shapes the runtime, as frozen values: the key is never listed by hand
        key = ("runtime", self.model, self.raster.dtype, self.settings, self.grid.tile_size,
               self.grid.overlap, self.grid.halo_before, self.blend)
        s = self.settings
        return cached(key, lambda: make_runtime(
            self.model.load(self.raster.dtype), device=s.device, precision=s.precision,
            batch_size=s.batch_size, tile_size=self.grid.tile_size, overlap=self.grid.overlap,
            blend=self.blend, compile_model=s.compile_model, engine=s.engine,
            halo_before=self.grid.halo_before, from_directory=self.model.path is not None,
            # a model loaded from a path is the runtime's own; a caller's object is copied
            owned=self.model.path is not None, tta=s.tta))

    @property
    def token(self) -> str:
        return tokenize(replace(self, run=""))


def _spill_key(row: int, col: int) -> str:
    return f"to_r{row}_c{col}"


def _chunk_error(job: Job, row: int, col: int, exc: Exception) -> RunError | InputError:
    """The error of a failed chunk, naming it and the source; its cause goes to the log only.

    A read that failed for the store's sake (a :class:`SourceUnavailableError`: HTTP 5xx, a
    timeout, the object gone, after retries) stays one (exit 5, resumable once the store
    answers). A source that changed while the run read it stays a
    :class:`SourceChangedError` (exit 2). Any other read failure (an :class:`InputError` from
    the reader) means the raster itself is damaged: a :class:`DamagedInputError` (exit 2),
    where rerunning alone cannot help. Anything else is a :class:`RunError` (exit 5). Either way
    the finished chunks stay for ``--resume``.

    No cause or context is attached on purpose: rasterio's ``CPLE_*`` errors in a chain cannot be
    unpickled (tblib sets ``args``, a read-only property there), and distributed then hands the
    client a bare ``Exception`` instead of this ``RunError``.
    """
    logger.debug("chunk (%d, %d) of %s failed", row, col, job.raster.path, exc_info=exc)
    detail = str(exc).removeprefix(f"{job.raster.path}: ")
    params = ("resume", *getattr(exc, "params", ()))
    where = f"{job.raster.path}: chunk ({row}, {col})"
    if isinstance(exc, (SourceUnavailableError, SourceChangedError)):
        if "cannot read rows" not in detail:  # a read names its rows; a check, the chunk's
            chunk = job.grid.chunk(row, col)
            where += (f" (rows {chunk.row_off}-{chunk.row_end}, cols {chunk.col_off}-"
                      f"{chunk.col_end})")
        return type(exc)(f"{where}: {detail}", params=tuple(exc.params))
    if isinstance(exc, InputError):
        return DamagedInputError(
            f"{where}: {detail}; repair or replace the file, "
            "then rerun with resume to keep the finished chunks", params=params)
    return RunError(f"{where} failed: {detail}; fix the cause and rerun with resume",
                    params=params)


# (work directory, label) pairs this process has checked against the run's record: one read each
_CHECKED_RUNTIMES: set[tuple[str, str]] = set()


def _check_runtime(job: Job, work: WorkDir, runtime: Runtime) -> None:
    """Refuse to infer a chunk with a runtime whose logits differ from those the run's other
    chunks were inferred with (a resume on another device, ``auto`` resolving otherwise on a
    worker without ONNX Runtime or with a GPU): the mask would mix them. Nothing of the chunk
    is saved, so a resume with the run's runtime continues it."""
    label = runtime.label()
    if (work.location, label) in _CHECKED_RUNTIMES:
        return
    recorded = work.claim_runtime(label)
    if recorded != label:
        raise RunError(
            f"{job.raster.path}: this run's chunks were inferred by {recorded}, this worker "
            f"would infer by {label}, whose logits differ; resume with the engine, device and "
            "precision of the first (or pass overwrite to start over)",
            params=("engine", "device", "precision", "overwrite"))
    _CHECKED_RUNTIMES.add((work.location, label))


def infer_task(job: Job, row: int, col: int) -> dict[str, Any]:
    """Infer chunk ``(row, col)`` and save its interior and spill. Returns a small summary."""
    work = open_work_dir(job.work_dir)
    grid = job.grid
    if work.has_piece(row, col) or all(work.is_done(r, c) for r, c in grid.neighbours(row, col)):
        tiles, skipped, outside_aoi, used = _saved_tile_counts(work, row, col)
        return {"chunk": (row, col), "tiles": 0, "skipped": 0, "reused": True,
                "reused_tiles": tiles, "reused_skipped": skipped,
                "skipped_aoi": outside_aoi, "runtime": used}
    failure: Exception | None = None
    outside = job.aoi.tiles_outside(grid, row, col) if job.aoi is not None else set()
    try:
        runtime = job.runtime()
        _check_runtime(job, work, runtime)
        result = infer_chunk_logits(runtime, job.raster, grid, row, col, run=job.run,
                                    on_tiles=lambda n: report_tiles(job.run, (row, col), n),
                                    leave_out=outside)
        # after every read of the chunk: a source replaced meanwhile is never saved as this run's
        check_unchanged(job.raster.path, job.raster.version)
    except TilesegError as exc:
        if not isinstance(exc, (InputError, SourceUnavailableError)):
            raise  # model/config errors: the same for every chunk
        failure = exc  # e.g. an unreadable block, a store that stopped answering
    except Exception as exc:
        failure = exc
    if failure is not None:  # raised out here, so the error carries no __context__ either
        raise _chunk_error(job, row, col, failure)
    arrays: dict[str, np.ndarray] = {"tiles": np.array([result.tiles, result.skipped,
                                                        len(outside)]),
                                     "runtime": np.array(runtime.label())}
    safe = grid.chunk_safe(row, col)
    if not safe.empty:
        rs, cs = safe.relative_to(result.extent)
        mask, probs = blend_to_mask(result.logit_sum[:, rs, cs], result.weight_sum[rs, cs],
                                    job.nodata, np.dtype(job.mask_dtype), job.probabilities)
        arrays["mask"] = mask
        if probs is not None:
            arrays["probabilities"] = probs
    # each neighbour's arrays one after another in the piece: one byte range per neighbour
    parts: dict[tuple[int, int], list[Rect]] = {}
    for spill in grid.chunk_spill(row, col):
        for nr, nc in grid.neighbours(row, col):
            part = spill.intersection(grid.chunk(nr, nc))
            if not part.empty:
                parts.setdefault((nr, nc), []).append(part)
    for (nr, nc), rects in parts.items():
        key = _spill_key(nr, nc)
        for n, part in enumerate(rects):
            rs, cs = part.relative_to(result.extent)
            arrays[f"{key}_rect{n}"] = np.array(
                [part.row_off, part.col_off, part.height, part.width])
            arrays[f"{key}_sum{n}"] = result.logit_sum[:, rs, cs].cpu().numpy()
            arrays[f"{key}_weight{n}"] = result.weight_sum[rs, cs].cpu().numpy()
    spans = work.save_piece(row, col, arrays)
    if result.logit_sum.is_cuda:
        del result
        torch.cuda.empty_cache() if torch.cuda.memory_reserved() > 8e9 else None
    logger.debug("chunk (%d, %d): %d tiles inferred", row, col, int(arrays["tiles"][0]))
    return {"chunk": (row, col), "tiles": int(arrays["tiles"][0]),
            "skipped": int(arrays["tiles"][1]), "skipped_aoi": len(outside), "reused": False,
            **runtime.resolved(), "engine": runtime.engine, "runtime": runtime.label(),
            "spans": spans}


def _saved_tile_counts(work: WorkDir, row: int,
                       col: int) -> tuple[int, int, int, str]:
    """Tiles inferred, skipped (nodata) and left out (outside an AOI) by an earlier run of chunk
    ``(row, col)``, and the runtime that inferred them (:meth:`Runtime.label`): from its saved
    piece or, once that is cleaned up (only after the chunk is done), from its done record."""
    try:
        with work.load_piece(row, col) as piece:
            counts = [int(v) for v in piece["tiles"]]
            used = str(piece["runtime"]) if "runtime" in piece.files else ""
            return counts[0], counts[1], counts[2] if len(counts) > 2 else 0, used
    except (OSError, KeyError, ValueError, RunError):
        pass
    try:
        info = work.read_done(row, col)
        return (int(info["tiles"]), int(info["skipped"]), int(info.get("skipped_aoi", 0)),
                str(info.get("runtime", "")))
    except (OSError, KeyError, ValueError):  # a count is not worth failing the run over
        return 0, 0, 0, ""


def finalize_task(job: Job, row: int, col: int, *inferred: Any) -> dict[str, Any]:
    """Combine the spills landing on chunk ``(row, col)`` and write the chunk to Zarr."""
    import zarr

    work = open_work_dir(job.work_dir)
    grid = job.grid
    chunk = grid.chunk(row, col)
    if work.is_done(row, col):
        return {"chunk": (row, col), "reused": True, **work.read_done(row, col)}
    mask_dtype = np.dtype(job.mask_dtype)
    mask = np.full((chunk.height, chunk.width), job.nodata, dtype=mask_dtype)
    probs = None
    if job.probabilities != "none":
        pdtype = np.uint8 if job.probabilities == "uint8" else np.float16
        probs = np.zeros((job.num_classes, chunk.height, chunk.width), dtype=pdtype)
    own = work.load_piece(row, col)
    counts = [int(v) for v in own["tiles"]]
    tiles, skipped, outside_aoi = counts[0], counts[1], counts[2] if len(counts) > 2 else 0
    safe = grid.chunk_safe(row, col)
    if not safe.empty:
        rs, cs = safe.relative_to(chunk)
        mask[rs, cs] = own["mask"]
        if probs is not None:
            probs[:, rs, cs] = own["probabilities"]
    border = grid.chunk_border(row, col)
    if border:
        key = _spill_key(row, col)
        # fixed-point integers (tileseg.tiling.blend): the neighbours' sums add up exactly, in any order
        sums = np.zeros((job.num_classes, chunk.height, chunk.width), dtype=np.int64)
        weights = np.zeros((chunk.height, chunk.width), dtype=np.int64)
        spans = {tuple(r["chunk"]): r.get("spans", {}).get(key)
                 for r in inferred if isinstance(r, dict) and "chunk" in r}
        for nr, nc in grid.neighbours(row, col):
            piece = (own if (nr, nc) == (row, col)
                     else work.load_spill(nr, nc, key, spans.get((nr, nc))))
            n = 0
            while f"{key}_rect{n}" in piece.files:
                rect = Rect(*(int(v) for v in piece[f"{key}_rect{n}"]))
                rs, cs = rect.relative_to(chunk)
                sums[:, rs, cs] += piece[f"{key}_sum{n}"]
                weights[rs, cs] += piece[f"{key}_weight{n}"]
                n += 1
        for rect in border:
            rs, cs = rect.relative_to(chunk)
            m, p = blend_to_mask(torch.from_numpy(sums[:, rs, cs]),
                                 torch.from_numpy(weights[rs, cs]), job.nodata, mask_dtype,
                                 job.probabilities)
            mask[rs, cs] = m
            if probs is not None and p is not None:
                probs[:, rs, cs] = p
    if job.aoi is not None:  # outside the AOI: nodata, whatever tiles reached it
        outside = ~job.aoi.inside(chunk)
        mask[outside] = job.nodata
        if probs is not None:
            probs[:, outside] = 0
    region = (slice(chunk.row_off, chunk.row_end), slice(chunk.col_off, chunk.col_end))
    store = location(job.zarr_path).zarr_store()
    # a chunk left half written is written again: the chunk is not marked done yet
    with full_disk_as_error(job.zarr_path, resumable=True):
        # the run's own Zarr is v3 (create_zarr): naming it spares a store the v2 metadata probes
        zarr.open_array(store, path="mask", mode="r+", zarr_format=3)[region] = mask
        if probs is not None:
            zarr.open_array(store, path="probabilities", mode="r+",
                            zarr_format=3)[(slice(None), *region)] = probs
    info = {"tiles": tiles, "skipped": skipped, "skipped_aoi": outside_aoi,
            "runtime": str(own["runtime"]) if "runtime" in own.files else ""}
    work.mark_done(row, col, info)
    _cleanup(work, grid, row, col)
    return {"chunk": (row, col), "reused": False, **info}


def _cleanup(work: WorkDir, grid: TileGrid, row: int, col: int) -> None:
    """Delete spills no unfinished chunk needs any more, so scratch space stays bounded."""
    done = work.done_chunks()
    for nr, nc in grid.neighbours(row, col):
        if all((r, c) in done for r, c in grid.neighbours(nr, nc)):
            work.remove_piece(nr, nc)


@dataclass(frozen=True)
class MosaicGraph:
    graph: dict[Any, Any]
    infer_keys: list[tuple[str, int, int]]
    finalize_keys: list[tuple[str, int, int]]


def build_graph(job: Job) -> MosaicGraph:
    """The dask graph of a job; names are deterministic (``tokenize`` of the job).

    The graph never picks a scheduler; the caller runs it (threads, processes or a cluster).
    """
    token = job.token
    infer_name = f"tileseg-infer-{token}"
    final_name = f"tileseg-finalize-{token}"
    job_key = f"tileseg-job-{token}"
    grid = job.grid
    # The job is one key of its own, so it is serialized once, not once per task.
    dsk: dict[Any, Any] = {job_key: job}
    infer_keys, final_keys = [], []
    for row, col in grid.chunks():
        dsk[(infer_name, row, col)] = (infer_task, job_key, row, col)
        infer_keys.append((infer_name, row, col))
    for row, col in grid.chunks():
        deps = [(infer_name, r, c) for r, c in grid.neighbours(row, col)]
        dsk[(final_name, row, col)] = (finalize_task, job_key, row, col, *deps)
        final_keys.append((final_name, row, col))
    return MosaicGraph(dsk, infer_keys, final_keys)
