"""Styles GIS tools read without tileseg: GDAL categories + RAT, QGIS .qml, GeoPackage layer_styles.

Read back with GDAL's own C API (the libgdal rasterio ships, through ctypes: rasterio has no
category/RAT API), ``gdalinfo`` when the machine has it, ``xml.etree`` and ``sqlite3``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import os
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import interrupt_after, per_pixel_model, random_image

from tileseg.config import PredictConfig
from tileseg.models.metadata import ClassInfo
from tileseg.outputs.styles import is_tileseg_qml, pam_xml, raster_qml, sidecar_paths, vector_qml
from tileseg.pipeline import predict
from tileseg.vectorization import vectorize

# conftest's per_pixel_model: class i is "class i" coloured (10i, 20i, 30i)
CLASSES = [(i, f"class {i}", (10 * i, 20 * i, 30 * i)) for i in range(4)]


def _gdal() -> Any:
    # The libgdal in rasterio's wheel (the one rasterio itself runs), else the system's.
    libs = os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs")
    found = glob.glob(os.path.join(libs, "libgdal*.so*")) or [
        name for name in [ctypes.util.find_library("gdal")] if name]
    if not found:
        pytest.skip("no libgdal to load for an independent read of categories and RAT")
    lib = ctypes.CDLL(found[0])
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in (
        ("GDALOpen", p, [s, i]), ("GDALGetRasterBand", p, [p, i]), ("GDALClose", None, [p]),
        ("GDALGetMetadata", p, [p, s]),
        ("GDALGetRasterCategoryNames", ctypes.POINTER(s), [p]), ("GDALGetDefaultRAT", p, [p]),
        ("GDALRATGetRowCount", i, [p]), ("GDALRATGetColumnCount", i, [p]),
        ("GDALRATGetNameOfCol", s, [p, i]), ("GDALRATGetUsageOfCol", i, [p, i]),
        ("GDALRATGetValueAsString", s, [p, i, i]),
    ):
        getattr(lib, name).restype = res
        getattr(lib, name).argtypes = args
    lib.GDALAllRegister()
    return lib


def gdal_categories_and_rat(path: Path) -> tuple[list[str], list[tuple[str, int]], list[list[str]]]:
    """Band 1's category names, RAT columns (name, usage) and RAT rows, as GDAL reports them."""
    lib = _gdal()
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        band = lib.GDALGetRasterBand(ds, 1)
        lib.GDALGetMetadata(ds, None)  # as any client does first; the GTiff driver loads PAM lazily
        names_p = lib.GDALGetRasterCategoryNames(band)
        names: list[str] = []
        while names_p and names_p[len(names)] is not None:
            names.append(names_p[len(names)].decode())
        rat = lib.GDALGetDefaultRAT(band)
        if not rat:
            return names, [], []
        ncol = lib.GDALRATGetColumnCount(rat)
        cols = [(lib.GDALRATGetNameOfCol(rat, c).decode(), lib.GDALRATGetUsageOfCol(rat, c))
                for c in range(ncol)]
        rows = [[lib.GDALRATGetValueAsString(rat, r, c).decode() for c in range(ncol)]
                for r in range(lib.GDALRATGetRowCount(rat))]
        return names, cols, rows
    finally:
        lib.GDALClose(ds)


def _predict(make_raster: Any, tmp_path: Path, name: str = "out.tif", **kw: Any) -> Path:
    src = make_raster(random_image(3, 150, 120))
    dst = tmp_path / name
    predict(PredictConfig(str(src), str(dst), tile_size=64, overlap=16, chunk_size=96, **kw),
            model=per_pixel_model(3, 4))
    return dst


