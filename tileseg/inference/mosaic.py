"""The mosaic as a dask graph over chunks: every tile inferred once, overlaps summed without
re-inference.

Two tasks per chunk:

``infer``     infers the tiles whose cores lie in the chunk, blends their logits on the device,
              finishes the chunk's *safe* interior (pixels no other chunk's tile reaches), and
              saves its *spill* (summed logits and weights where it overlaps neighbours) to the
              work directory, split by the neighbour each part belongs to.
``finalize``  once the chunk and its neighbours have been inferred, sums the spill that lands on
              the chunk's border, normalizes it, and writes the whole chunk into the Zarr store.

Everything a task produces goes to the work directory (atomically: temporary name, then rename
on a disk; one PUT under a prefix on an object store, :class:`StoreWorkDir`) and is recorded
there, which is what makes ``--resume`` and retries after a lost worker cheap: an infer
task whose spill is already saved does nothing, and a finalize task whose chunk is marked done
does nothing. Task results are small dicts, so the scheduler never holds arrays.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import uuid
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
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
from tileseg.inference.blend import FIXED_POINT_BITS
from tileseg.inference.grid import Rect, TileGrid
from tileseg.inference.infer import Runtime, blend_to_mask, infer_chunk_logits, make_runtime
from tileseg.models.loaded import LoadedModel, cached, forget_cached, load_model
from tileseg.outputs.diskspace import full_disk_as_error
from tileseg.outputs.store import zarr_store
from tileseg.progress import report_tiles
from tileseg.sources.pinning import check_unchanged
from tileseg.sources.raster import RasterInfo

if TYPE_CHECKING:
    from tileseg.scenes.aoi import AoiMask

logger = logging.getLogger(__name__)

# How saved spills hold their sums: part of the run fingerprint, so a staging folder written in
# another format (float32 sums, before tileseg 0.2) is never resumed into this one
SUMS_FORMAT = f"int64-fixed-point-{FIXED_POINT_BITS}"

# Models handed to predict() as objects live here, keyed by a token, so jobs stay small and
# picklable; a worker process that lacks the key must load the model from its path instead.
# Weak on both sides: once the caller drops a model, its entry and its cached runtime go too.
_IN_PROCESS_MODELS: weakref.WeakValueDictionary[str, LoadedModel] = weakref.WeakValueDictionary()
_IN_PROCESS_KEYS: weakref.WeakKeyDictionary[LoadedModel, str] = weakref.WeakKeyDictionary()
_IN_PROCESS_LOCK = threading.Lock()


def register_model(model: LoadedModel) -> str:
    """The registry key of ``model`` (the same key each time for one object)."""
    with _IN_PROCESS_LOCK:
        key = _IN_PROCESS_KEYS.get(model)
        if key is None:
            # Not id(model): an id is reused once its object is freed, and would find the
            # runtime cached for the previous model.
            key = f"in-process-{uuid.uuid4().hex}"
            _IN_PROCESS_KEYS[model] = key
            _IN_PROCESS_MODELS[key] = model
        live = set(_IN_PROCESS_MODELS.keys())
    forget_cached(lambda k: isinstance(k[1], ModelRef) and k[1].key is not None
                  and k[1].key not in live)
    return key


@dataclass(frozen=True)
class ModelRef:
    """How a worker gets the model: a path it loads itself, or an in-process registry key.

    ``files`` (name, size, mtime) of the model directory are part of the value, so a runtime
    cached for a model that has since been retrained in place is never reused.
    """

    path: str | None = None
    key: str | None = None
    encoder_output_stride: int | None = None
    decoder_atrous_rates: tuple[int, ...] | None = None
    files: tuple[tuple[str, int, int], ...] = ()
    architecture: str | None = None  # the network of plain weights
    encoder_name: str | None = None

    def load(self, raster_dtype: str) -> LoadedModel:
        with _HANDED_OVER_LOCK:
            handed = _HANDED_OVER.pop(self, None)
        if handed is not None:
            return handed
        if self.key is not None:
            try:
                return _IN_PROCESS_MODELS[self.key]
            except KeyError:
                raise RunError(
                    "a model object passed to predict() cannot reach another process; pass the "
                    "model directory instead for distributed runs"
                ) from None
        assert self.path is not None
        return load_model(self.path, encoder_output_stride=self.encoder_output_stride,
                          decoder_atrous_rates=self.decoder_atrous_rates, raster_dtype=raster_dtype,
                          architecture=self.architecture, encoder_name=self.encoder_name)


# A model the driver loaded while planning, handed to the first runtime of this process that
# asks for the same reference instead of loading it a second time; taken once, so no two
# runtimes (which may move or convert their module) ever share one module. Weak: once the run
# that planned it is over, an unused model is not kept.
_HANDED_OVER: weakref.WeakValueDictionary[ModelRef, LoadedModel] = weakref.WeakValueDictionary()
_HANDED_OVER_LOCK = threading.Lock()


def hand_over(ref: ModelRef, model: LoadedModel) -> None:
    """Offer the planning stage's ``model`` to the first runtime built for ``ref`` here."""
    with _HANDED_OVER_LOCK:
        _HANDED_OVER[ref] = model


