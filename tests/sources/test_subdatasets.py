"""GDAL containers and subdataset names: a real NetCDF with two variables and a real GeoPackage
with two raster tables, both written by GDAL here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from conftest import per_pixel_model, random_image

from tileseg.config import PredictConfig
from tileseg.errors import InputError, InputNotFoundError
from tileseg.outputs.naming import default_mask_path
from tileseg.pipeline import predict
from tileseg.sources.raster import open_raster
from tileseg.sources.subdatasets import parse_subdataset, raster_exists


@pytest.fixture
def netcdf(make_raster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``multi.nc`` with variables Band1 and Band2 (GDAL writes each band of a GeoTIFF as a
    variable), in the working folder so relative subdataset names resolve."""
    with rasterio.Env() as env:
        if "netCDF" not in env.drivers():
            pytest.skip("this GDAL has no netCDF driver")
    two = make_raster(random_image(2, 30, 40), name="two.tif")
    rasterio.shutil.copy(two, tmp_path / "multi.nc", driver="netCDF")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "multi.nc"


@pytest.fixture
def geopackage(make_raster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tables.gpkg`` with raster tables A (all ones) and B (the image)."""
    image = random_image(3, 60, 70, seed=4)
    scene = make_raster(image, name="scene.tif")
    ones = make_raster(np.ones_like(image), name="ones.tif")
    rasterio.shutil.copy(ones, tmp_path / "tables.gpkg", driver="GPKG", RASTER_TABLE="A")
    rasterio.shutil.copy(scene, tmp_path / "tables.gpkg", driver="GPKG", RASTER_TABLE="B",
                         APPEND_SUBDATASET="YES")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "tables.gpkg"


def test_a_netcdf_with_several_variables_lists_them_and_the_syntax(netcdf: Path) -> None:
    with pytest.raises(InputError) as info:
        open_raster(netcdf)
    message = str(info.value)
    assert "\n" not in message and "2 rasters" in message
    assert f"netcdf:{netcdf}:band1" in message.lower() and "band2" in message.lower()
    assert 'DRIVER:"FILE":NAME' in message


@pytest.mark.parametrize("name", ["netcdf:multi.nc:Band2", 'NETCDF:"multi.nc":Band2',
                                  "NETCDF:{abs}:Band2"])
def test_a_subdataset_name_opens_the_variable(netcdf: Path, name: str) -> None:
    info = open_raster(name.format(abs=netcdf))
    assert (info.count, info.height, info.width, info.dtype) == (1, 30, 40, "uint8")
    assert info.crs_wkt is not None


def test_a_subdataset_name_whose_file_or_variable_is_wrong_is_one_line(netcdf: Path) -> None:
    with pytest.raises(InputNotFoundError, match="whose file does not exist"):
        open_raster('NETCDF:"gone.nc":Band1')
    with pytest.raises(InputError, match="cannot open this subdataset.*lists the subdatasets"):
        open_raster('NETCDF:"multi.nc":nope')


def test_a_file_with_a_colon_in_its_name_is_a_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("GTiff:odd.tif").write_bytes(b"x")
    assert parse_subdataset("GTiff:odd.tif") is None
    assert parse_subdataset("nodriver:odd.tif") is None
    assert not raster_exists("netcdf:gone.nc:x")


def test_default_names_come_from_the_file_and_the_variable(netcdf: Path) -> None:
    assert default_mask_path('NETCDF:"multi.nc":Band1') == "multi_Band1.mask.tif"
    assert default_mask_path(f"GTIFF_DIR:2:{netcdf}") == "multi_2.mask.tif"


def test_predict_reads_a_table_of_a_geopackage_and_draws_its_preview(geopackage: Path) -> None:
    # the fingerprint (the file's size), the preview's source and the default name all take
    # the subdataset name
    config = PredictConfig("GPKG:tables.gpkg:B", default_mask_path("GPKG:tables.gpkg:B"),
                           tile_size=64, overlap=16, preview="p.png")
    result = predict(config, model=per_pixel_model(3, 3))
    assert Path(result.dst).name == "tables_B.mask.tif" and Path("p.png").is_file()
    scene = open_raster("scene.tif")
    direct = predict(PredictConfig("scene.tif", "direct.tif", tile_size=64, overlap=16),
                     model=per_pixel_model(3, 3))
    with rasterio.open(result.dst) as a, rasterio.open(direct.dst) as b:
        assert a.read().tolist() == b.read().tolist() and scene.height == a.height
