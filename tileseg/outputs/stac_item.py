"""A STAC item for every output: what was made, on which grid, by which model, from what.

Beside the mask ``scene.mask.tif`` (or ``scene.mask.zarr``) tileseg writes ``scene.mask.stac.json``:
named after the mask so it sorts beside it and its sibling outputs (``scene.mask.gpkg``,
``scene.mask.png``), with ``.stac.json`` so it is never taken for the run report or another
JSON file. Its assets are the mask and, when written, the Zarr, the probabilities, the polygons
and the preview, with hrefs relative to the item. It carries the projection, raster,
classification, file and processing extensions, the model in the Machine Learning Model (MLM)
extension's terms, and a ``derived_from`` link to the source item when the source was one.

The item is plain JSON written here, not by pystac or rio-stac: tileseg has every fact in hand
(rio-stac would open the mask again, from the store for ``s3://`` outputs, and knows nothing of
classes or models), and the default-on item then needs no extra package. Tests read it back with
pystac's extension accessors.

It is written atomically (a temporary name and a rename; one conditional PUT on a store) and
replaces only an item tileseg wrote (its ``tileseg:output`` property), as every output does.
A model's own MLM item (``tileseg model export-stac``, :func:`export_stac`) is written the same
way; what both say about the model is :func:`tileseg.models.formats.mlm.mlm_properties`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from tileseg.errors import ModelError, OutputError
from tileseg.models.formats.mlm import (
    MLM_SCHEMA,
    artifact_fields,
    artifact_of,
    classification_classes,
    is_our_item,
    mlm_properties,
)
from tileseg.models.formats.mlm import stac_item as model_item
from tileseg.outputs.location import location
from tileseg.outputs.ownership import ITEM_MARK, ITEM_MARK_VALUE, is_output_item
from tileseg.outputs.store import is_store_url

if TYPE_CHECKING:
    from tileseg.models.loaded import LoadedModel
    from tileseg.sources.raster import RasterInfo

logger = logging.getLogger(__name__)

STAC_VERSION = "1.1.0"
ITEM_SUFFIX = ".stac.json"

EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "mlm": MLM_SCHEMA,
}
MEDIA_TYPES = {
    "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
    "gtiff": "image/tiff; application=geotiff",
    "zarr": "application/vnd+zarr",
    ".gpkg": "application/geopackage+sqlite3",
    ".parquet": "application/vnd.apache.parquet",
    ".geojson": "application/geo+json",
    ".fgb": "application/vnd.flatgeobuf",
    ".png": "image/png",
}


def item_path(dst: str) -> str:
    """Where the item of the mask ``dst`` goes: ``scene.mask.tif`` -> ``scene.mask.stac.json``
    beside it (``mask.zarr`` -> ``mask.stac.json``), on a store as locally.

    >>> item_path("out/scene.mask.tif"), item_path("s3://b/run/mask.zarr/")
    ('out/scene.mask.stac.json', 's3://b/run/mask.stac.json')
    """
    text = dst.rstrip("/")
    head, sep, name = text.rpartition("/")
    stem = PurePosixPath(name).stem if PurePosixPath(name).suffix else name
    return f"{head}{sep}{stem}{ITEM_SUFFIX}"


def is_tileseg_item(path: Path) -> bool:
    """A JSON file whose ``tileseg:output`` property says tileseg wrote it."""
    return is_output_item(path)


def _foreign(path: str) -> str:
    return (f"{path}: exists and was not written by tileseg (no {ITEM_MARK} property), so the "
            "output's STAC item may not replace it; move it away, or turn the item off with "
            "stac_item")


def check_item_destination(path: str) -> None:
    """Before any work: an item there may be replaced (tileseg wrote it), else exit 4."""
    if is_store_url(path):
        from tileseg.outputs.store_objects import inspect_object

        if inspect_object(path, is_tileseg_item) is None:
            raise OutputError(_foreign(path), params=("stac_item",))
        return
    target = Path(path)
    if target.is_symlink() or target.is_dir() or (target.exists()
                                                  and not is_tileseg_item(target)):
        raise OutputError(_foreign(path), params=("stac_item",))


def write_item(path: str, item: dict[str, Any]) -> None:
    """Write ``item`` at ``path`` whole or not at all, over an item tileseg wrote only."""
    with location(path).replacing(owned=is_tileseg_item, foreign=_foreign(path),
                                  what="STAC item path", params=("stac_item",)) as local:
        local.write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------
# The model (its MLM fields are tileseg.models.formats.mlm's)
# ------------------------------------------------------------------------------------------


def input_band_names(model: LoadedModel, bands: tuple[str, ...] = ()) -> list[str]:
    """The model's input bands by name: its metadata's, else the source's, else numbered."""
    meta = model.metadata
    if meta.bands:
        return list(meta.bands)
    if len(bands) == meta.in_channels and all(bands):
        return list(bands)
    return [f"band_{i + 1}" for i in range(meta.in_channels)]