def model_files(path: str | os.PathLike[str],
                model: LoadedModel | None = None) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the files of a model: every file ``model`` was loaded from
    (a checkpoint and the tileseg.json beside it, an MLM item and its artifact), else those of
    the directory (or the weights file) at ``path``."""
    root = Path(path)
    if model is not None and model.files:
        files = [Path(f) for f in model.files]
    else:
        files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    return tuple((str(p) if model is not None and model.files else p.name,
                  (st := p.stat()).st_size, st.st_mtime_ns) for p in files)


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


class WorkDir:
    """Per-chunk files of a run on a local (or shared) disk: saved interiors and spills, and
    done markers. :class:`StoreWorkDir` keeps the same records as objects on a store."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pieces = self.path / "pieces"
        self.done = self.path / "done"

    @property
    def location(self) -> str:
        """Where every worker finds this work directory."""
        return str(self.path.absolute())

    def create(self) -> None:
        self.pieces.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)

    def piece_path(self, row: int, col: int) -> Path:
        return self.pieces / f"r{row}_c{col}.npz"

    def done_path(self, row: int, col: int) -> Path:
        return self.done / f"r{row}_c{col}"

    def has_piece(self, row: int, col: int) -> bool:
        return self.piece_path(row, col).exists()

    def is_done(self, row: int, col: int) -> bool:
        return self.done_path(row, col).exists()

    def save_piece(self, row: int, col: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Save the piece; no spans (a neighbour's np.load reads only the members it uses)."""
        final = self.piece_path(row, col)
        tmp = final.with_name(f"{final.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        with full_disk_as_error(self.path, resumable=True, cleanup=[tmp]):
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, final)
        return {}

    def load_piece(self, row: int, col: int) -> Any:
        path = self.piece_path(row, col)
        try:
            return np.load(path)
        except FileNotFoundError:
            raise RunError(f"{path}: missing intermediate chunk file; rerun with resume",
                           params=("resume",)) from None

    def load_spill(self, row: int, col: int, key: str, span: dict[str, Any] | None = None) -> Any:
        """The piece's arrays for one neighbour (``key_*``); np.load reads members lazily."""
        return self.load_piece(row, col)

    def remove_piece(self, row: int, col: int) -> None:
        self.piece_path(row, col).unlink(missing_ok=True)

    def mark_done(self, row: int, col: int, info: dict[str, Any]) -> None:
        final = self.done_path(row, col)
        tmp = final.with_name(final.name + ".tmp")
        with full_disk_as_error(self.path, resumable=True, cleanup=[tmp]):
            tmp.write_text(json.dumps(info))
            os.replace(tmp, final)

    def read_done(self, row: int, col: int) -> dict[str, Any]:
        return dict(json.loads(self.done_path(row, col).read_text()))

    def done_chunks(self) -> set[tuple[int, int]]:
        """Every chunk marked done, in one directory listing."""
        return _parse_done(p.name for p in self.done.iterdir()) if self.done.is_dir() else set()

    def piece_chunks(self) -> set[tuple[int, int]]:
        """Every chunk whose piece is saved (its tiles are inferred), in one listing."""
        return (_parse_done(p.name.removesuffix(".npz") for p in self.pieces.iterdir())
                if self.pieces.is_dir() else set())

    def claim_runtime(self, label: str) -> str:
        """The run's runtime (:meth:`Runtime.label`): ``label`` if no chunk has recorded one
        yet (then recorded, by whichever task gets there first), else the recorded one."""
        record = self.path / "runtime"
        tmp = record.with_name(f"runtime.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(label)
        try:
            os.link(tmp, record)  # fails if there is one: the first task's label stays
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return record.read_text()


def _parse_done(names: Any) -> set[tuple[int, int]]:
    done = set()
    for name in names:
        row, _, col = name.partition("_c")
        if row.startswith("r") and row[1:].isdigit() and col.isdigit():
            done.add((int(row[1:]), int(col)))
    return done


class StoreWorkDir:
    """The records of :class:`WorkDir` as objects under a store prefix, so workers that share
    no disk share the run. A PUT is atomic (an object appears whole or not at all), which is
    what the local temporary-name-and-rename gives; a done marker is written last."""

    def __init__(self, url: str) -> None:
        from tileseg.outputs.store import StoreLocation

        self.root = StoreLocation.parse(url)

    @property
    def location(self) -> str:
        return self.root.url

    def create(self) -> None:
        """Nothing to do: a prefix exists as soon as an object is written under it."""

    def _piece(self, row: int, col: int) -> Any:
        return self.root.child(f"pieces/r{row}_c{col}.npz")

    def _done(self, row: int, col: int) -> Any:
        return self.root.child(f"done/r{row}_c{col}")

    def has_piece(self, row: int, col: int) -> bool:
        from tileseg.outputs.store import exists

        return exists(self._piece(row, col))

    def is_done(self, row: int, col: int) -> bool:
        from tileseg.outputs.store import exists

        return exists(self._done(row, col))

    def save_piece(self, row: int, col: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Upload the piece in one PUT; returns where each neighbour's arrays lie in it."""
        from tileseg.outputs.store import put_bytes

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        data = buffer.getvalue()
        put_bytes(self._piece(row, col), data)
        return spill_spans(data)

    def load_piece(self, row: int, col: int) -> Any:
        from tileseg.outputs.store import read_bytes

        where = self._piece(row, col)
        try:
            return np.load(io.BytesIO(read_bytes(where)))
        except FileNotFoundError:
            raise RunError(f"{where.url}: missing intermediate chunk object; rerun with "
                           "resume", params=("resume",)) from None

    def load_spill(self, row: int, col: int, key: str, span: dict[str, Any] | None = None) -> Any:
        """The piece's arrays for one neighbour (``key_*``) without downloading the rest: one
        ranged request where the inferring task said they lie (``span``, see
        :func:`spill_spans`); without it (a piece saved by an earlier run), the object's tail
        (its zip directory) first, then one ranged request per run of those arrays."""
        import zipfile

        from tileseg.outputs.store import RangedObject, read_range

        where = self._piece(row, col)
        try:
            if span is not None:
                start, end = span["range"]
                data = read_range(where, start, end)
                return _Arrays({name: np.load(io.BytesIO(data[off : off + size]))
                                for name, (off, size) in span["members"].items()})
            view = RangedObject(where)
            with zipfile.ZipFile(view) as archive:  # type: ignore[arg-type]
                members = sorted(archive.infolist(), key=lambda info: info.header_offset)
                ends = [m.header_offset for m in members[1:]] + [archive.start_dir]
            run_start: int | None = None
            for member, end in zip(members, ends, strict=True):
                if member.filename.startswith(key + "_"):
                    run_start = member.header_offset if run_start is None else run_start
                    run_end = end
                elif run_start is not None:
                    view.fetch(run_start, run_end)
                    run_start = None
            if run_start is not None:
                view.fetch(run_start, run_end)
            return np.lib.npyio.NpzFile(view)  # type: ignore[arg-type]
        except FileNotFoundError:
            raise RunError(f"{where.url}: missing intermediate chunk object; rerun with "
                           "resume", params=("resume",)) from None

    def remove_piece(self, row: int, col: int) -> None:
        from tileseg.outputs.store import delete

        delete(self._piece(row, col))

    def mark_done(self, row: int, col: int, info: dict[str, Any]) -> None:
        from tileseg.outputs.store import put_bytes

        put_bytes(self._done(row, col), json.dumps(info).encode())

    def read_done(self, row: int, col: int) -> dict[str, Any]:
        from tileseg.outputs.store import read_bytes

        return dict(json.loads(read_bytes(self._done(row, col))))

    def done_chunks(self) -> set[tuple[int, int]]:
        """Every chunk marked done, in one listing (instead of a HEAD request per chunk)."""
        from tileseg.outputs.store import list_names

        return _parse_done(list_names(self.root.child("done")))

    def piece_chunks(self) -> set[tuple[int, int]]:
        """Every chunk whose piece is saved, in one listing."""
        from tileseg.outputs.store import list_names

        return _parse_done(n.removesuffix(".npz") for n in list_names(self.root.child("pieces")))

    def claim_runtime(self, label: str) -> str:
        """:meth:`WorkDir.claim_runtime` with a conditional PUT (create only)."""
        from tileseg.outputs.store import put_bytes, read_bytes

        record = self.root.child("runtime")
        try:
            put_bytes(record, label.encode(), create_only=True)
            return label
        except FileExistsError:
            return read_bytes(record).decode()


def open_work_dir(location: str | os.PathLike[str]) -> WorkDir | StoreWorkDir:
    """The work directory at ``location``: a store URL gives a :class:`StoreWorkDir`."""
    from tileseg.outputs.store import is_store_url

    text = str(location)
    return StoreWorkDir(text) if is_store_url(text) else WorkDir(text)


def _spill_key(row: int, col: int) -> str:
    return f"to_r{row}_c{col}"


def spill_spans(npz: bytes) -> dict[str, Any]:
    """Where each neighbour's spill arrays lie in a saved piece (the bytes of an uncompressed
    ``np.savez``): for every ``to_rR_cC`` key, the byte range holding all its members, and each
    member's ``.npy`` bytes as (offset in that range, length). A neighbour then downloads one
    range instead of the whole piece."""
    import struct
    import zipfile

    with zipfile.ZipFile(io.BytesIO(npz)) as archive:
        members = sorted(archive.infolist(), key=lambda info: info.header_offset)
    spans: dict[str, Any] = {}
    for member in members:
        key, sep, _ = member.filename.rpartition("_")
        if not (sep and key.startswith("to_r")):
            continue
        at = member.header_offset
        name_len, extra_len = struct.unpack_from("<HH", npz, at + 26)  # the local header's own
        data_at = at + 30 + name_len + extra_len
        end = data_at + member.compress_size
        span = spans.setdefault(key, {"range": [at, end], "members": {}})
        span["range"] = [min(span["range"][0], at), max(span["range"][1], end)]
        span["members"][member.filename.removesuffix(".npy")] = [data_at, member.compress_size]
    for span in spans.values():  # offsets relative to the range's start
        start = span["range"][0]
        span["members"] = {k: [off - start, size] for k, (off, size) in span["members"].items()}
    return spans


class _Arrays(dict[str, np.ndarray]):
    """Arrays by name with the ``files`` list of ``np.load``'s NpzFile, which callers use."""

    @property
    def files(self) -> list[str]:
        return list(self)

    def __enter__(self) -> _Arrays:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


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


def _check_runtime(job: Job, work: WorkDir | StoreWorkDir, runtime: Runtime) -> None:
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


def _saved_tile_counts(work: WorkDir | StoreWorkDir, row: int,
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
        # fixed-point integers (tileseg.inference.blend): the neighbours' sums add up exactly, in any order
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
    store = zarr_store(job.zarr_path)
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


def _cleanup(work: WorkDir | StoreWorkDir, grid: TileGrid, row: int, col: int) -> None:
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
