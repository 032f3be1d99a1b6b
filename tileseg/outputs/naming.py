"""Default output names, so ``tileseg predict scene.tif`` needs no destination.

Defaults go to the current folder and are named after the source's file name, whatever its
location (a local path, ``s3://``, ``https://`` or a GDAL ``/vsi`` path): ``scene.tif`` gives
``scene.mask.tif`` and ``scene.mask.tif`` gives ``scene.mask.gpkg``. A default is never the
source itself; whether it may replace an existing file is the usual ``--overwrite`` rule.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tileseg.errors import OutputError

# a batch scene's destination without a dst of its own: OUTPUT_DIR/<source stem><suffix>
DEFAULT_SUFFIX = "_mask.tif"


def source_name(src: str) -> str:
    """The file name of a local or remote source, without a URL's query string (an item of a
    STAC ItemCollection, ``collection.json#ID``, is named ``ID.json``)."""
    from tileseg.sources.subdatasets import parse_subdataset

    sub = parse_subdataset(src)
    if sub is not None and sub.file is not None:  # NETCDF:"scene.nc":ndvi -> scene_ndvi.nc
        file = Path(sub.file)
        return f"{file.stem}_{sub.label}{file.suffix}" if sub.label else file.name
    location, sep, fragment = src.partition("#")
    if sep and fragment and location.lower().endswith((".json", ".geojson")):
        return f"{fragment}.json"  # an item of an ItemCollection: collection.json#ITEM_ID
    path = src.split("?", 1)[0].rstrip("/")
    name = PurePosixPath(path).name if "://" in path or path.startswith("/vsi") else Path(path).name
    return name or "output"


def default_mask_path(src: str, fmt: str | None = None) -> str:
    """``<source stem>.mask.tif`` (``.zarr`` for the Zarr format) in the current folder.

    Examples
    --------
    >>> default_mask_path("s3://bucket/tiles/scene.tif")
    'scene.mask.tif'
    >>> default_mask_path("scene.tif", "zarr")
    'scene.mask.zarr'
    """
    stem = PurePosixPath(source_name(src)).stem
    return f"{stem}.mask{'.zarr' if fmt == 'zarr' else '.tif'}"


def default_polygons_path(mask: str) -> str:
    """``<mask stem>.gpkg`` in the current folder, ``<stem>.polygons.gpkg`` when the mask itself
    is a GeoPackage of that name.

    Examples
    --------
    >>> default_polygons_path("out/scene.mask.tif")
    'scene.mask.gpkg'
    >>> default_polygons_path("mask.gpkg")
    'mask.polygons.gpkg'
    """
    name = source_name(mask)
    stem = PurePosixPath(name).stem
    candidate = f"{stem}.gpkg"
    return f"{stem}.polygons.gpkg" if candidate.lower() == name.lower() else candidate


def check_not_source(dst: str | os.PathLike[str], src: str) -> None:
    """Refuse a destination that is the source file itself (even with ``--overwrite``)."""
    if "://" in os.fspath(dst) or "://" in src or src.startswith("/vsi"):
        from tileseg.outputs.paths import object_key

        key = object_key(os.fspath(dst))
        if key is not None and key == object_key(src):
            raise OutputError(f"{os.fspath(dst)}: is the source mask itself; choose another "
                              "destination")
        return
    try:
        same = os.path.samefile(dst, src)
    except OSError:  # either does not exist (or is remote): they cannot be the same file
        return
    if same:
        raise OutputError(f"{os.fspath(dst)}: is the source raster itself; choose another "
                          "destination")
