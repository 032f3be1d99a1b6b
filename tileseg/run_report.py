"""What a predict run did: tile counts as the tasks finish, timings, and the ``--report`` JSON."""

from __future__ import annotations

import platform
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import rasterio

from tileseg.inference.tta import passes
from tileseg.outputs.ownership import REPORT_MARKER, REPORT_VERSION
from tileseg.progress import Progress, ProgressCallback

if TYPE_CHECKING:
    from tileseg.config import PredictConfig
    from tileseg.outputs.workdir import WorkDir
    from tileseg.plan import Plan

RESOLVED_KEYS = ("device", "precision", "batch_size")


@dataclass
class Tally:
    """Counts of a run, updated from each task's small result dict as tasks finish, and the
    progress of its tiles, counted as they are inferred (see :meth:`on_tiles`)."""

    tile_counts: dict[tuple[int, int], int]
    num_tiles: int
    done_before: int  # tiles an interrupted run inferred: progress counts them, its rate does not
    chunks_done_before: int
    progress: ProgressCallback | None
    clock_start: float  # progress rates count from here (the graph built)
    tiles: int = 0
    skipped: int = 0
    skipped_aoi: int = 0  # tiles with no pixel in the area of interest: never inferred
    reused_chunks: int = 0
    reused_tiles: int = 0
    resolved: dict[str, set[Any]] = field(default_factory=lambda: {k: set() for k in RESOLVED_KEYS})
    engines: set[str] = field(default_factory=set)  # as the workers resolved --engine
    runtimes: set[str] = field(default_factory=set)  # Runtime.label of every chunk, reused too
    counted: dict[tuple[int, int], int] = field(default_factory=dict)  # tiles shown, per chunk
    done_tiles: int = 0  # their sum: what progress shows
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pending: BaseException | None = None  # what the progress callback raised in a task thread

    @classmethod
    def for_run(cls, plan: Plan, work: WorkDir, progress: ProgressCallback | None,
                clock_start: float, *, resuming: bool = False) -> Tally:
        """The tally of a run; ``resuming``: also list the chunks an interrupted run inferred
        without finishing them (one more listing), which progress counts as done before."""
        grid = plan.grid
        counts = {(r, c): len(grid.chunk_tiles_of(r, c)) for r, c in grid.chunks()}
        finished = work.done_chunks()  # one listing, not a request per chunk (N HEADs on a store)
        saved = work.piece_chunks() if resuming else set()
        before = {rc: n for rc, n in counts.items() if rc in finished or rc in saved}
        done_before = sum(before.values())
        return cls(counts, grid.num_tiles, done_before, len(finished & counts.keys()), progress,
                   clock_start, counted=before, done_tiles=done_before)

    def on_tiles(self, chunk: tuple[int, int], tiles: int) -> None:
        """``tiles`` of ``chunk`` are inferred so far: called from the task's thread (or a
        client's event loop) while the chunk is in flight. Whatever the progress callback
        raises here (a KeyboardInterrupt to stop the run) is raised in the run's own thread
        when the next task finishes, so the chunk in flight still saves its work."""
        try:
            self._count(chunk, tiles)
        except BaseException as exc:  # noqa: BLE001
            with self._lock:
                self._pending = self._pending or exc

    def on_result(self, result: dict[str, Any], kind: str) -> None:
        self._raise_pending()
        if kind != "infer":
            return
        self.tiles += result["tiles"]
        self.skipped += result["skipped"]
        self.skipped_aoi += result.get("skipped_aoi", 0)
        if result.get("reused"):
            self.reused_chunks += 1
            self.reused_tiles += result.get("reused_tiles", 0)
        for key, values in self.resolved.items():  # what the workers really used
            if key in result:
                values.add(result[key])
        if "engine" in result:
            self.engines.add(result["engine"])
        if result.get("runtime"):
            self.runtimes.add(result["runtime"])
        chunk = tuple(result["chunk"])
        # the whole chunk now: its inferred tiles, those skipped as nodata, or all, reused
        self._count(chunk, self.tile_counts[chunk])  # type: ignore[index]

    def _raise_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            raise pending

    def _count(self, chunk: tuple[int, int], tiles: int) -> None:
        with self._lock:
            if self._pending is not None:
                return
            tiles = min(tiles, self.tile_counts.get(chunk, 0))
            before = self.counted.get(chunk, 0)
            if tiles <= before:  # reports may arrive late or twice (a retried task): never back
                return
            self.counted[chunk] = tiles
            self.done_tiles += tiles - before
            if self.progress is not None:
                self.progress(Progress(self.done_tiles, self.num_tiles,
                                       time.perf_counter() - self.clock_start,
                                       start=self.done_before))


