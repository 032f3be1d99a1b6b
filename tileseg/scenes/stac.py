"""STAC items as sources: read an item, and find the model's bands among its assets.

An item is read as JSON from a local file, ``https://`` or a store (``s3://``...), or taken from
a ``pystac.Item``; an ItemCollection (a saved search) is a batch, one scene an item, each
addressed as ``collection.json#ITEM_ID``. tileseg needs a handful of fields, so it reads them
from the JSON itself: both STAC 1.0 (``eo:bands`` and ``raster:bands``, parallel lists) and
STAC 1.1 (``bands`` with ``eo:common_name``, ``nodata``, ``data_type``...). Requests have a
timeout; credentials for a store are the usual AWS (GCS, Azure) ones.

Matching a band name (the model's ``tileseg.json`` band names, or ``bands``) is exact and
case-blind, in this order: an asset key, a band name, a common name (``red``, ``nir08``...).
When several assets match (Earth Search has ``red`` and ``red-jp2``), a single-band asset wins
over a multi-band one, then a GeoTIFF over other formats, then a ``data`` role, then item order.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from tileseg.errors import InputError, InputNotFoundError
from tileseg.sources.stack import BandRequest

logger = logging.getLogger(__name__)

MAX_STAC_BYTES = 64 << 20  # an item is a few kB; a saved search of thousands of items, MBs
HTTP_TIMEOUT_S = 30.0
STAC_SUFFIXES = (".json", ".geojson")
_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".nc", ".h5", ".img", ".zarr")
# roles and media types of assets that are never a band to read
_SKIP_ROLES = {"thumbnail", "overview", "metadata"}
_NOT_RASTER = ("application/json", "application/geo+json", "application/xml", "text/",
               "image/png", "image/jpeg", "image/jpg", "image/webp", "application/x-protobuf",
               "application/vnd.apache.parquet", "application/geopackage")
# roles that say an asset holds codes, not measurements (STAC best practices)
_CATEGORICAL_ROLES = {"data-mask", "snow-ice", "land-water", "water-mask", "cloud",
                      "cloud-shadow", "classification"}


@dataclass(frozen=True, eq=False)
class SceneItem:
    """What tileseg keeps of a STAC item; asset hrefs are absolute."""

    id: str
    href: str | None  # where it was read from; None for an in-memory pystac.Item
    properties: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    bbox: list[float] | None = None
    geometry: dict[str, Any] | None = None
    collection: str | None = None
    links: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.href or f"STAC item {self.id}"


@dataclass(frozen=True)
class AssetBand:
    """One band of one asset, with what the item says about it."""

    asset: str
    href: str
    index: int  # 1-based band of the asset's file
    count: int  # bands the asset declares
    name: str | None = None
    common_name: str | None = None
    nodata: float | None = None
    data_type: str | None = None
    categorical: bool = False
    geotiff: bool = True
    data_role: bool = False
    order: int = 0

    def describe(self) -> str:
        """``B04 (red)``: the asset, and its band's common name or name."""
        extra = self.common_name or (self.name if self.name and self.name != self.asset else "")
        where = self.asset if self.count == 1 else f"{self.asset}[{self.index}]"
        return f"{where} ({extra})" if extra else where


def is_stac_source(src: str) -> bool:
    """A source named like a STAC item or ItemCollection: ``.json``/``.geojson`` (an item of a
    collection as ``collection.json#ID``), or a STAC API item URL (``.../items/ID``)."""
    location, _ = split_fragment(src)
    path = urlsplit(location).path if "://" in location else location
    if path.lower().endswith(STAC_SUFFIXES):
        return True
    return (location.startswith(("http://", "https://")) and "/items/" in path
            and not path.lower().endswith(_RASTER_SUFFIXES))


def split_fragment(src: str) -> tuple[str, str | None]:
    """``("collection.json", "ID")`` for ``collection.json#ID``; no fragment: ``(src, None)``."""
    location, sep, fragment = src.partition("#")
    if sep and location.lower().endswith(STAC_SUFFIXES) and fragment:
        return location, fragment
    return src, None


def read_json(place: str) -> Any:
    """The JSON document at ``place`` (local, http(s) or a store URL), bounded in size."""
    from tileseg.outputs.location import location

    if place.startswith(("http://", "https://")):
        text = _read_http(place)
    else:
        text = location(place).read_document(MAX_STAC_BYTES, "STAC document")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{place}: not valid JSON ({exc}); pass a STAC item or "
                         "ItemCollection") from None


def _read_http(url: str) -> str:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": "application/geo+json, "
                                                   "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            data = response.read(MAX_STAC_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise InputNotFoundError(f"{url}: not found (HTTP 404); check the URL") from None
        raise InputError(f"{url}: the server answered HTTP {exc.code}; check the URL and "
                         "your access") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: cannot be read ({reason}); check the URL and the "
                         "network") from None
    if len(data) > MAX_STAC_BYTES:
        raise InputError(f"{url}: over {MAX_STAC_BYTES >> 20} MiB, too large for a STAC item")
    return data.decode("utf-8", "replace")


