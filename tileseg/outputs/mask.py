"""The output mask format: what tileseg writes beside the class ids, and how it is read back.

A mask is a Zarr v3 group (array ``mask``, optional ``probabilities``) or a single-band GeoTIFF.
Either carries the class list as JSON objects ``{"id", "name", "color": "#rrggbb",
["label_value"]}``: in the group attribute ``tileseg`` (with the georeferencing, nodata, the model
source, ``complete`` and, once done, the run's fingerprint) or in the GeoTIFF tags
``TILESEG_CLASSES``, ``TILESEG_SOURCE`` and ``TILESEG_FINGERPRINT``. This module alone writes and
parses those; the others call it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tileseg.models.metadata import ClassInfo, class_json, parse_color

logger = logging.getLogger(__name__)

ZARR_ATTRIBUTE = "tileseg"  # the Zarr group attribute holding the facts below
CLASSES_TAG = "TILESEG_CLASSES"  # written on every GeoTIFF/COG mask
SOURCE_TAG = "TILESEG_SOURCE"
FINGERPRINT_TAG = "TILESEG_FINGERPRINT"  # what produced the mask (see tileseg.pipeline)
FORMAT_VERSION = 1


def zarr_facts(
    *,
    crs_wkt: str | None,
    transform: Sequence[float],
    height: int,
    width: int,
    nodata: int,
    classes: Iterable[ClassInfo],
    source: str,
) -> dict[str, Any]:
    """The ``tileseg`` attribute of a Zarr mask whose run has not finished yet."""
    return {
        "version": FORMAT_VERSION,
        "complete": False,
        "crs_wkt": crs_wkt,
        "transform": list(transform)[:6],
        "height": height,
        "width": width,
        "nodata": nodata,
        "classes": [class_json(c) for c in classes],
        "source": source,
    }


def read_facts(root: Any) -> dict[str, Any] | None:
    """The ``tileseg`` attribute of an open Zarr group, or None when it has none."""
    facts = root.attrs.get(ZARR_ATTRIBUTE)
    return dict(facts) if isinstance(facts, Mapping) else None


def write_facts(root: Any, facts: Mapping[str, Any]) -> None:
    root.attrs[ZARR_ATTRIBUTE] = dict(facts)


def mark_complete(root: Any, extra: Mapping[str, Any]) -> None:
    """Record in an open Zarr group that its run finished, with ``extra`` facts (fingerprint)."""
    facts = read_facts(root) or {}
    facts.update(extra)
    facts["complete"] = True
    write_facts(root, facts)


def geotiff_tags(facts: Mapping[str, Any]) -> dict[str, str]:
    """The GeoTIFF tags carrying a Zarr mask's ``facts``."""
    tags = {CLASSES_TAG: json.dumps(list(facts.get("classes", []))),
            SOURCE_TAG: str(facts.get("source", ""))}
    if facts.get("fingerprint"):  # --resume refuses a mask another job produced
        tags[FINGERPRINT_TAG] = str(facts["fingerprint"])
    return tags


def classes_from_tags(tags: Mapping[str, str]) -> list[dict[str, Any]] | None:
    """The class list of a GeoTIFF's tags; None without a ``TILESEG_CLASSES`` tag.

    Raises
    ------
    ValueError
        The tag is there but is not a list of objects with an integer ``id`` and a ``name``.
    """
    text = tags.get(CLASSES_TAG)
    if not text:
        return None
    try:
        items = json.loads(text)
        return [{**c, "id": int(c["id"]), "name": str(c["name"])} for c in items]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"unreadable {CLASSES_TAG} tag ({exc})") from None


def class_names(classes: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """``{id: name}`` of a stored class list."""
    return {int(c["id"]): str(c["name"]) for c in classes}


def class_infos(classes: Iterable[Mapping[str, Any]]) -> tuple[ClassInfo, ...]:
    """A stored class list as :class:`ClassInfo` (colours parsed by ``metadata.parse_color``)."""
    out = []
    for c in classes:
        cid = int(c["id"])
        label = c.get("label_value")
        out.append(ClassInfo(cid, str(c["name"]), parse_color(c.get("color"), cid),
                             None if label is None else int(label)))
    return tuple(out)


def colormap(classes: Iterable[Mapping[str, Any]], nodata: int) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: each class's colour, and nodata transparent (where it fits one)."""
    cmap = {c.id: (*c.color, 255) for c in class_infos(classes)}
    if nodata <= 65535:
        cmap[nodata] = (0, 0, 0, 0)
    return cmap  # type: ignore[return-value]
