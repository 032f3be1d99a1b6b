"""Reading class masks chunk by chunk: a tileseg GeoTIFF/Zarr mask or any single-band integer raster.

A :class:`MaskSource` is a small picklable description (path + georeferencing + classes); every
read opens the file again, so dask tasks on threads or remote workers each use their own handle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine

from tileseg.errors import InputError, InputNotFoundError
from tileseg.outputs import mask as mask_format
from tileseg.outputs.location import location
from tileseg.sources.datasets import gdal_message, open_dataset
from tileseg.sources.raster import checked_read
from tileseg.sources.remote import is_remote

logger = logging.getLogger(__name__)

SourceKind = Literal["gtiff", "zarr"]

DEFAULT_CHUNK_SIZE = 2048


@dataclass(frozen=True)
class MaskSource:
    """A class mask on disk and the facts needed to vectorize it.

    Examples
    --------
    >>> source = open_mask("mask.tif")  # doctest: +SKIP
    >>> source.read(0, 0, 256, 256).shape  # doctest: +SKIP
    (256, 256)
    """

    path: str
    kind: SourceKind
    height: int
    width: int
    dtype: str
    nodata: int | None
    transform: Affine
    crs_wkt: str | None
    class_names: dict[int, str]
    chunks: tuple[int, int]  # (height, width) of the storage unit reads should align with
    has_probabilities: bool = False
    probability_scale: float = 1.0  # multiply stored probabilities by this to get 0..1

    def class_name(self, class_id: int) -> str:
        return self.class_names.get(class_id, f"class_{class_id}")

    def read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """The mask window ``[row_off:row_off+height, col_off:col_off+width]`` as a 2-D array."""
        if self.kind == "zarr":
            array = _zarr_array(self.path, "mask")
            return np.asarray(array[row_off : row_off + height, col_off : col_off + width])
        window = rasterio.windows.Window(col_off, row_off, width, height)
        with open_dataset(self.path) as src:
            return checked_read(src, 1, window=window)  # a failed request is never mask

    def read_probabilities(self, row_off: int, col_off: int, height: int,
                           width: int) -> np.ndarray:
        """Stored class probabilities ``(classes, height, width)``, still in their stored dtype."""
        array = _zarr_array(self.path, "probabilities")
        return np.asarray(array[:, row_off : row_off + height, col_off : col_off + width])


def open_mask(path: str | os.PathLike[str]) -> MaskSource:
    """Describe the mask at ``path`` (GeoTIFF or any GDAL raster, or a tileseg Zarr group).

    Raises :class:`InputNotFoundError` when it does not exist and :class:`InputError` when it is not
    a single-band integer raster or an incomplete tileseg Zarr.
    """
    path = os.fspath(path)
    mask = location(path)
    # a Zarr mask through zarr (its obstore-backed store on a store), anything else through GDAL
    if mask.is_zarr():
        return _open_zarr(path.rstrip("/") if path.rstrip("/").endswith(".zarr") else path)
    if not is_remote(path) and not os.path.exists(path):
        raise InputNotFoundError(f"{path}: no such file or directory; check the mask path")
    return _open_gdal(path)


def _open_gdal(path: str) -> MaskSource:
    try:
        src = open_dataset(path)
    except rasterio.errors.RasterioIOError as exc:
        if is_remote(path):
            raise InputError(f"{path}: cannot be read ({gdal_message(exc)}); check the URL, the "
                             "credentials and AWS_ENDPOINT_URL") from None
        raise InputError(
            f"{path}: not a raster GDAL can open; pass a GeoTIFF or Zarr mask written by predict"
        ) from None
    with src:
        if src.count != 1:
            raise InputError(f"{path}: has {src.count} bands; a class mask has one band of class "
                             "ids (run predict first)")
        dtype = np.dtype(src.dtypes[0])
        if dtype.kind not in "ui":
            raise InputError(f"{path}: band 1 is {dtype.name}; a class mask must hold integer "
                             "class ids (round or classify it first)")
        nodata = None if src.nodata is None else int(src.nodata)
        classes = _classes_from_tags(path, src.tags())
        block_h, block_w = src.block_shapes[0]
        return MaskSource(
            path=path, kind="gtiff", height=src.height, width=src.width, dtype=dtype.name,
            nodata=nodata, transform=src.transform,
            crs_wkt=src.crs.to_wkt() if src.crs else None, class_names=classes,
            chunks=_aligned(DEFAULT_CHUNK_SIZE, block_h, block_w),
        )


def _aligned(size: int, block_h: int, block_w: int) -> tuple[int, int]:
    # Whole GDAL blocks per chunk, so no block is decoded by two tasks; but a strip as wide as a
    # huge raster is split rather than read whole.
    return tuple(b if b <= size else size for b in  # type: ignore[return-value]
                 (max(1, size // block_h) * block_h, max(1, size // block_w) * block_w))


def _classes_from_tags(path: str, tags: dict[str, str]) -> dict[int, str]:
    try:
        return mask_format.class_names(mask_format.classes_from_tags(tags) or [])
    except ValueError as exc:
        logger.warning("%s: %s; naming classes class_<id>", path, exc)
        return {}


def _open_zarr(path: str) -> MaskSource:
    import zarr

    try:
        root = zarr.open_group(location(path).zarr_store(read_only=True), mode="r")
    except Exception as exc:  # zarr raises several unrelated types for a broken store
        raise InputError(f"{path}: not a readable Zarr group ({exc}); pass a mask written by "
                         "predict") from None
    facts = mask_format.read_facts(root)
    if facts is None or "mask" not in root:
        raise InputError(f"{path}: not a tileseg Zarr mask (no 'tileseg' attribute or 'mask' "
                         "array); write it with tileseg predict")
    if facts.get("complete") is not True:
        raise InputError(f"{path}: the predict run that writes this Zarr did not finish; run "
                         "predict again with resume", params=("resume",))
    mask = _zarr_array(path, "mask", root)
    dtype = np.dtype(mask.dtype)
    if dtype.kind not in "ui" or len(mask.shape) != 2:
        raise InputError(f"{path}: 'mask' is {dtype.name} with shape {tuple(mask.shape)}; expected a 2-D "
                         "integer array of class ids")
    has_probs = "probabilities" in root
    scale = 1.0
    if has_probs:
        probs = _zarr_array(path, "probabilities", root)
        if np.dtype(probs.dtype).kind in "ui":
            factor: Any = probs.attrs.get("scale_factor", 1.0 / np.iinfo(probs.dtype).max)
            scale = float(factor)
    nodata = facts.get("nodata")
    return MaskSource(
        path=path if is_remote(path) else str(Path(path)), kind="zarr",
        height=int(mask.shape[0]), width=int(mask.shape[1]),
        dtype=dtype.name, nodata=None if nodata is None else int(nodata),
        transform=Affine(*facts["transform"][:6]), crs_wkt=facts.get("crs_wkt") or None,
        class_names=mask_format.class_names(facts.get("classes", [])),
        chunks=(int(mask.chunks[0]), int(mask.chunks[1])), has_probabilities=has_probs,
        probability_scale=scale,
    )


def _zarr_array(path: str, name: str, root: Any = None) -> Any:
    """The array ``name`` of the Zarr group at ``path`` (a sub-group there is an input error)."""
    import zarr

    if root is None:
        root = zarr.open_group(location(path).zarr_store(read_only=True), mode="r")
    node = root[name]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{path}: '{name}' is a group, not an array; rewrite it with predict")
    return node