def resolve_href(href: str, base: str | None) -> str:
    """An asset's href made absolute against the item's own location."""
    if "://" in href or href.startswith("/vsi") or os.path.isabs(href):
        return href
    if base is None:
        return href
    if "://" in base:
        if base.startswith(("http://", "https://")):
            return urljoin(base, href)
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))}"
    return str((Path(base).absolute().parent / href).resolve())


def _item_from_dict(data: dict[str, Any], href: str | None, base: str | None) -> SceneItem:
    if not isinstance(data, dict) or data.get("type") != "Feature":
        raise InputError(f"{href or 'item'}: not a STAC item (no \"type\": \"Feature\")")
    assets = data.get("assets")
    if not isinstance(assets, dict) or not assets:
        raise InputError(f"{href or 'item'}: the STAC item has no assets")
    absolute = {}
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
            raise InputError(f"{href or 'item'}: asset {key!r} has no href")
        absolute[str(key)] = {**asset, "href": resolve_href(asset["href"], base)}
    properties = data.get("properties")
    return SceneItem(id=str(data.get("id", "item")), href=href,
                     properties=dict(properties) if isinstance(properties, dict) else {},
                     assets=absolute, bbox=data.get("bbox"), geometry=data.get("geometry"),
                     collection=data.get("collection"),
                     links=[link for link in data.get("links", []) if isinstance(link, dict)])


def load_item(src: Any) -> SceneItem:
    """The item ``src`` names: a path or URL of an item, ``collection.json#ID``, or a
    ``pystac.Item``. An ItemCollection without ``#ID`` is refused (it is a batch)."""
    if not isinstance(src, str):
        return _from_pystac(src)
    location, wanted = split_fragment(src)
    data = read_json(location)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = [f for f in data.get("features", []) if isinstance(f, dict)]
        if wanted is None:
            raise InputError(f"{location}: is an ItemCollection of {len(features)} items, a "
                             "batch: run tileseg batch on it (one scene an item), or pick one "
                             f"item as {location}#ITEM_ID")
        for feature in features:
            if str(feature.get("id")) == wanted:
                return _item_from_dict(feature, src, location)
        ids = ", ".join(str(f.get("id")) for f in features[:5])
        raise InputError(f"{location}: has no item {wanted!r} (it has {ids}"
                         f"{', ...' if len(features) > 5 else ''})")
    if wanted is not None:
        raise InputError(f"{location}: is not an ItemCollection, so {wanted!r} names no item "
                         "in it; drop the #fragment")
    return _item_from_dict(data, location, location)


def collection_items(location: str) -> list[str] | None:
    """The item ids of an ItemCollection at ``location``, or None when it is something else."""
    data = read_json(location)
    if not (isinstance(data, dict) and data.get("type") == "FeatureCollection"):
        return None
    ids = [str(f.get("id")) for f in data.get("features", []) if isinstance(f, dict)]
    if len(set(ids)) != len(ids):
        raise InputError(f"{location}: lists some item ids twice; each scene needs its own id")
    return ids


def _from_pystac(item: Any) -> SceneItem:
    try:
        from pystac import Item
    except ImportError:  # no pystac: then no pystac.Item either
        Item = None  # type: ignore[assignment,misc]
    if Item is None or not isinstance(item, Item):
        raise InputError(f"a source of type {type(item).__name__} cannot be read; give a path "
                         "or URL, a list of files, or a pystac.Item")
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    for key, asset in item.assets.items():
        data["assets"][key]["href"] = asset.get_absolute_href() or asset.href
    href = item.get_self_href()
    return _item_from_dict(data, href, href)


# ------------------------------------------------------------------------------------------
# Bands
# ------------------------------------------------------------------------------------------


def _is_geotiff(media_type: str) -> bool:
    return media_type.startswith("image/tiff") or media_type == "image/vnd.stac.geotiff"


def _reads_as_raster(asset: dict[str, Any]) -> bool:
    roles = set(asset.get("roles") or [])
    media_type = str(asset.get("type") or "").lower()
    return not (roles & _SKIP_ROLES) and not media_type.startswith(_NOT_RASTER)


