"""The output item's footprint and projection fields, whatever affine version rasterio runs with."""

from __future__ import annotations

from pathlib import Path

import affine
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds

from tileseg.outputs.stac_item import _proj_fields, footprint
from tileseg.sources.raster import open_raster


def _point_operators_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """As affine 2 (no ``@`` for points; the device's wheels) and a later affine (no ``*``)."""
    matmul, mul = Affine.__matmul__, Affine.__mul__

    def only_affine(op):  # type: ignore[no-untyped-def]
        def apply(self, other):  # type: ignore[no-untyped-def]
            if isinstance(other, tuple):
                raise TypeError("unsupported operand type(s): 'Affine' and 'tuple'")
            return op(self, other)
        return apply

    monkeypatch.setattr(affine.Affine, "__matmul__", only_affine(matmul))
    monkeypatch.setattr(affine.Affine, "__mul__", only_affine(mul))


def test_footprint_and_bbox_without_affine_point_operators(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "scene.tif"
    transform = Affine(30, 0, 500000, 0, -30, 4200000)
    with rasterio.open(path, "w", driver="GTiff", width=200, height=100, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(np.zeros((1, 100, 200), np.uint8))
    raster = open_raster(str(path))
    _point_operators_refused(monkeypatch)

    geometry, bbox = footprint(raster)
    proj = _proj_fields(raster)

    assert proj["proj:bbox"] == [500000.0, 4197000.0, 506000.0, 4200000.0]
    expected = transform_bounds("EPSG:32633", "EPSG:4326", *proj["proj:bbox"], densify_pts=16)
    assert bbox == pytest.approx(list(expected), abs=1e-6)
    assert geometry is not None and geometry["type"] == "Polygon"
