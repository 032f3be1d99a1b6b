"""Writing polygon layers: GeoPackage, GeoParquet, GeoJSON, FlatGeobuf, chosen by extension.

Every format is written to a temporary name next to the destination and renamed into place only
when complete, so a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import shapely

from tileseg.errors import OutputError
from tileseg.metadata import ClassInfo
from tileseg.styles import add_layer_style

logger = logging.getLogger(__name__)

VectorFormat = Literal["gpkg", "parquet", "geojson", "fgb"]

_EXTENSIONS: dict[str, VectorFormat] = {
    ".gpkg": "gpkg", ".parquet": "parquet", ".geoparquet": "parquet", ".geojson": "geojson",
    ".json": "geojson", ".fgb": "fgb",
}
_OGR_DRIVERS = {"gpkg": "GPKG", "geojson": "GeoJSON", "fgb": "FlatGeobuf"}


def format_for(path: str | os.PathLike[str]) -> VectorFormat:
    """The vector format of ``path`` from its extension; :class:`OutputError` when unknown."""
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise OutputError(
            f"{os.fspath(path)}: unknown polygon format {ext or 'without extension'!r}; use .gpkg, "
            ".parquet, .geojson or .fgb"
        )
    return _EXTENSIONS[ext]


def check_destination(path: str | os.PathLike[str], overwrite: bool) -> VectorFormat:
    """Validate ``path`` before any work: known format, writable folder, not in the way."""
    fmt = format_for(path)
    dst = Path(path)
    if dst.is_dir():
        raise OutputError(f"{dst}: is a directory; pass a file name such as polygons.gpkg")
    if dst.exists() and not overwrite:
        raise OutputError(f"{dst}: already exists; pass --overwrite to replace it")
    if not dst.parent.is_dir():
        raise OutputError(f"{dst.parent}: folder does not exist; create it first")
    return fmt


BATCH = 100_000  # features encoded to WKB at a time, so the encoded copy stays small


def write_layer(
    path: str | os.PathLike[str],
    geometry: np.ndarray,
    fields: Mapping[str, np.ndarray],
    crs_wkt: str | None,
    *,
    overwrite: bool = False,
    style: Sequence[ClassInfo] = (),
) -> None:
    """Write polygons with attribute ``fields`` to ``path`` as MultiPolygons, atomically.

    A GeoPackage also gets ``style`` (the classes' names and colours) as its default QGIS layer
    style, written before the rename like the features.
    """
    fmt = check_destination(path, overwrite)
    dst = Path(path)
    tmp = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")
    try:
        if fmt == "parquet":
            _write_geoparquet(tmp, geometry, fields, crs_wkt)
        else:
            _write_ogr(tmp, fmt, dst.stem, geometry, fields, crs_wkt)
            if fmt == "gpkg":
                add_layer_style(tmp, dst.stem, style)
        os.replace(tmp, dst)
    except (OSError, sqlite3.Error) as exc:
        raise OutputError(f"{dst}: cannot write ({exc}); check the folder and free space") from exc
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


def _write_ogr(tmp: Path, fmt: VectorFormat, layer: str, geometry: np.ndarray,
               fields: Mapping[str, np.ndarray], crs_wkt: str | None) -> None:
    import pyogrio.raw

    for start in range(0, max(len(geometry), 1), BATCH):
        part = slice(start, start + BATCH)
        pyogrio.raw.write(
            str(tmp), geometry=shapely.to_wkb(geometry[part]),
            field_data=[values[part] for values in fields.values()], fields=list(fields),
            layer=layer, driver=_OGR_DRIVERS[fmt], geometry_type="MultiPolygon",
            promote_to_multi=True, crs=crs_wkt, append=start > 0,
        )


def _write_geoparquet(tmp: Path, geometry: np.ndarray, fields: Mapping[str, np.ndarray],
                      crs_wkt: str | None) -> None:
    # pyogrio's bundled GDAL has no Parquet driver, so write GeoParquet 1.1 with pyarrow:
    # WKB geometry column plus the "geo" file metadata (CRS as PROJJSON, bbox, geometry types).
    import pyarrow as pa
    import pyarrow.parquet as pq

    column_meta: dict[str, object] = {"encoding": "WKB", "geometry_types": ["MultiPolygon"]}
    # Absent "crs" means OGC:CRS84 in GeoParquet; an unknown CRS must be an explicit null.
    column_meta["crs"] = _projjson(crs_wkt) if crs_wkt else None
    if len(geometry):
        column_meta["bbox"] = [float(v) for v in shapely.total_bounds(geometry)]
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column_meta}}
    schema = pa.schema([*(pa.field(name, pa.string() if values.dtype == object
                                   else pa.from_numpy_dtype(values.dtype))
                          for name, values in fields.items()),
                        pa.field("geometry", pa.binary())], metadata={"geo": json.dumps(geo)})
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for start in range(0, len(geometry), BATCH):
            part = slice(start, start + BATCH)
            columns = [pa.array(values[part]) for values in fields.values()]
            columns.append(pa.array(shapely.to_wkb(_to_multipolygons(geometry[part])),
                                    type=pa.binary()))
            writer.write_batch(pa.record_batch(columns, schema=schema))


def _to_multipolygons(geometry: np.ndarray) -> np.ndarray:
    # One geometry type per layer (8-connected components can be MultiPolygons anyway).
    if not len(geometry):
        return geometry
    parts, index = shapely.get_parts(geometry, return_index=True)
    return shapely.multipolygons(parts, indices=index)


def _projjson(crs_wkt: str) -> object:
    from rasterio.crs import CRS

    return CRS.from_wkt(crs_wkt).to_dict(projjson=True)