@dataclass
class Timings:
    """``time.perf_counter()`` at each stage boundary of a run."""

    started: float
    graph_built: float = 0.0
    computed: float = 0.0
    finished: float = 0.0
    rss_compute_mb: float = 0.0  # the peak after computing: tiles, blending, Zarr chunks


@dataclass(frozen=True)
class RunReport:
    """Everything ``--report`` says about a run; :meth:`to_json` is the file's content."""

    config: PredictConfig
    plan: Plan
    tally: Tally
    timings: Timings
    model_source: str
    tasks: int
    cluster: str | None  # the scheduler address the tasks ran on; None: this process
    scheduler: str = "threads"  # the kind of scheduler the run resolved (tileseg.execution)

    def to_json(self) -> dict[str, Any]:
        config, plan, tally, t = self.config, self.plan, self.tally, self.timings
        raster = plan.raster
        seconds = t.finished - t.started
        compute_s = max(t.computed - t.graph_built, 1e-9)
        used = resolved_settings(config, plan, tally.resolved, self.cluster)
        area_km2 = (raster.pixel_area * raster.height * raster.width / 1e6
                    if raster.crs_is_metric else None)
        report: dict[str, Any] = {
            REPORT_MARKER: REPORT_VERSION,  # what lets --overwrite replace this file later
            "src": raster.path,
            "dst": config.dst,
            "model": self.model_source,
            "raster": {"height": raster.height, "width": raster.width,
                       "bands": len(raster.indexes), "dtype": raster.dtype},
            "tiling": {"tile_size": plan.grid.tile_size, "overlap": plan.grid.overlap,
                       "overlap_requested": config.overlap, "context": plan.context,
                       # as overlap: the side the chunks got, and the one asked for
                       "chunk_size": plan.grid.chunk_side,
                       "chunk_size_requested": config.chunk_size, "blend": config.blend},
            "tiles_total": plan.grid.num_tiles,
            "tiles_inferred": tally.tiles,
            "tiles_skipped_nodata": tally.skipped,
            "tiles_skipped_aoi": tally.skipped_aoi,
            # an interrupted run's work that this one kept instead of inferring again
            "tiles_reused": tally.reused_tiles,
            "chunks": plan.grid.num_chunks,
            "chunks_resumed": tally.reused_chunks,
            "tasks": self.tasks,
            "seconds": {"setup": t.graph_built - t.started, "compute": compute_s,
                        "write": t.finished - t.computed, "total": seconds},
            "tiles_per_second": tally.tiles / compute_s,  # of seconds.compute
            "km2_per_hour": (area_km2 / seconds * 3600) if area_km2 else None,
            **used,
            "engine": ",".join(sorted(tally.engines)) or config.engine,
            "model_format": plan.model.format,
            # test-time augmentation: each tile's logits averaged over this many passes
            "tta": config.tta,
            "forward_passes_per_tile": passes(config.tta),
            "scheduler": self.cluster or self.scheduler,
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_mb_compute": t.rss_compute_mb,  # before the GeoTIFF/COG pass
            "host": platform.node(),
            "versions": versions(),
        }
        if report["scheduler"] in ("threads", "sync"):
            from tileseg.execution import default_workers

            report["workers"] = 1 if report["scheduler"] == "sync" else (
                config.workers or default_workers(config.device))
        if self.cluster is None and used["device"] and used["device"].startswith("cuda"):
            import torch

            device = torch.device(used["device"])
            report["gpu"] = torch.cuda.get_device_name(device)
            report["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return report


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resolved_settings(config: PredictConfig, plan: Plan, resolved: dict[str, set[Any]],
                      cluster: str | None) -> dict[str, Any]:
    """Device, precision and batch size as the infer tasks resolved them (``auto`` never appears).

    Several values (workers on different GPUs) are listed; a run that inferred nothing (all
    reused) resolves them here, or reports None for a cluster, whose workers may differ.
    """
    from tileseg.inference.device import default_batch_size, precision_name, resolve_device, resolve_precision

    if not resolved["device"] and cluster is None:
        device = resolve_device(config.device)
        return {"device": str(device),
                "precision": precision_name(resolve_precision(config.precision, device)),
                "batch_size": config.batch_size or default_batch_size(device, plan.context)}
    out: dict[str, Any] = {}
    for key, values in resolved.items():
        ordered = sorted(values)
        out[key] = None if not ordered else ordered[0] if len(ordered) == 1 else ordered
    return out


def versions() -> dict[str, str | None]:
    """Versions of what shaped the result, so a report says what produced it."""
    from importlib import metadata

    import torch

    from tileseg._version import __version__

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"tileseg": __version__, "torch": torch.__version__,
            "segmentation_models_pytorch": dist("segmentation-models-pytorch"),
            "gdal": rasterio.__gdal_version__, "rasterio": rasterio.__version__,
            "python": platform.python_version()}
