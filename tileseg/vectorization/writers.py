"""Writing polygon layers: GeoPackage, GeoParquet, GeoJSON, FlatGeobuf, chosen by extension.

Every format is written to a temporary name next to the destination (``.NAME.partial-PID.EXT``)
and renamed into place only when complete, so a crash never leaves a file that looks finished;
a later run to the same folder removes the partial files of runs that died.

Every layer carries a marker saying tileseg wrote it, so ``--overwrite`` replaces only such a
layer, never a user's file that happens to have the destination's name:

* GeoPackage: layer metadata item ``TILESEG`` (GDAL metadata in ``gpkg_metadata``, referenced
  to the feature table). Not dataset metadata, which earlier versions wrote: GDAL loads a
  GeoPackage's dataset metadata into its PAM layer whenever a reader opens the file, and saves
  it as ``NAME.gpkg.aux.xml`` when the reader closes it (geopandas left one beside every
  GeoPackage); such a marker is still recognised.
* FlatGeobuf: layer metadata item ``TILESEG`` (in the header's metadata)
* GeoParquet: file key-value metadata ``tileseg``
* GeoJSON: a ``"tileseg"`` foreign member of the FeatureCollection (RFC 7946, section 6.1)

Each holds JSON: ``{"writer": "tileseg", "version": ..., "mask": ...}``.

A destination on an object store (``s3://``, ``gs://``, ``az://``) is written to a local
temporary file and uploaded once (:mod:`tileseg.outputs.store_objects`): the object appears whole or not
at all. An existing object is proved tileseg's by downloading it and reading the same marker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from tileseg.choices import VECTOR_FORMATS, VectorFormat, choice_words
from tileseg.errors import DestinationBusyError, DiskFullError, OutputError
from tileseg.models.metadata import ClassInfo
from tileseg.outputs.location import location
from tileseg.outputs.styles import add_layer_style

logger = logging.getLogger(__name__)

# each format's name is its extension; two more spellings
_EXTENSIONS: dict[str, VectorFormat] = {
    **{f".{fmt}": fmt for fmt in VECTOR_FORMATS}, ".geoparquet": "parquet", ".json": "geojson",
}
_OGR_DRIVERS = {"gpkg": "GPKG", "geojson": "GeoJSON", "fgb": "FlatGeobuf"}
MARKER_KEY = "tileseg"  # GeoParquet key-value metadata and GeoJSON foreign member
OGR_MARKER_KEY = "TILESEG"  # GDAL metadata item (GeoPackage dataset, FlatGeobuf layer)
_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>\d+)(?P<suffix>\.[A-Za-z0-9]+)"
                      r"(?:-journal|-wal|-shm)?$")


def format_for(path: str | os.PathLike[str]) -> VectorFormat:
    """The vector format of ``path`` from its extension; :class:`OutputError` when unknown."""
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise OutputError(
            f"{os.fspath(path)}: unknown polygon format {ext or 'without extension'!r}; use "
            f"{choice_words(['.' + f for f in VECTOR_FORMATS])}"
        )
    return _EXTENSIONS[ext]


def check_destination(path: str | os.PathLike[str], overwrite: bool) -> VectorFormat:
    """Validate ``path`` before any work: known format, writable folder, not in the way.

    An existing file is replaced only with ``overwrite`` and only when tileseg wrote it (it
    carries the marker, see the module docstring); anything else stays, with an
    :class:`OutputError` (exit 4).
    """
    fmt = format_for(path)
    dst = location(path)
    dst.check_replaceable(overwrite=overwrite, owned=_is_layer, foreign=_foreign(path))
    dst.check_lock_name()
    return fmt


def _foreign(dst: str | os.PathLike[str]) -> str:
    return (f"{os.fspath(dst)}: exists and is not a polygon layer tileseg wrote (no tileseg "
            "marker), so overwrite leaves it; choose another DST or remove it")


def _is_layer(path: Path) -> bool:
    return read_marker(path) is not None


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker tileseg stored in the layer at ``path``, or None (not tileseg's, unreadable)."""
    try:
        fmt = format_for(path)
    except OutputError:
        return None
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            text: Any = (pq.read_schema(path).metadata or {}).get(MARKER_KEY.encode())
        elif fmt == "geojson":
            text = _geojson_member(Path(path), MARKER_KEY)
        else:
            import pyogrio

            # layer 0, the features (named: the style table is a layer too, and pyogrio warns
            # when it has to choose)
            info = pyogrio.read_info(os.fspath(path), layer=0)
            text = (info.get("layer_metadata") or {}).get(OGR_MARKER_KEY)
            if text is None and fmt == "gpkg":  # a GeoPackage an earlier version wrote
                text = (info.get("dataset_metadata") or {}).get(OGR_MARKER_KEY)
        marker = json.loads(text) if text else None
    except Exception:  # not a layer at all, or damaged: in any case not provably ours
        return None
    return marker if isinstance(marker, dict) and marker.get("writer") == "tileseg" else None


def _geojson_member(path: Path, key: str) -> str | None:
    # GDAL writes foreign members right after "type": read the head, never the whole file.
    with path.open("rb") as f:
        head = f.read(65536).decode("utf-8", "replace")
    if '"FeatureCollection"' not in head[:200]:
        return None
    for line in head.splitlines()[:8]:
        line = line.strip()
        if line.startswith(f'"{key}":'):
            return line[len(key) + 3 :].rstrip(",").strip()
    return None


def partial_path(dst: Path, pid: int | None = None) -> Path:
    """The hidden name ``dst`` is written under until it is complete."""
    return dst.with_name(f".{dst.stem}.partial-{os.getpid() if pid is None else pid}{dst.suffix}")


