"""Class names and colours in the conventions GIS tools read on their own.

A mask's legend (class id, name, colour) lives in tileseg's ``TILESEG_CLASSES`` tag and the
GeoTIFF colour table; these writers repeat it where GDAL and QGIS look without knowing tileseg:

* ``MASK.aux.xml``: GDAL's PAM sidecar with the band's category names and a thematic raster
  attribute table (value, class, red, green, blue[, label value]). The GTiff driver keeps both
  only there (it has no TIFF tag for them), and reads the sidecar whenever it opens the file, so
  ``gdalinfo``, QGIS ("Raster Attribute Tables") and ArcGIS see the classes.
* ``MASK.qml`` (the mask's name with ``.qml``): a QGIS paletted renderer with each class's colour
  and label; QGIS applies a same-named style automatically when the layer is added.
* A GeoPackage from ``vectorize`` gets a default style in its ``layer_styles`` table (what QGIS's
  "Save style in database" writes): polygons coloured by ``class_id`` with the same palette.

The raster sidecars are written in a staging folder and moved beside the mask *before* the mask
itself is renamed into place, so a published mask always has its styles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from tileseg.errors import OutputError
from tileseg.models.metadata import ClassInfo, default_color
from tileseg.outputs import mask as mask_format
from tileseg.outputs.location import location

logger = logging.getLogger(__name__)

# Why a comment: QGIS drops comments when it saves a style, so a .qml the user re-saved (tuned)
# in QGIS no longer carries it, and tileseg leaves that file alone.
QML_MARKER = "<!-- written by tileseg; QGIS applies it to the same-named layer -->"
AUX_MARKER = "<!-- written by tileseg: class names and attribute table of the mask -->"
QGIS_VERSION = "3.28.0-Firenze"  # the oldest LTR whose QML elements these files use

# GDAL's enums (gdal.h): GDALRATFieldType and GDALRATFieldUsage.
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_GENERIC, _GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE = 0, 2, 5, 6, 7, 8


def classes_from_json(items: Iterable[dict[str, Any]]) -> tuple[ClassInfo, ...]:
    """Classes as stored in ``TILESEG_CLASSES`` and Zarr attributes (see :mod:`tileseg.outputs.mask`)."""
    return mask_format.class_infos(items)


def mask_legend(path: str | os.PathLike[str]) -> tuple[ClassInfo, ...]:
    """The classes a mask names: its tileseg metadata, else its colour table, else none.

    Works for a GeoTIFF or Zarr mask written by ``predict`` and for any single-band raster; a
    raster with a colour table but no tileseg tag yields one class per entry that is not fully
    transparent (named ``class_<value>``).
    """
    from tileseg.sources.datasets import open_dataset

    path = os.fspath(path)
    mask = location(path)
    if mask.is_zarr():
        import zarr  # a Zarr mask: the group attribute holds the classes

        root = zarr.open_group(mask.zarr_store(read_only=True), mode="r")
        facts = mask_format.read_facts(root) or {}
        return classes_from_json(facts.get("classes", []))
    with open_dataset(path) as src:
        try:
            tagged = mask_format.classes_from_tags(src.tags())
            if tagged is not None:
                return classes_from_json(tagged)
        except ValueError as exc:
            logger.warning("%s: %s; using its colour table", path, exc)
        try:
            cmap = src.colormap(1)
        except ValueError:  # no colour table
            return ()
        nodata = src.nodata
    return tuple(ClassInfo(v, f"class_{v}", (int(r), int(g), int(b)))
                 for v, (r, g, b, a) in sorted(cmap.items())
                 if a > 0 and v != nodata and (r, g, b) != (0, 0, 0))


def hex_color(color: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color[:3])


# What XML 1.0 cannot hold, not even as a character reference (nor UTF-8: lone surrogates)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(name: str) -> str:
    """``name`` escaped for XML text, with what XML cannot hold as U+FFFD: a model's metadata
    refuses such names, but a mask's own class tag (vectorize, preview) may still carry one."""
    return escape(_NOT_XML.sub("\ufffd", name))


def _attr(name: str) -> str:
    """``name`` as a quoted XML attribute value (see :func:`_text`)."""
    return quoteattr(_NOT_XML.sub("\ufffd", name))


# ------------------------------------------------------------------------------------------
# GDAL: category names + raster attribute table (PAM sidecar)
# ------------------------------------------------------------------------------------------