def model_asset(model: LoadedModel, item_href: str,
                bands: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The model's file as an ``mlm:model`` asset (described as the model's own MLM item
    describes it, :mod:`tileseg.models.formats.mlm`; its input bands named in
    ``raster:bands``), or None for a model object that came from no file."""
    try:
        artifact = artifact_of(model)
    except ModelError:
        return None
    if not artifact.is_file():
        return None
    names = input_band_names(model, bands)
    return {"href": relative_href(str(artifact.absolute()), item_href),
            **artifact_fields(model, artifact, data=False),
            "raster:bands": [{"name": n} for n in names]}


# ------------------------------------------------------------------------------------------
# The item
# ------------------------------------------------------------------------------------------


class SourceItem(Protocol):
    """What the output item takes from the STAC item a run's source was
    (:class:`tileseg.scenes.stac.SceneItem`): its times, its link, its collection."""

    @property
    def id(self) -> str: ...

    @property
    def href(self) -> str | None: ...

    @property
    def properties(self) -> dict[str, Any]: ...

    @property
    def collection(self) -> str | None: ...

    @property
    def links(self) -> list[dict[str, Any]]: ...


@dataclass
class OutputAssets:
    """What a run wrote, as the item lists it: paths or URLs, with local files for sizes."""

    mask: str
    mask_format: str  # "cog", "gtiff" or "zarr"
    mask_file: Path | None = None  # the built GeoTIFF before its move or upload
    zarr: str | None = None
    probabilities: str | None = None  # "uint8" or "float16" when kept
    polygons: str | None = None
    preview: str | None = None
    extra_files: dict[str, Path] = field(default_factory=dict)  # asset -> local file


def relative_href(target: str, item: str) -> str:
    """``target`` relative to the item (``./scene.mask.tif``) when they share a folder tree
    on one disk or one bucket; absolute otherwise."""
    if is_store_url(target) != is_store_url(item):
        return target
    if is_store_url(target):
        t_scheme, _, t_rest = target.partition("://")
        i_scheme, _, i_rest = item.partition("://")
        if t_scheme != i_scheme or t_rest.split("/", 1)[0] != i_rest.split("/", 1)[0]:
            return target
        rel = posixpath.relpath(t_rest.rstrip("/"), posixpath.dirname(i_rest))
    else:
        rel = os.path.relpath(os.path.abspath(target),
                              os.path.dirname(os.path.abspath(item))).replace(os.sep, "/")
    return rel if rel.startswith("../") else f"./{rel}"


def file_fields(path: Path) -> dict[str, Any]:
    """``file:size`` and ``file:checksum`` (a SHA2-256 multihash, as the extension writes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file:size": path.stat().st_size, "file:checksum": "1220" + digest.hexdigest()}


def _map_xy(raster: RasterInfo, col: float, row: float) -> tuple[float, float]:
    """The map coordinates of a pixel corner, from the transform's six coefficients (affine 2
    has no ``@`` for points and affine 3 deprecates ``*``: rasterio takes either)."""
    a, b, c, d, e, f = (float(v) for v in raster.transform[:6])
    return a * col + b * row + c, d * col + e * row + f


def footprint(raster: RasterInfo) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The raster's outline in longitude/latitude (GeoJSON) and its bbox; None without a CRS."""
    if raster.crs_wkt is None:
        return None, None
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    corners = [_map_xy(raster, col, row)
               for col, row in ((0, 0), (raster.width, 0), (raster.width, raster.height),
                                (0, raster.height))]
    outline = shapely.Polygon(corners)
    side = max(outline.bounds[2] - outline.bounds[0], outline.bounds[3] - outline.bounds[1])
    dense = shapely.segmentize(outline, side / 16 or 1.0)
    geometry = transform_geom(CRS.from_wkt(raster.crs_wkt), "EPSG:4326", dense.__geo_interface__)
    shape = shapely.geometry.shape(geometry)
    rounded = shapely.set_precision(shape, 1e-9)
    bbox = [round(v, 9) for v in rounded.bounds]
    return shapely.geometry.mapping(rounded), bbox


def _proj_fields(raster: RasterInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"proj:shape": [raster.height, raster.width],
                           "proj:transform": [float(v) for v in raster.transform[:6]]}
    if raster.crs_wkt is None:
        out["proj:code"] = None
        return out
    from rasterio.crs import CRS

    crs = CRS.from_wkt(raster.crs_wkt)
    epsg = crs.to_epsg(confidence_threshold=100)
    if epsg:
        out["proj:code"] = f"EPSG:{epsg}"
    else:
        out["proj:code"] = None
        out["proj:wkt2"] = crs.to_wkt(version="WKT2_2019")
    corners = [_map_xy(raster, c, r) for c in (0, raster.width) for r in (0, raster.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    out["proj:bbox"] = [min(xs), min(ys), max(xs), max(ys)]
    return out


def build_item(*, item_href: str, raster: RasterInfo, model: LoadedModel, input_size: int,
               assets: OutputAssets, nodata: int, mask_dtype: str, source: str,
               source_item: SourceItem | None, fingerprint: str,
               tiles: dict[str, int] | None = None,
               source_bands: tuple[str, ...] = ()) -> dict[str, Any]:
    """The output item as a dict (see the module docstring)."""
    from tileseg._version import __version__

    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    geometry, bbox = footprint(raster)
    properties: dict[str, Any] = {}
    times = source_item.properties if source_item is not None else {}
    if times.get("datetime") or not (times.get("start_datetime") and times.get("end_datetime")):
        properties["datetime"] = times.get("datetime") or now
    if times.get("start_datetime") and times.get("end_datetime"):
        properties["start_datetime"] = times["start_datetime"]
        properties["end_datetime"] = times["end_datetime"]
        properties.setdefault("datetime", times.get("datetime"))
    pixel = abs(raster.affine.a) if not raster.affine.b else None
    properties.update(_proj_fields(raster))
    properties.update({
        "title": f"{PurePosixPath(assets.mask.rstrip('/')).name}: classes of {source}",
        "processing:software": {"tileseg": __version__},
        "processing:datetime": now,
        "processing:lineage": f"tileseg predict of {source} with model "
                              f"{PurePosixPath(model.source.rstrip('/')).name or 'in-process'}",
        "processing:level": "L4",
        **mlm_properties(model, input_size=input_size, bands=source_bands),
        ITEM_MARK: ITEM_MARK_VALUE,
        "tileseg:fingerprint": fingerprint,
    })
    if tiles:
        properties["tileseg:tiles"] = tiles
    if pixel and raster.crs_is_metric:
        properties["gsd"] = pixel
    classes = classification_classes(model.metadata.classes)
    band = {"data_type": mask_dtype, "nodata": nodata}
    if pixel:
        band["spatial_resolution"] = pixel
    mask_asset: dict[str, Any] = {
        "href": relative_href(assets.mask, item_href),
        "type": MEDIA_TYPES[assets.mask_format],
        "title": "class mask",
        "roles": ["data"],
        "raster:bands": [band],
        "classification:classes": classes,
    }
    if assets.mask_file is not None and assets.mask_file.is_file():
        mask_asset.update(file_fields(assets.mask_file))
    out_assets: dict[str, Any] = {"mask": mask_asset}
    if assets.zarr and assets.mask_format != "zarr":
        out_assets["zarr"] = {"href": relative_href(assets.zarr, item_href),
                              "type": MEDIA_TYPES["zarr"], "title": "class mask (Zarr mosaic)",
                              "roles": ["data"], "raster:bands": [band],
                              "classification:classes": classes}
    zarr = assets.mask if assets.mask_format == "zarr" else assets.zarr
    if assets.probabilities and zarr:
        out_assets["probabilities"] = {
            "href": relative_href(zarr.rstrip("/") + "/probabilities", item_href),
            "type": MEDIA_TYPES["zarr"], "title": "class probabilities (class, y, x)",
            "roles": ["data"],
            "raster:bands": [{"data_type": assets.probabilities,
                              **({"scale": 1 / 255} if assets.probabilities == "uint8" else {})}
                             for _ in classes]}
    if assets.polygons:
        suffix = PurePosixPath(assets.polygons).suffix.lower()
        out_assets["polygons"] = {"href": relative_href(assets.polygons, item_href),
                                  "type": MEDIA_TYPES.get(suffix, "application/octet-stream"),
                                  "title": "class polygons", "roles": ["data"]}
    if assets.preview:
        out_assets["preview"] = {"href": relative_href(assets.preview, item_href),
                                 "type": "image/png", "title": "preview", "roles": ["overview"]}
    for name, local in assets.extra_files.items():
        if name in out_assets and local.is_file():
            out_assets[name].update(file_fields(local))
    weights = model_asset(model, item_href, source_bands)
    if weights is not None:
        out_assets["model"] = weights
    links: list[dict[str, Any]] = []
    if source_item is not None:
        self_href = source_item.href
        if self_href is None:
            self_href = next((link.get("href") for link in source_item.links
                              if link.get("rel") == "self"), None)
        if self_href:
            links.append({"rel": "derived_from", "href": _absolute(self_href),
                          "type": "application/geo+json", "title": f"source item "
                          f"{source_item.id}"})
    item_id = PurePosixPath(assets.mask.rstrip("/")).stem
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(EXTENSIONS.values()),
        "id": item_id,
        "geometry": geometry,
        **({"bbox": bbox} if bbox is not None else {}),
        "properties": properties,
        "links": links,
        "assets": out_assets,
    }
    if source_item is not None and source_item.collection:
        properties["tileseg:source_collection"] = source_item.collection
    return item


def _absolute(href: str) -> str:
    if "://" in href or href.startswith("/"):
        return href
    return str(Path(href).absolute())


# ------------------------------------------------------------------------------------------
# A model's own item (its content: tileseg.models.formats.mlm.stac_item)
# ------------------------------------------------------------------------------------------


def export_stac(model: LoadedModel, dst: str | Path, *, overwrite: bool = False) -> Path:
    """Write an MLM item describing ``model`` to ``dst`` (JSON); return its path.

    An existing ``dst`` is replaced only with ``overwrite`` and only when tileseg wrote it.

    Examples
    --------
    >>> export_stac(load_model("epoch=9.ckpt"), "model.json")  # doctest: +SKIP
    """
    path = Path(dst)
    target = location(path)
    target.check_replaceable(
        overwrite=overwrite, owned=is_our_item, what="item path",
        foreign=(f"{path}: exists and is not an item tileseg wrote; it is left as it is: choose "
                 "another path"))
    item = model_item(model, path)
    target.write_text(json.dumps(item, indent=2) + "\n")
    return path
