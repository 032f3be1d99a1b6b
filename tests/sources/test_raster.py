"""raster: windows past the edges are reflected, validity follows nodata and NaN."""

from __future__ import annotations

import numpy as np
import pytest

from tileseg.errors import InputError
from tileseg.sources.raster import WindowReader, open_raster
from tileseg.tiling.grid import Rect


def test_window_past_the_edge_is_reflected(make_raster) -> None:
    data = np.arange(2 * 6 * 7, dtype=np.uint16).reshape(2, 6, 7)
    info = open_raster(make_raster(data))
    with WindowReader(info) as reader:
        out, valid = reader.read(Rect(-2, -1, 6, 9))
    expected = np.pad(data, ((0, 0), (2, 0), (1, 1)), mode="reflect")[:, :6, :9]
    np.testing.assert_array_equal(out, expected)
    assert valid.all() and out.dtype == np.uint16


def test_nodata_and_nan_pixels_are_not_valid(make_raster) -> None:
    data = np.ones((1, 5, 5), dtype=np.float32)
    data[0, 1, 1] = -9
    data[0, 3, 4] = np.nan
    info = open_raster(make_raster(data, nodata=-9))
    with WindowReader(info) as reader:
        _, valid = reader.read(Rect(0, 0, 5, 5))
    assert not valid[1, 1] and not valid[3, 4] and valid.sum() == 23


def test_a_window_outside_the_raster_is_an_input_error(make_raster) -> None:
    info = open_raster(make_raster(np.zeros((1, 4, 4), np.uint8)))
    with WindowReader(info) as reader, pytest.raises(InputError, match="outside the raster"):
        reader.read(Rect(10, 10, 2, 2))


def test_an_open_dataset_is_handed_on_within_one_run_only(make_raster) -> None:
    from tileseg.sources.raster import release_datasets

    info = open_raster(make_raster(np.zeros((1, 8, 8), np.uint8)))
    with WindowReader(info, run="run-a") as first:
        kept = first._src
    with WindowReader(info, run="run-a") as again:
        assert again._src is kept  # the next chunk of the run reads through the same dataset
    with WindowReader(info, run="run-b") as other:
        assert other._src is not kept  # another run (maybe of a replaced file) opens its own
    with pytest.raises(InputError), WindowReader(info, run="run-a") as failing:
        assert failing._src is kept
        failing.read(Rect(50, 50, 2, 2))
    assert kept.closed  # a reader that failed hands nothing on
    with WindowReader(info, run="run-a") as fresh:
        assert fresh._src is not kept
        kept = fresh._src
    release_datasets("run-a")
    release_datasets("run-b")
    assert kept.closed


def test_a_dataset_that_served_its_budget_is_closed_not_handed_on(make_raster,
                                                                  monkeypatch) -> None:
    import tileseg.sources.raster

    info = open_raster(make_raster(np.zeros((1, 64, 64), np.uint8)))
    monkeypatch.setattr(tileseg.sources.raster._DatasetPool, "MAX_BYTES", 3000)
    with WindowReader(info, run="budget") as reader:
        reader.read(Rect(0, 0, 32, 32))  # 1024 bytes: under the budget
        kept = reader._src
    with WindowReader(info, run="budget") as reader:
        assert reader._src is kept
        reader.read(Rect(0, 0, 64, 32))  # 2048 more: the budget is spent
    assert kept.closed  # its cached blocks go with it
    with WindowReader(info, run="budget") as reader:
        assert reader._src is not kept
    tileseg.sources.raster.release_datasets("budget")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_raster_placed_by_gcps_only_is_told_to_rectify_it(tmp_path) -> None:
    """Assigning a CRS (gdal_edit.py -a_srs, the hint for a raster without one) cannot place
    it: its pixels are on no grid of that CRS until gdalwarp rectifies them."""
    import rasterio
    from rasterio.control import GroundControlPoint

    path = tmp_path / "scanned.tif"
    with rasterio.open(path, "w", driver="GTiff", height=32, width=32, count=1,
                       dtype="uint8") as dst:
        dst.write(np.zeros((1, 32, 32), np.uint8))
        dst.gcps = ([GroundControlPoint(row, col, 500000 + 10 * col, 6000000 - 10 * row)
                     for row, col in ((0, 0), (0, 31), (31, 0), (31, 31))], "EPSG:32631")
    with pytest.raises(InputError) as info:
        open_raster(path)
    message = str(info.value)
    assert "4 ground control points" in message and "gdal_edit" not in message
    assert "gdalwarp -t_srs EPSG:32631 scanned.tif rectified.tif" in message
    assert open_raster(path, allow_no_crs=True).crs_wkt is None  # pixel coordinates, as asked