@pytest.mark.parametrize("fmt", ["cog", "gtiff"])
def test_mask_has_gdal_categories_rat_and_a_qgis_palette(make_raster, tmp_path, fmt) -> None:
    dst = _predict(make_raster, tmp_path, format=fmt)
    names, cols, rows = gdal_categories_and_rat(dst)
    assert names == [name for _, name, _ in CLASSES]
    # usages: 5 MinMax (the pixel value), 2 Name, 6/7/8 Red/Green/Blue
    assert cols == [("Value", 5), ("Class", 2), ("Red", 6), ("Green", 7), ("Blue", 8)]
    assert rows == [[str(i), name, *map(str, rgb)] for i, name, rgb in CLASSES]

    aux, qml = sidecar_paths(dst)
    assert aux == tmp_path / "out.tif.aux.xml" and qml == tmp_path / "out.qml"
    renderer = ET.parse(qml).getroot().find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(int(e.get("value", -1)), e.get("label"), e.get("color"))
               for e in renderer.iter("paletteEntry")]
    assert entries == [(i, name, "#{:02x}{:02x}{:02x}".format(*rgb)) for i, name, rgb in CLASSES]
    with rasterio.open(dst) as out:  # the colour table agrees with both
        assert all(out.colormap(1)[i][:3] == rgb for i, _, rgb in CLASSES)

    if shutil.which("gdalinfo"):  # a second, separately built GDAL (Debian's gdal-bin)
        info = json.loads(subprocess.run(["gdalinfo", "-json", str(dst)], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["bands"][0]["categories"] == names
        assert [r["f"][:2] for r in info["rat"]["row"]] == [[i, n] for i, n, _ in CLASSES]


def test_styles_are_in_place_when_the_mask_appears(make_raster, tmp_path, monkeypatch) -> None:
    from tileseg.outputs.staging import LocalStaging

    seen: dict[str, bool] = {}
    replace = LocalStaging._replace

    def spy(self: LocalStaging, tmp: Path, dst: Path) -> None:
        seen.update({p.name: p.exists() for p in sidecar_paths(dst)})
        replace(self, tmp, dst)

    monkeypatch.setattr(LocalStaging, "_replace", spy)
    _predict(make_raster, tmp_path)
    assert seen == {"out.tif.aux.xml": True, "out.qml": True}


def test_an_interrupted_run_publishes_no_style(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 150, 120))
    with pytest.raises(KeyboardInterrupt):
        predict(PredictConfig(str(src), str(tmp_path / "out.tif"), tile_size=64, overlap=16,
                              chunk_size=64, workers=1),
                model=per_pixel_model(3, 4), progress=interrupt_after(1))
    assert not any(p.exists() for p in sidecar_paths(tmp_path / "out.tif"))


def test_a_style_tuned_in_qgis_is_kept_on_overwrite(make_raster, tmp_path) -> None:
    dst = _predict(make_raster, tmp_path)
    _, qml = sidecar_paths(dst)
    assert is_tileseg_qml(qml)
    # QGIS drops XML comments when it saves: a re-saved style has no tileseg marker
    tuned = ET.tostring(ET.parse(qml).getroot(), encoding="unicode")
    qml.write_text(tuned)
    _predict(make_raster, tmp_path, overwrite=True)
    assert qml.read_text() == tuned
    qml.unlink()  # without the user's style, tileseg's comes back
    _predict(make_raster, tmp_path, overwrite=True)
    assert is_tileseg_qml(qml)


def test_zarr_output_gets_no_sidecars(make_raster, tmp_path) -> None:
    dst = _predict(make_raster, tmp_path, name="out.zarr")
    assert dst.is_dir() and not any(p.exists() for p in sidecar_paths(dst))


def test_geopackage_carries_a_default_qgis_style_by_class(make_raster, tmp_path) -> None:
    mask = _predict(make_raster, tmp_path)
    gpkg = tmp_path / "polygons.gpkg"
    vectorize(mask, gpkg)
    assert "layer_styles" in [name for name, _ in pyogrio.list_layers(gpkg)]  # GDAL sees it
    with sqlite3.connect(gpkg) as db:
        kind = db.execute("SELECT data_type FROM gpkg_contents WHERE table_name = "
                          "'layer_styles'").fetchone()
        rows = db.execute("SELECT f_table_catalog, f_table_schema, f_table_name, "
                          "f_geometry_column, useAsDefault, styleQML FROM layer_styles").fetchall()
        geom_column = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE "
                                 "table_name = 'polygons'").fetchone()[0]
        present = {r[0] for r in db.execute("SELECT DISTINCT class_id FROM polygons")}
    assert kind == ("attributes",)
    assert len(rows) == 1
    catalog, schema, table, column, default, qml = rows[0]
    assert (catalog, schema, table, column, default) == ("", "", "polygons", geom_column, 1)
    renderer = ET.fromstring(qml).find("renderer-v2")
    assert renderer is not None
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    categories = {int(c.get("value", -1)): (c.get("label"), c.get("symbol"))
                  for c in renderer.iter("category")}
    fills = {s.get("name"): s.find("layer/Option/Option[@name='color']").get("value")  # type: ignore[union-attr]
             for s in renderer.iter("symbol")}
    for i, name, rgb in CLASSES:
        label, symbol = categories[i]
        assert label == name and fills[symbol] == "{},{},{},255".format(*rgb)
    assert present <= set(categories)  # every polygon's class has a colour


def test_a_foreign_mask_gets_default_colours_in_the_geopackage(make_raster, tmp_path) -> None:
    data = np.zeros((40, 40), np.uint8)
    data[10:20, 10:30] = 7
    mask = make_raster(data, "foreign.tif")  # no tileseg tag, no colour table
    vectorize(mask, tmp_path / "f.gpkg")
    with sqlite3.connect(tmp_path / "f.gpkg") as db:
        qml = db.execute("SELECT styleQML FROM layer_styles").fetchone()[0]
    labels = [c.get("label") for c in ET.fromstring(qml).iter("category")]
    assert labels == ["class_7"]  # 0 is the background a nameless mask drops


def test_pam_xml_escapes_names_and_fills_gaps() -> None:
    classes = [ClassInfo(0, "a & b", (1, 2, 3)), ClassInfo(2, "<c>", (4, 5, 6), label_value=9)]
    band = ET.fromstring(pam_xml(classes)).find("PAMRasterBand")
    assert band is not None
    assert [c.text or "" for c in band.iter("Category")] == ["a & b", "", "<c>"]
    rows = [[f.text for f in r.iter("F")] for r in band.iter("Row")]
    assert rows == [["0", "a & b", "1", "2", "3", None], ["2", "<c>", "4", "5", "6", "9"]]