def pam_xml(classes: Sequence[ClassInfo]) -> str:
    """A GDAL PAM document giving band 1 category names and a thematic raster attribute table.

    Category names are a list indexed by pixel value, so gaps between class ids are filled with
    empty names (GDAL's convention for "no category").
    """
    by_id = {c.id: c for c in classes}
    top = max(by_id, default=-1)
    names = "".join(f"<Category>{_text(by_id[v].name) if v in by_id else ''}</Category>"
                    for v in range(top + 1))
    columns = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
               ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN),
               ("Blue", _GFT_INTEGER, _GFU_BLUE)]
    with_labels = any(c.label_value is not None for c in classes)
    if with_labels:  # the value each class had in the training labels (for evaluation)
        columns.append(("LabelValue", _GFT_INTEGER, _GFU_GENERIC))
    fields = "".join(
        f'\n      <FieldDefn index="{i}"><Name>{name}</Name><Type>{ftype}</Type>'
        f"<Usage>{usage}</Usage></FieldDefn>"
        for i, (name, ftype, usage) in enumerate(columns))
    rows = []
    for i, c in enumerate(sorted(classes, key=lambda c: c.id)):
        cells = [str(c.id), _text(c.name), *(str(int(v)) for v in c.color[:3])]
        if with_labels:
            cells.append("" if c.label_value is None else str(c.label_value))
        rows.append(f'\n      <Row index="{i}">' + "".join(f"<F>{v}</F>" for v in cells)
                    + "</Row>")
    return (
        f"<PAMDataset>\n  {AUX_MARKER}\n"
        '  <PAMRasterBand band="1">\n'
        f"    <CategoryNames>{names}</CategoryNames>\n"
        f'    <GDALRasterAttributeTable tableType="thematic">{fields}{"".join(rows)}\n'
        "    </GDALRasterAttributeTable>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )


# ------------------------------------------------------------------------------------------
# QGIS: raster paletted renderer and vector categorized renderer
# ------------------------------------------------------------------------------------------


def raster_qml(classes: Sequence[ClassInfo]) -> str:
    """A QGIS style drawing band 1 with a paletted renderer: one entry (colour, label) per class.

    Values not in the palette, the mask's nodata among them, draw transparent.
    """
    entries = "\n".join(
        f"        <paletteEntry value=\"{c.id}\" color=\"{hex_color(c.color)}\" alpha=\"255\" "
        f"label={_attr(c.name)}/>"
        for c in sorted(classes, key=lambda c: c.id))
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f"{QML_MARKER}\n"
        f'<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories" '
        'hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
        'nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        '    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
        '    <huesaturation saturation="0" grayscaleMode="0" invertColors="0" colorizeOn="0" '
        'colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100"/>\n'
        # class ids must never be interpolated when QGIS zooms: nearest neighbour only
        '    <rasterresampler maxOversampling="2"/>\n'
        "  </pipe>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def vector_qml(classes: Sequence[ClassInfo], attribute: str = "class_id") -> str:
    """A QGIS style colouring polygons by ``attribute`` (a class id) with the classes' palette."""
    categories = "\n".join(
        f'      <category value="{c.id}" label={_attr(c.name)} symbol="{i}" render="true"/>'
        for i, c in enumerate(sorted(classes, key=lambda c: c.id)))
    symbols = "\n".join(_fill_symbol(str(i), c.color)
                        for i, c in enumerate(sorted(classes, key=lambda c: c.id)))
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f"{QML_MARKER}\n"
        f'<qgis version="{QGIS_VERSION}" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr={_attr(attribute)} symbollevels="0" '
        'enableorderby="0" forceraster="0" referencescale="-1">\n'
        "    <categories>\n"
        f"{categories}\n"
        "    </categories>\n"
        "    <symbols>\n"
        f"{symbols}\n"
        "    </symbols>\n"
        "    <rotation/>\n"
        "    <sizescale/>\n"
        "  </renderer-v2>\n"
        "  <blendMode>0</blendMode>\n"
        "  <featureBlendMode>0</featureBlendMode>\n"
        "</qgis>\n"
    )