def asset_bands(item: SceneItem) -> list[AssetBand]:
    """Every band of every asset that may be read as a raster, in item order."""
    out: list[AssetBand] = []
    order = 0
    for key, asset in item.assets.items():
        if not _reads_as_raster(asset):
            continue
        media_type = str(asset.get("type") or "").lower()
        roles = set(asset.get("roles") or [])
        asset_classes = any(k in asset for k in ("classification:classes",
                                                 "classification:bitfields"))
        entries = _band_entries(asset)
        for index, entry in enumerate(entries or [{}], 1):
            nodata = entry.get("nodata")
            data_type = entry.get("data_type")
            common = entry.get("common_name") or entry.get("eo:common_name")
            spectral = bool(common or entry.get("center_wavelength")
                            or entry.get("eo:center_wavelength"))
            scaled = any(entry.get(k) not in (None, 1, 0) for k in ("scale", "offset",
                                                                     "raster:scale",
                                                                     "raster:offset"))
            integer = isinstance(data_type, str) and data_type.startswith(("int", "uint"))
            categorical = (asset_classes or bool(roles & _CATEGORICAL_ROLES)
                           or any(k in entry for k in ("classification:classes",
                                                       "classification:bitfields"))
                           or (integer and nodata is not None and not spectral and not scaled))
            out.append(AssetBand(
                asset=key, href=asset["href"], index=index, count=max(1, len(entries)),
                name=entry.get("name"), common_name=common,
                nodata=_number(nodata), data_type=data_type, categorical=categorical,
                geotiff=_is_geotiff(media_type) or not media_type, data_role="data" in roles,
                order=order))
            order += 1
    return out


def _band_entries(asset: dict[str, Any]) -> list[dict[str, Any]]:
    """The asset's bands, each one dict: STAC 1.1 ``bands`` as they are; STAC 1.0
    ``eo:bands`` and ``raster:bands`` merged position by position."""
    bands = asset.get("bands")
    if isinstance(bands, list) and bands:
        return [b if isinstance(b, dict) else {} for b in bands]
    eo_field, raster_field = asset.get("eo:bands"), asset.get("raster:bands")
    eo: list[Any] = eo_field if isinstance(eo_field, list) else []
    raster: list[Any] = raster_field if isinstance(raster_field, list) else []
    merged = []
    for i in range(max(len(eo), len(raster))):
        entry: dict[str, Any] = {}
        if i < len(raster) and isinstance(raster[i], dict):
            entry.update(raster[i])
        if i < len(eo) and isinstance(eo[i], dict):
            entry.update(eo[i])
        merged.append(entry)
    return merged


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):  # "nan" as JSON has no NaN
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, int | float) else None


def _rank(band: AssetBand) -> tuple[int, int, int, int]:
    return (band.count > 1, not band.geotiff, not band.data_role, band.order)


def find_band(item: SceneItem, name: str, bands: list[AssetBand] | None = None) -> AssetBand:
    """The band ``name`` names (see the module docstring); :class:`InputError` listing what
    the item has when none does."""
    bands = asset_bands(item) if bands is None else bands
    wanted = name.casefold()
    by_key = [b for b in bands if b.asset.casefold() == wanted]
    if by_key:
        if len(by_key) > 1:
            names = ", ".join(b.name or f"{b.asset}[{b.index}]" for b in by_key)
            raise InputError(f"{item.label}: asset {by_key[0].asset} has {len(by_key)} bands "
                             f"({names}); name one of them, or a common name",
                             params=("bands",))
        return by_key[0]
    for field_name in ("name", "common_name"):
        found = [b for b in bands if (getattr(b, field_name) or "").casefold() == wanted]
        if found:
            return min(found, key=_rank)
    raise InputError(f"{item.label}: has no band {name!r} (asset key, band name or common name); "
                     f"it has {available(bands)}", params=("bands",))


def available(bands: list[AssetBand], limit: int = 30) -> str:
    shown = [b.describe() for b in bands[:limit]]
    more = f" and {len(bands) - limit} more" if len(bands) > limit else ""
    return (", ".join(shown) + more) if shown else "no raster assets"


def band_requests(item: SceneItem, names: tuple[str, ...] | None,
                  model_bands: tuple[str, ...], in_channels: int,
                  resampling: dict[str, str]) -> list[BandRequest]:
    """The item's bands, in the model's order, as stack requests.

    ``names`` (``bands``) win over the model's band names; ``resampling`` maps a band's
    asset key, name or common name (case-blind) to a method.
    """
    bands = asset_bands(item)
    if not bands:
        raise InputError(f"{item.label}: has no asset tileseg can read as a raster (roles "
                         "data, types GeoTIFF/COG/JPEG2000)")
    if names is None:
        if not model_bands:
            raise InputError(
                f"{item.label}: the model's tileseg.json lists no band names, so which of the "
                f"item's assets to read is unknown; choose {in_channels} with bands, e.g. bands "
                f"{','.join(b.common_name or b.asset for b in bands[:in_channels])}; the item has "
                f"{available(bands)}", params=("bands",))
        names = model_bands
    requests = []
    for name in names:
        band = find_band(item, name, bands)
        method = None
        for key in (band.asset, band.name, band.common_name, name):
            if key and key.casefold() in resampling:
                method = resampling[key.casefold()]
                break
        requests.append(BandRequest(href=band.href, band=band.index,
                                    name=band.asset if band.count == 1 else
                                    f"{band.asset}[{band.index}]",
                                    categorical=band.categorical, resampling=method,
                                    nodata=band.nodata))
    return requests
