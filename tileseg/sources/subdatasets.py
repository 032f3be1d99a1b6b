"""GDAL subdataset names: one raster inside a container file (NetCDF, HDF5, GeoPackage...).

A NetCDF or HDF5 file with several variables, a multi-page TIFF or a GeoPackage with several
raster tables is a *container*: GDAL opens it with no bands of its own and lists its rasters as
*subdatasets*, each named ``DRIVER:file:name`` (``NETCDF:"scene.nc":ndvi``,
``HDF5:"scene.h5"://group/ndvi``, ``GTIFF_DIR:2:scene.tif``, ``GPKG:scene.gpkg:table``). Such a
name is not a path on disk, so tileseg recognises it by its driver prefix and checks the file
inside it instead; a container opened without one is refused with the names to choose from.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tileseg.errors import InputError, InputNotFoundError

_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(?!//)(.+)$")
_REMOTE = re.compile(r"/vsi|\b(s3|gs|az|https?)://")  # not HDF5's "file"://group/name
_SHOWN = 8  # subdataset names listed in a message; the rest are counted


@functools.lru_cache(maxsize=1)
def _driver_names() -> frozenset[str]:
    import rasterio

    with rasterio.Env() as env:
        return frozenset(name.upper() for name in env.drivers())


@dataclass(frozen=True)
class Subdataset:
    """A GDAL subdataset name split into its driver prefix and the file it names: a local file
    that exists (None when no part of the name is one), or the quoted remote one."""

    name: str
    prefix: str
    file: str | None
    remote: bool

    @property
    def label(self) -> str:
        """What in the name is not the file (``ndvi``, ``2``, ``group_ndvi``), for file names."""
        rest = self.name[len(self.prefix) + 1:]
        if self.file is not None:
            rest = rest.replace(f'"{self.file}"', ":", 1).replace(self.file, ":", 1)
        return "_".join(re.findall(r"[A-Za-z0-9\-]+", rest))


def parse_subdataset(name: str) -> Subdataset | None:
    """``name`` as a GDAL subdataset name, or None when it is not one.

    It is one when it starts with a GDAL driver's name (or that name and ``_`` and a qualifier,
    as ``GTIFF_DIR`` or ``HDF4_SDS``) and a colon, and is not itself a file that exists (a file
    may have a colon in its name).

    Examples
    --------
    >>> parse_subdataset('NETCDF:"scene.nc":ndvi').prefix  # doctest: +SKIP
    'NETCDF'
    >>> parse_subdataset("scene.tif") is None
    True
    """
    match = _PREFIX.match(name)
    if match is None or os.path.lexists(name):
        return None
    prefix, rest = match.groups()
    drivers = _driver_names()
    upper = prefix.upper()
    if upper not in drivers and not any(upper.startswith(d + "_") for d in drivers):
        return None
    if _REMOTE.search(rest) is not None:  # GDAL reads it; nothing to check here
        quoted = re.search(r'"([^"]+)"', rest)
        return Subdataset(name, prefix, quoted.group(1) if quoted else None, True)
    return Subdataset(name, prefix, _file_in(rest), False)


def _file_in(rest: str) -> str | None:
    """The part of a subdataset name (after its prefix) that is a file here: the quoted one,
    else the longest run of ``:``-separated parts that exists (``GTIFF_DIR:2:a.tif``)."""
    quoted = re.search(r'"([^"]+)"', rest)
    if quoted:
        return quoted.group(1) if os.path.exists(quoted.group(1)) else None
    parts = rest.split(":")
    for size in range(len(parts), 0, -1):
        for start in range(len(parts) - size + 1):
            candidate = ":".join(parts[start:start + size])
            if candidate and os.path.isfile(candidate):
                return candidate
    return None


def check_subdataset_name(name: str) -> Subdataset | None:
    """The subdataset ``name`` names, its file checked: a name whose file does not exist here
    is an :class:`~tileseg.errors.InputNotFoundError` that says so (exit 2). None: not such a name."""
    sub = parse_subdataset(name)
    if sub is not None and sub.file is None and not sub.remote:
        raise InputNotFoundError(f"{name}: a GDAL subdataset name ({sub.prefix}:...) whose file does "
                         f'not exist here; check the path ({sub.prefix}:"FILE":VARIABLE)')
    return sub


def raster_exists(path: str) -> bool:
    """Whether a local raster path exists: a file or folder, or a subdataset name whose file
    does (remote paths are for GDAL to find)."""
    if os.path.exists(path):
        return True
    sub = parse_subdataset(path)
    return sub is not None and (sub.file is not None or sub.remote)


def local_file(path: str) -> str:
    """The file behind ``path``: the file a subdataset name names, else ``path``."""
    sub = parse_subdataset(path)
    return sub.file if sub is not None and sub.file is not None else path


def container_error(src: Any, path: str) -> InputError:
    """A raster with no bands: the subdatasets to choose from and how, on one line (exit 2)."""
    names = list(src.subdatasets or ())
    if not names:
        return InputError(f"{path}: has no raster bands GDAL can read; pass a raster file")
    shown = ", ".join(names[:_SHOWN])
    more = (f" and {len(names) - _SHOWN} more, which gdalinfo {Path(path).name} lists"
            if len(names) > _SHOWN else "")
    return InputError(
        f"{path}: holds {len(names)} rasters (GDAL subdatasets: {shown}{more}) and no bands of "
        f"its own; pass one of them instead of the file, e.g. '{names[0]}' (the form is "
        f"DRIVER:\"FILE\":NAME)"
    )