def _fill_symbol(name: str, color: Sequence[int]) -> str:
    # Fill and a hairline outline of the same colour: adjacent polygons of one class merge
    # visually, and no seam shows between neighbours. Both the Option map (QGIS >= 3.26 reads it)
    # and the older prop list are written, as QGIS itself did during the transition.
    rgba = "{},{},{},255".format(*(int(v) for v in color[:3]))
    props = {"color": rgba, "style": "solid", "outline_color": rgba, "outline_style": "solid",
             "outline_width": "0", "outline_width_unit": "MM", "joinstyle": "miter"}
    options = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
    prop_list = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (f'      <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" locked="0" pass="0">'
            f'<Option type="Map">{options}</Option>{prop_list}</layer></symbol>')


# ------------------------------------------------------------------------------------------
# Writing them
# ------------------------------------------------------------------------------------------


def sidecar_paths(mask: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(MASK.aux.xml, MASK-without-extension.qml)``: where GDAL and QGIS look for them."""
    dst = Path(mask)
    return dst.with_name(dst.name + ".aux.xml"), dst.with_suffix(".qml")


def is_tileseg_qml(path: Path) -> bool:
    """Whether ``path`` is a style tileseg wrote and nobody re-saved since (see QML_MARKER)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return QML_MARKER in f.read(4096)
    except OSError:
        return False


def publish_raster_styles(dst: str | os.PathLike[str], classes: Sequence[ClassInfo], *,
                          resumable: bool = True) -> list[str]:
    """Write the GDAL and QGIS sidecars for the mask that is about to appear at ``dst`` (a path
    or a store URL).

    Call it right before the mask is put in place (renamed, uploaded): whoever sees the
    finished mask also sees its styles. Each sidecar appears whole (a rename, one conditional
    upload). The ``.aux.xml`` is replaced when absent, tileseg's, or beside the tileseg mask
    being replaced (it describes that file); a ``.qml`` only when tileseg wrote it, so a style
    the user tuned and saved in QGIS is kept, with a warning. Returns the sidecars written.
    ``resumable``: a full disk keeps the run's chunks for ``resume`` (exit 5).
    """
    if not classes:
        return []
    mask = location(dst)
    aux, qml = mask.sibling(".aux.xml"), mask.with_suffix(".qml")
    replacing_mask = mask.exists()  # tileseg's own, or staging would have refused

    def aux_mine(path: Path) -> bool:
        return replacing_mask or AUX_MARKER in path.read_text(encoding="utf-8", errors="replace")

    written = []
    for target, text, mine in ((aux, pam_xml(classes), aux_mine),
                               (qml, raster_qml(classes), is_tileseg_qml)):
        try:
            with target.replacing(owned=mine, foreign=f"{target}: kept (not written by tileseg)",
                                  resumable=resumable) as local:
                local.write_text(text, encoding="utf-8")
        except OutputError as exc:  # a user's sidecar (or one put there meanwhile) stays
            logger.warning("%s; delete it to get the class palette", exc)
            continue
        written.append(str(target))
    return written


LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
    f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
    useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""


def add_layer_style(gpkg: str | os.PathLike[str], layer: str, classes: Sequence[ClassInfo], *,
                    attribute: str = "class_id") -> None:
    """Store a default QGIS style for ``layer`` in the GeoPackage's ``layer_styles`` table.

    The table is the one QGIS creates for "Save style in database", registered in
    ``gpkg_contents`` as an attributes table, so GDAL and QGIS list it as a plain table and
    QGIS applies the style (``useAsDefault``) whenever the layer is added.
    """
    if not classes:
        return
    with contextlib.closing(sqlite3.connect(os.fspath(gpkg))) as db, db:
        row = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?",
                         (layer,)).fetchone()
        if row is None:
            raise ValueError(f"{gpkg}: no geometry layer {layer!r}")
        db.execute(LAYER_STYLES_SQL)
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description,"
            " last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', '', "
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
        db.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner,"
            " ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, 'tileseg', '')",
            (layer, row[0], f"{layer} classes", vector_qml(classes, attribute),
             "class colours from the mask (tileseg)"))


def legend_for(classes: Sequence[ClassInfo], values: Iterable[int]) -> tuple[ClassInfo, ...]:
    """``classes`` plus a numbered default-coloured class for each value they do not name."""
    known = {c.id: c for c in classes}
    extra = [ClassInfo(int(v), f"class_{int(v)}", default_color(int(v)))
             for v in np.unique(np.asarray(list(values), dtype=np.int64)) if int(v) not in known]
    return tuple(sorted([*known.values(), *extra], key=lambda c: c.id))