def remove_stale_partials(dst: Path) -> list[Path]:
    """Remove partial layers in ``dst``'s folder left by runs that died (kill -9, power loss).

    Call it holding ``dst``'s run lock: every partial of ``dst`` itself is then stale. A partial of
    another destination goes only when its process is gone and nobody holds that destination's
    lock. Returns the removed paths.
    """
    from tileseg.outputs.runlock import exclusive_run

    removed: list[Path] = []
    folder = dst.parent if str(dst.parent) else Path(".")
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _PARTIAL.match(name)
        if match is None or int(match["pid"]) == os.getpid():
            continue
        path = folder / name
        target = folder / f"{match['stem']}{match['suffix']}"
        if target.name == dst.name:
            _unlink(path, removed)
            continue
        if _alive(int(match["pid"])):
            continue
        with contextlib.suppress(DestinationBusyError, OutputError), exclusive_run(target):
            _unlink(path, removed)
    if removed:
        logger.info("removed %d partial file(s) of interrupted runs: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


def _unlink(path: Path, removed: list[Path]) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        removed.append(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, as another user's process
    return True


def default_marker() -> dict[str, Any]:
    from tileseg._version import __version__

    return {"writer": "tileseg", "version": __version__}


BATCH = 100_000  # features encoded to WKB at a time, so the encoded copy stays small


def write_layer(
    path: str | os.PathLike[str],
    geometry: np.ndarray,
    fields: Mapping[str, np.ndarray],
    crs_wkt: str | None,
    *,
    overwrite: bool = False,
    style: Sequence[ClassInfo] = (),
    marker: Mapping[str, Any] | None = None,
) -> None:
    """Write polygons with attribute ``fields`` to ``path`` as MultiPolygons, atomically.

    A GeoPackage also gets ``style`` (the classes' names and colours) as its default QGIS layer
    style, written before the rename like the features. ``marker`` (default: writer and
    version) is stored as the module docstring says; it is what lets a later ``overwrite``
    prove the file is tileseg's. A ``path`` on an object store is written locally and uploaded
    once, only over what the check found (see :mod:`tileseg.outputs.store_objects`).
    """
    fmt = format_for(path)
    from tileseg.deps import require

    # before the temporary file exists: a missing writer is exit 6 with nothing left behind
    require("pyarrow.parquet" if fmt == "parquet" else "pyogrio.raw", f"{fmt} output")
    layer = Path(os.fspath(path)).stem
    text = json.dumps({**default_marker(), **(marker or {})})
    try:
        # OGR's errors carry no errno: a full disk is also told from the space left (before
        # the partial file is removed); on a disk the partial file has a name a later run
        # sweeps if this process dies (remove_stale_partials)
        with location(path).replacing(owned=_is_layer, foreign=_foreign(path),
                                      overwrite=overwrite, gdal=fmt != "parquet",
                                      temporary=partial_path(Path(os.fspath(path)))) as tmp:
            try:
                if fmt == "parquet":
                    _write_geoparquet(tmp, geometry, fields, crs_wkt, text)
                else:
                    _write_ogr(tmp, fmt, layer, geometry, fields, crs_wkt, text)
                    if fmt == "gpkg":
                        add_layer_style(tmp, layer, style)
            finally:  # what SQLite may leave beside a GeoPackage it did not finish
                for leftover in (tmp.with_name(tmp.name + end) for end in ("-journal", "-wal",
                                                                          "-shm")):
                    leftover.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as exc:
        if isinstance(exc, DiskFullError):
            raise
        raise OutputError(f"{os.fspath(path)}: cannot write ({exc}); check the folder and "
                          "free space") from exc


def _write_ogr(tmp: Path, fmt: VectorFormat, layer: str, geometry: np.ndarray,
               fields: Mapping[str, np.ndarray], crs_wkt: str | None, marker: str) -> None:
    import pyogrio.raw

    options: dict[str, Any] = {}
    if fmt in ("gpkg", "fgb"):  # layer metadata: see the module docstring for why not dataset
        options["layer_metadata"] = {OGR_MARKER_KEY: marker}
    else:
        layer_options = {"FOREIGN_MEMBERS_COLLECTION": json.dumps({MARKER_KEY: json.loads(marker)})}
        if crs_wkt and is_wgs84_lonlat(crs_wkt):
            # RFC 7946: no "crs" member, exterior rings counterclockwise; 9 decimals (0.1 mm)
            # rather than GDAL's 7 (1 cm) keep the pixel edges of centimetre imagery in place
            layer_options["RFC7946"] = "YES"
            layer_options["COORDINATE_PRECISION"] = "9"
        options["layer_options"] = layer_options
    for start in range(0, max(len(geometry), 1), BATCH):
        part = slice(start, start + BATCH)
        pyogrio.raw.write(
            str(tmp), geometry=shapely.to_wkb(geometry[part]),
            field_data=[values[part] for values in fields.values()], fields=list(fields),
            layer=layer, driver=_OGR_DRIVERS[fmt], geometry_type="MultiPolygon",
            promote_to_multi=True, crs=crs_wkt, append=start > 0,
            **(options if start == 0 else {}),
        )


def is_wgs84_lonlat(crs_wkt: str) -> bool:
    """True for WGS 84 longitude/latitude (OGC:CRS84, or EPSG:4326 in GIS axis order)."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    return crs.to_string() == "OGC:CRS84" or crs.to_epsg() == 4326


def _write_geoparquet(tmp: Path, geometry: np.ndarray, fields: Mapping[str, np.ndarray],
                      crs_wkt: str | None, marker: str) -> None:
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
                        pa.field("geometry", pa.binary())],
                       metadata={"geo": json.dumps(geo), MARKER_KEY: marker})
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