# what GIS users name classes: markup characters, quotes, accents, other scripts
AWKWARD = ['a < b & c > d', 'say "no"', "l'eau", "forêt 森林 🌲", "]]> <!-- -->"]


def _xml_names(text: str) -> list[str]:
    """The class names an XML style gives, read back by a real XML parser."""
    root = ET.fromstring(text)
    if root.tag == "PAMDataset":
        return [c.text or "" for c in root.iter("Category")]
    return [e.get("label", "") for e in (*root.iter("paletteEntry"), *root.iter("category"))]


@pytest.mark.parametrize("style", [pam_xml, raster_qml, vector_qml])
def test_styles_are_well_formed_xml_for_any_printable_name(style: Any) -> None:
    classes = [ClassInfo(i, name, (i, i, i)) for i, name in enumerate(AWKWARD)]
    assert _xml_names(style(classes)) == AWKWARD


@pytest.mark.parametrize("style", [pam_xml, raster_qml, vector_qml])
def test_styles_stay_well_formed_xml_with_control_characters(style: Any) -> None:
    # a model's metadata refuses such names; a mask's own class tag (vectorize) may carry one,
    # and XML 1.0 cannot hold it even as a character reference: it becomes U+FFFD
    classes = [ClassInfo(0, "bell\x07", (1, 2, 3)), ClassInfo(1, "nul\x00 esc\x1b", (4, 5, 6)),
               ClassInfo(2, "two\nlines\tand a tab", (7, 8, 9))]
    names = _xml_names(style(classes))
    assert names[:2] == ["bell\ufffd", "nul\ufffd esc\ufffd"]
    assert names[2] in ("two\nlines\tand a tab", "two lines and a tab")  # XML may normalize


def test_published_styles_parse_with_awkward_class_names(make_raster, tmp_path) -> None:
    from tileseg.models.metadata import ModelMetadata, Normalization

    src = make_raster(random_image(3, 40, 40))
    meta = ModelMetadata(classes=tuple(ClassInfo(i, n, (9 * i, 9, 9)) for i, n in enumerate(AWKWARD)),
                         in_channels=3, normalization=Normalization(scale=(1 / 255,)))
    model = per_pixel_model(3, len(AWKWARD))
    model = type(model)(model.module, meta, model.source, model.architecture, model.divisor)
    dst = tmp_path / "out.tif"
    predict(PredictConfig(str(src), str(dst), tile_size=64, overlap=16), model=model)
    aux, qml = sidecar_paths(dst)
    assert _xml_names(aux.read_text(encoding="utf-8")) == AWKWARD
    assert _xml_names(qml.read_text(encoding="utf-8")) == AWKWARD
    names, _, _ = gdal_categories_and_rat(dst)  # and GDAL reads them as they are
    assert names == AWKWARD


_QGIS_SCRIPT = """
import json, sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
raster = QgsRasterLayer(sys.argv[1], "mask")
vector = QgsVectorLayer(sys.argv[2] + "|layername=polygons", "polygons", "ogr")
r, v = raster.renderer(), vector.renderer()
print(json.dumps({
    "raster": [r.type(), [[c.value, c.label, c.color.name()] for c in r.classes()]],
    "vector": [v.type(), v.classAttribute(),
               [[c.value(), c.label(), c.symbol().color().name()] for c in v.categories()]],
}))
app.exitQgis()
"""


def _system_qgis() -> str | None:
    """A Python that imports QGIS (Debian's python3-qgis lives outside virtual environments)."""
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import qgis.core"],
                                     capture_output=True).returncode == 0:
            return python
    return None


@pytest.mark.slow
def test_qgis_itself_applies_both_styles(make_raster, tmp_path) -> None:
    python = _system_qgis()
    if python is None:
        pytest.skip("QGIS is not installed (apt-get install python3-qgis); the styles are still "
                    "parsed by the tests above")
    mask = _predict(make_raster, tmp_path)
    vectorize(mask, tmp_path / "polygons.gpkg")
    out = subprocess.run([python, "-c", _QGIS_SCRIPT, str(mask), str(tmp_path / "polygons.gpkg")],
                         capture_output=True, text=True, timeout=120,
                         env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                              "QT_QPA_PLATFORM": "offscreen"})
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    expected = [[i, name, "#{:02x}{:02x}{:02x}".format(*rgb)] for i, name, rgb in CLASSES]
    # without the .qml QGIS would list all 256 colour-table entries, labelled by number
    assert seen["raster"] == ["paletted", expected]
    # without layer_styles QGIS would draw every polygon in one random colour
    assert seen["vector"][:2] == ["categorizedSymbol", "class_id"]
    assert [[int(v), label, colour] for v, label, colour in seen["vector"][2]] == expected
