"""Scenes as users hold them (issue 20): STAC items, one file per band at mixed resolutions and
CRSs, the model's resolution, areas of interest, and the output's STAC item.

The scene is Sentinel-2 L2A-like (tests/stac_scenes.py): ``blue`` and ``green`` at 10 m,
``nir08`` at 20 m, ``swir16`` at 20 m in the next UTM zone, ``scl`` (class codes) at 20 m. The
reference is what a user would do by hand: stack the bands with ``rasterio.warp.reproject`` onto
the 10 m grid, with the same resampling, and run predict on that GeoTIFF.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from conftest import metadata, per_pixel_model
from rasterio.enums import Resampling
from rasterio.warp import reproject
from stac_scenes import CRS, GRID, SIDE, X0, Y0, write_item, write_scene

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, InputError
from tileseg.models.loaded import LoadedModel
from tileseg.pipeline import predict
from tileseg.scenes import open_scene
from tileseg.scenes.stac import asset_bands, find_band
from tileseg.sources.raster import WindowReader
from tileseg.tiling.grid import Rect

FAST = dict(tile_size=64, overlap=16, chunk_size=256, precision="fp32")
NAMES4 = ("blue", "green", "nir08", "swir16")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("s2")
    files = write_scene(folder)
    return write_item(folder, files), files


def stacked(files: dict[str, Path], keys: tuple[str, ...], transform: Affine = GRID,
            shape: tuple[int, int] = (SIDE, SIDE),
            resampling: dict[str, Resampling] | None = None) -> np.ndarray:
    """The bands stacked by hand: each reprojected onto the grid, nodata 0 kept as nodata."""
    out = np.zeros((len(keys), *shape), np.uint16)
    for i, key in enumerate(keys):
        with rasterio.open(files[key]) as src:
            reproject(rasterio.band(src, 1), out[i], dst_transform=transform, dst_crs=CRS,
                      resampling=(resampling or {}).get(key, Resampling.bilinear),
                      src_nodata=0, dst_nodata=0)
    return out


def write_stack(path: Path, data: np.ndarray, transform: Affine = GRID) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=len(data), dtype=data.dtype.name, crs=CRS, transform=transform,
                       nodata=0, tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(data)
    return path


def named(model: LoadedModel, bands: tuple[str, ...], gsd: float | None = None) -> LoadedModel:
    meta = dataclasses.replace(model.metadata, bands=bands, gsd=gsd)
    return dataclasses.replace(model, metadata=meta)


def mask_of(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def read_all(config: PredictConfig, model: LoadedModel | None = None) -> np.ndarray:
    raster = open_scene(config, model.metadata if model else None).raster
    with WindowReader(raster) as reader:
        return reader.read(Rect(0, 0, raster.height, raster.width))[0]


@pytest.fixture(scope="module")
def deeplab4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepLabV3+ taking the scene's four bands by name, its head shifted so that its mask
    has several classes (a spatial model: tiles and their context matter)."""
    from tileseg.models.loaded import ModelSpec, build_model, save_model

    torch.manual_seed(3)
    module = build_model(ModelSpec(encoder_name="resnet18", in_channels=4, classes=3)).eval()
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(2000, 6000, (1, 4, 128, 128)).astype(np.float32) * 1e-4)
    with torch.no_grad():
        module.segmentation_head[0].bias -= module(x)[0].mean((1, 2))
    meta = dataclasses.replace(metadata(3, 4, scale=1e-4, dtype="uint16"), bands=NAMES4,
                               gsd=10.0)
    path = tmp_path_factory.mktemp("models") / "s2-deeplab"
    save_model(module, path, meta)
    return path


# ---------------------------------------------------------------------------- the reader


def test_an_item_gives_the_mask_of_the_bands_stacked_by_hand_bitwise(scene, tmp_path) -> None:
    item, files = scene
    keys = ("blue", "green", "nir08")  # one CRS: the 20 m band's warp is affine, exact both ways
    model = named(per_pixel_model(3, 5, scale=1e-4, seed=2), keys)
    expected = stacked(files, keys)
    assert np.array_equal(read_all(PredictConfig(str(item), "x.tif"), model), expected)
    ref = predict(PredictConfig(str(write_stack(tmp_path / "ref.tif", expected)),
                                str(tmp_path / "ref_mask.tif"), stac_item=False, **FAST),
                  model=model)
    out = predict(PredictConfig(str(item), str(tmp_path / "mask.tif"), **FAST), model=model)
    assert len(np.unique(mask_of(ref.dst))) >= 3  # a mask worth comparing
    np.testing.assert_array_equal(mask_of(out.dst), mask_of(ref.dst))
    with rasterio.open(out.dst) as mask:  # on the 10 m grid: the finest band's
        assert mask.transform == GRID and mask.shape == (SIDE, SIDE)


def test_a_band_in_a_second_crs_stays_within_the_stated_bound(scene, tmp_path) -> None:
    """Across CRSs, reproject approximates source positions to 1/8 pixel over its chunks and
    tileseg to 1/100 pixel over its fixed blocks, so values may differ by 0.135 source pixel
    times the band's slope (in x and y), plus one for rounding, never more; where no input value
    differs, neither does the mask."""
    item, files = scene
    model = named(per_pixel_model(4, 5, scale=1e-4, seed=4), NAMES4)
    expected = stacked(files, NAMES4)
    got = read_all(PredictConfig(str(item), "x.tif"), model)
    np.testing.assert_array_equal(got[:3], expected[:3])
    with rasterio.open(files["swir16"]) as src:
        source = src.read(1).astype(np.int64)
    slope = max(np.abs(np.diff(source, axis=0)).max(), np.abs(np.diff(source, axis=1)).max())
    diff = np.abs(got[3].astype(np.int64) - expected[3])
    assert diff.max() <= (0.125 + 0.01) * 2 * slope + 1, (diff.max(), slope)
    ref = predict(PredictConfig(str(write_stack(tmp_path / "ref.tif", expected)),
                                str(tmp_path / "ref.mask.tif"), stac_item=False, **FAST),
                  model=model)
    out = predict(PredictConfig(str(item), str(tmp_path / "mask.tif"), **FAST), model=model)
    same_input = (got == expected).all(axis=0)
    np.testing.assert_array_equal(mask_of(out.dst)[same_input], mask_of(ref.dst)[same_input])


def test_reads_of_a_warped_stack_do_not_depend_on_the_window(scene) -> None:
    item, _ = scene
    config = PredictConfig(str(item), "x.tif", bands=NAMES4)
    raster = open_scene(config, None).raster
    assert raster.stack is not None and raster.stack.warped
    whole = read_all(config)
    pieces = np.zeros_like(whole)
    with WindowReader(raster) as reader:  # odd windows, none on the warp's block grid
        for r in range(0, SIDE, 37):
            for c in range(0, SIDE, 23):
                rect = Rect(r, c, min(37, SIDE - r), min(23, SIDE - c))
                pieces[:, rect.row_off:rect.row_end, rect.col_off:rect.col_end] = \
                    reader.read(rect)[0]
    np.testing.assert_array_equal(pieces, whole)


def test_warped_blocks_on_a_fixed_grid_make_reads_independent_of_the_window(
        tmp_path, monkeypatch) -> None:
    """Across CRSs GDAL approximates positions along each block it warps: tileseg warps whole
    blocks of a fixed grid only (here 3 x 3 of them), so any window gives the same pixels, and
    so does any number of warping threads."""
    files = write_scene(tmp_path, side=1100, block=256)
    config = PredictConfig((str(files["blue"]), str(files["swir16"])), "x.tif")
    raster = open_scene(config, None).raster
    assert raster.stack is not None and raster.stack.bands[1].resampling == "bilinear"
    whole = read_all(config)
    pieces = np.zeros_like(whole)
    with WindowReader(raster) as reader:
        for r in range(0, 1100, 301):
            for c in range(0, 1100, 433):
                rect = Rect(r, c, min(301, 1100 - r), min(433, 1100 - c))
                pieces[:, rect.row_off:rect.row_end, rect.col_off:rect.col_end] = \
                    reader.read(rect)[0]
    np.testing.assert_array_equal(pieces, whole)
    monkeypatch.setenv("GDAL_NUM_THREADS", "1")
    np.testing.assert_array_equal(read_all(config), whole)


def test_two_chunk_sizes_give_the_same_mask_with_a_mixed_item(scene, deeplab4, tmp_path) -> None:
    item, _ = scene
    small = predict(PredictConfig(str(item), str(tmp_path / "a.tif"), model=str(deeplab4),
                                  **{**FAST, "chunk_size": 48}))
    large = predict(PredictConfig(str(item), str(tmp_path / "b.tif"), model=str(deeplab4),
                                  **{**FAST, "chunk_size": 512}))
    assert small.chunks > 1 and large.chunks == 1
    assert len(np.unique(mask_of(small.dst))) >= 2
    np.testing.assert_array_equal(mask_of(small.dst), mask_of(large.dst))


def test_class_codes_are_resampled_by_nearest_neighbour_unless_told(scene) -> None:
    item, files = scene
    keys = ("blue", "green", "scl")
    config = PredictConfig(str(item), "x.tif", bands=keys)
    raster = open_scene(config, None).raster
    assert raster.stack is not None
    assert [b.resampling for b in raster.stack.bands] == [None, None, "nearest"]
    got = read_all(config)
    with rasterio.open(files["scl"]) as src:
        scl = np.zeros((SIDE, SIDE), np.uint8)
        reproject(rasterio.band(src, 1), scl, dst_transform=GRID, dst_crs=CRS,
                  resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
        codes = set(np.unique(src.read(1)))
    np.testing.assert_array_equal(got[2], scl)
    assert set(np.unique(got[2])) <= codes  # no code that does not exist
    told = PredictConfig(str(item), "x.tif", bands=keys, resampling=("scl=bilinear",))
    spec = open_scene(told, None).raster.stack
    assert spec is not None and spec.bands[2].resampling == "bilinear"


def test_matching_reads_stac_1_0_and_1_1_bands_and_prefers_cogs() -> None:
    from tileseg.scenes.stac import _item_from_dict

    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    item = _item_from_dict({"type": "Feature", "id": "x", "properties": {}, "assets": {
        "red-jp2": {"href": "B04.jp2", "type": "image/jp2", "roles": ["data"],
                    "eo:bands": [{"name": "B04", "common_name": "red"}]},
        "visual": {"href": "TCI.tif", "type": cog, "roles": ["visual"],
                   "eo:bands": [{"name": "B04", "common_name": "red"},
                                {"name": "B03", "common_name": "green"},
                                {"name": "B02", "common_name": "blue"}]},
        "red": {"href": "B04.tif", "type": cog, "roles": ["data"],
                "eo:bands": [{"name": "B04", "common_name": "red"}]},
        "nir": {"href": "B08.tif", "type": cog, "roles": ["data"],  # STAC 1.1
                "bands": [{"name": "B08", "eo:common_name": "nir", "nodata": 0,
                           "data_type": "uint16"}]},
        "thumbnail": {"href": "t.jpg", "type": "image/jpeg", "roles": ["thumbnail"]},
    }}, "/data/item.json", "/data/item.json")
    assert find_band(item, "RED").asset == "red"  # single-band COG over jp2 and the 3-band TCI
    assert find_band(item, "b04").asset == "red"
    nir = find_band(item, "nir")
    assert (nir.asset, nir.href, nir.nodata) == ("nir", "/data/B08.tif", 0.0)
    with pytest.raises(InputError, match="asset visual has 3 bands"):
        find_band(item, "visual")
    assert "thumbnail" not in {b.asset for b in asset_bands(item)}


def test_what_counts_as_a_stac_source() -> None:
    from tileseg.scenes.stac import is_stac_source, split_fragment

    assert is_stac_source("item.json") and is_stac_source("s3://b/k/item.JSON")
    assert is_stac_source("https://earth-search.aws.element84.com/v1/collections/"
                          "sentinel-2-l2a/items/S2B_31UDQ_20240601_0_L2A")
    assert not is_stac_source("https://example.com/items/scene.tif")
    assert not is_stac_source("scene.tif") and not is_stac_source("s3://b/scene.tif")
    assert split_fragment("search.json#S2B_X") == ("search.json", "S2B_X")
    assert split_fragment("scene.tif#x") == ("scene.tif#x", None)


def test_a_band_the_item_lacks_names_what_it_has(scene) -> None:
    item, _ = scene
    with pytest.raises(InputError) as caught:
        open_scene(PredictConfig(str(item), "x.tif", bands=("red", "green", "blue")), None)
    message = str(caught.value)
    assert "has no band 'red'" in message and "nir08" in message and "scl" in message
    assert "thumbnail" not in message and caught.value.exit_code == 2


def test_a_pystac_item_in_the_python_api(scene, tmp_path) -> None:
    import pystac

    item_path, _ = scene
    item = pystac.Item.from_file(str(item_path))
    keys = ("blue", "green", "nir08")
    model = named(per_pixel_model(3, 5, scale=1e-4, seed=2), keys)
    from_object = predict(PredictConfig(item, str(tmp_path / "a.tif"), **FAST), model=model)
    from_path = predict(PredictConfig(str(item_path), str(tmp_path / "b.tif"), **FAST),
                        model=model)
    np.testing.assert_array_equal(mask_of(from_object.dst), mask_of(from_path.dst))
    written = json.loads(Path(from_object.stac_item or "").read_text())
    assert {"rel": "derived_from", "href": str(item_path)}.items() <= written["links"][0].items()


# ------------------------------------------------------------------ several files, the CLI


def test_several_files_as_one_raster_on_the_command_line(scene, deeplab4, tmp_path) -> None:
    item, files = scene
    args = ["-m", str(deeplab4), "--tile-size", "64", "--overlap", "16", "-q"]
    ordered = [str(files[k]) for k in NAMES4]
    result = CliRunner().invoke(cli, ["predict", *ordered, "-o", str(tmp_path / "o.tif"), *args])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["predict", *ordered, str(tmp_path / "last.tif"), *args])
    assert result.exit_code == 0, result.output  # as rio: the last path is DST
    from_item = predict(PredictConfig(str(item), str(tmp_path / "item.tif"), model=str(deeplab4),
                                      tile_size=64, overlap=16))
    np.testing.assert_array_equal(mask_of(tmp_path / "o.tif"), mask_of(from_item.dst))
    np.testing.assert_array_equal(mask_of(tmp_path / "last.tif"), mask_of(from_item.dst))


def test_named_bands_on_a_raster_are_one_line_exit_2(scene, tmp_path) -> None:
    _, files = scene
    result = CliRunner().invoke(cli, ["predict", str(files["blue"]), str(tmp_path / "o.tif"),
                                      "--bands", "red,green"])
    assert result.exit_code == 2 and "only a STAC item" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_manifests_take_items_collections_and_lists_of_files(scene, deeplab4, tmp_path) -> None:
    from tileseg.batch import BatchConfig, load_manifest, run_manifest

    item, files = scene
    data = json.loads(item.read_text())
    hrefs = {k: str(item.parent / a["href"]) for k, a in data["assets"].items()}
    features = []
    for n in range(2):
        feature = json.loads(json.dumps(data))
        feature["id"] = f"S2B_TEST_{n}"
        for key, asset in feature["assets"].items():
            asset["href"] = hrefs[key]
        features.append(feature)
    collection = tmp_path / "search.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    scenes = load_manifest(collection, output_dir=tmp_path / "out", suffix=".mask.tif")
    assert [Path(s.dst).name for s in scenes] == ["S2B_TEST_0.mask.tif", "S2B_TEST_1.mask.tif"]
    defaults = {"model": str(deeplab4), "tile_size": 64, "overlap": 16}
    first = run_manifest(collection, BatchConfig(output_dir=str(tmp_path / "out"),
                                                 suffix=".mask.tif", defaults=defaults,
                                                 summary=str(tmp_path / "s.json"),
                                                 previews=False))
    assert first.ok and first.counts()["succeeded"] == 2
    again = run_manifest(collection, BatchConfig(output_dir=str(tmp_path / "out"),
                                                 suffix=".mask.tif", defaults=defaults,
                                                 summary=str(tmp_path / "s.json"),
                                                 previews=False))
    assert again.counts()["skipped"] == 2  # complete outputs: as for any manifest
    yaml_manifest = tmp_path / "files.yaml"
    ordered = [hrefs[k] for k in NAMES4]
    yaml_manifest.write_text(json.dumps([{"src": ordered, "dst": "stack.tif"}]))
    csv_manifest = tmp_path / "files.csv"
    csv_manifest.write_text(f"src,dst\n{';'.join(ordered)},stack2.tif\n")
    for manifest in (yaml_manifest, csv_manifest):
        (scene_,) = load_manifest(manifest)
        assert scene_.src == tuple(ordered)
        result = run_manifest(manifest, BatchConfig(defaults=defaults, previews=False,
                                                    summary=str(manifest) + ".summary.json"))
        assert result.ok, result.scenes
    # run again: the stack is skipped and keeps the figures the summary had for it, as a file
    again = run_manifest(yaml_manifest, BatchConfig(defaults=defaults, previews=False,
                                                    summary=str(yaml_manifest) + ".summary.json"))
    (skipped,) = again.scenes
    assert skipped.status == "skipped" and skipped.tiles_total > 0, skipped
    np.testing.assert_array_equal(mask_of(tmp_path / "stack.tif"),
                                  mask_of(tmp_path / "out" / "S2B_TEST_0.mask.tif"))


# ------------------------------------------------------------------------- the resolution


def test_resolution_model_runs_at_the_models_pixel_size(scene, tmp_path, caplog) -> None:
    item, files = scene
    keys = ("blue", "green", "nir08")
    model = named(per_pixel_model(3, 5, scale=1e-4, seed=2), keys, gsd=20.0)
    with caplog.at_level(logging.WARNING, logger="tileseg"):
        native = predict(PredictConfig(str(item), str(tmp_path / "native.tif"), **FAST),
                         model=model)
    assert "pixel size 10 m but the model was trained at 20 m" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tileseg"):
        coarse = predict(PredictConfig(str(item), str(tmp_path / "coarse.tif"),
                                       resolution="model", **FAST), model=model)
    assert "trained at" not in caplog.text and mask_of(native.dst).shape == (SIDE, SIDE)
    grid20 = Affine(20.0, 0.0, X0, 0.0, -20.0, Y0)
    with rasterio.open(coarse.dst) as mask:
        assert mask.transform == grid20 and mask.shape == (SIDE // 2, SIDE // 2)
    expected = stacked(files, keys, grid20, (SIDE // 2, SIDE // 2))
    ref = predict(PredictConfig(str(write_stack(tmp_path / "ref.tif", expected, grid20)),
                                str(tmp_path / "ref.mask.tif"), stac_item=False, **FAST),
                  model=model)
    np.testing.assert_array_equal(mask_of(coarse.dst), mask_of(ref.dst))
    single = predict(PredictConfig(str(files["blue"]), str(tmp_path / "one.tif"),
                                   resolution=20, **FAST),
                     model=named(per_pixel_model(1, 3, scale=1e-4), ("blue",)))
    assert mask_of(single.dst).shape == (SIDE // 2, SIDE // 2)


def test_info_shows_both_pixel_sizes(scene, deeplab4) -> None:
    item, _ = scene
    model = deeplab4.parent / "coarse-gsd"
    import shutil

    shutil.copytree(deeplab4, model)
    meta = json.loads((model / "tileseg.json").read_text())
    (model / "tileseg.json").write_text(json.dumps({**meta, "gsd": 30.0}))
    result = CliRunner().invoke(cli, ["info", str(item), "-m", str(model), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["raster"]["pixel_size_m"] == 10.0 and facts["model"]["gsd"] == 30.0
    assert any("trained at 30 m" in w and "--resolution model" in w for w in facts["warnings"])
    result = CliRunner().invoke(cli, ["info", str(item), "-m", str(model), "--json",
                                      "--resolution", "model"])
    facts = json.loads(result.stdout)
    assert facts["raster"]["size"] == [40, 40] and not facts["warnings"]


def test_resolution_model_without_a_model_gsd_is_exit_2(scene) -> None:
    item, _ = scene
    with pytest.raises(ConfigError, match="states no pixel size"):
        open_scene(PredictConfig(str(item), "x.tif", resolution="model"),
                   metadata(3, 3))


# ------------------------------------------------------------------- areas of interest


@pytest.fixture(scope="module")
def stack_tif(scene, tmp_path_factory) -> Path:
    _, files = scene
    return write_stack(tmp_path_factory.mktemp("stack") / "stack.tif", stacked(files, NAMES4))


@pytest.fixture(scope="module")
def full_run(stack_tif, deeplab4, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("full") / "full.tif"
    predict(PredictConfig(str(stack_tif), str(out), model=str(deeplab4), stac_item=False, **FAST))
    return mask_of(out)


def aoi_polygon() -> object:
    """A diagonal band with a hole, in the raster's CRS: its bounds span every tile, the band
    itself misses the two far corners' tiles (they are skipped). Off the tile grid's phase and
    off pixel edges."""
    import shapely

    def xy(col: float, row: float) -> tuple[float, float]:
        return X0 + 10 * col, Y0 - 10 * row

    outer = [xy(45.3, 52.1), xy(58.7, 44.6), xy(116.4, 103.9), xy(104.2, 116.8)]
    hole = [xy(78.5, 76.2), xy(86.3, 76.2), xy(86.3, 84.9), xy(78.5, 84.9)]
    return shapely.Polygon(outer, holes=[hole])


def write_vector(path: Path, geometry: object, crs: str) -> Path:
    import geopandas as gpd

    gpd.GeoDataFrame({"name": ["field"]}, geometry=[geometry], crs=crs).to_file(path)
    return path


def inside_pixels(geometry: object, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    from rasterio.features import geometry_mask

    return geometry_mask([geometry], shape, transform, invert=True)


def test_an_aoi_is_the_full_run_inside_its_polygons_and_nodata_outside(
        stack_tif, deeplab4, full_run, tmp_path) -> None:
    import shapely
    from rasterio.warp import transform_geom

    polygon = aoi_polygon()
    in_4326 = shapely.geometry.shape(transform_geom(CRS, "EPSG:4326", polygon.__geo_interface__))
    aoi = write_vector(tmp_path / "fields.gpkg", in_4326, "EPSG:4326")  # another CRS
    result = predict(PredictConfig(str(stack_tif), str(tmp_path / "aoi.tif"), model=str(deeplab4),
                                   aoi=str(aoi), report=str(tmp_path / "r.json"),
                                   zarr_path=str(tmp_path / "aoi.zarr"), probabilities="uint8",
                                   **FAST))
    with rasterio.open(result.dst) as out:
        mask, transform = out.read(1), out.transform
    pixels = shapely.affinity.affine_transform(
        shapely.geometry.shape(transform_geom("EPSG:4326", CRS, in_4326.__geo_interface__)),
        [0.1, 0, 0, -0.1, -X0 / 10, Y0 / 10])
    c0, r0, c1, r1 = (int(np.floor(pixels.bounds[0])), int(np.floor(pixels.bounds[1])),
                      int(np.ceil(pixels.bounds[2])), int(np.ceil(pixels.bounds[3])))
    assert transform == GRID @ Affine.translation(c0, r0)  # the AOI's bounds on the grid
    assert mask.shape == (r1 - r0, c1 - c0)
    full = full_run[r0:r1, c0:c1]
    inside = mask != 255
    expected_inside = inside_pixels(polygon, transform, mask.shape)
    # pixel centres inside, as GDAL rasterizes; GDAL's own rounding may differ on the edge
    assert (inside != expected_inside).sum() <= 0.02 * inside.size
    np.testing.assert_array_equal(mask[inside], full[inside])
    assert inside.sum() > 0.5 * expected_inside.sum()
    assert len(np.unique(full[inside])) >= 2  # the comparison sees several classes
    assert result.tiles_skipped_aoi > 0
    assert result.tiles_inferred + result.tiles_skipped_aoi + result.tiles_skipped_nodata == \
        result.tiles_total
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tiles_skipped_aoi"] == result.tiles_skipped_aoi
    import zarr

    group = zarr.open_group(str(tmp_path / "aoi.zarr"), mode="r")
    np.testing.assert_array_equal(group["mask"][:], mask)
    assert not group["probabilities"][:][:, ~inside].any()


def test_a_bbox_aoi_in_lon_lat_and_two_chunk_sizes(stack_tif, deeplab4, full_run,
                                                   tmp_path) -> None:
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(CRS, "EPSG:4326", X0 + 130, Y0 - 1010,
                                                X0 + 705, Y0 - 515)
    bbox = f"{west},{south},{east},{north}"
    masks = []
    for chunk in (48, 512):
        result = predict(PredictConfig(str(stack_tif), str(tmp_path / f"{chunk}.tif"),
                                       model=str(deeplab4), aoi=bbox,
                                       **{**FAST, "chunk_size": chunk}))
        with rasterio.open(result.dst) as out:
            masks.append(out.read(1))
            col0, row0 = ~GRID @ (out.transform.c, out.transform.f)
    np.testing.assert_array_equal(masks[0], masks[1])
    r0, c0 = round(row0), round(col0)
    inside = masks[0] != 255
    assert inside.mean() > 0.8  # a bbox bent into UTM: nearly all of its bounds
    full = full_run[r0 : r0 + masks[0].shape[0], c0 : c0 + masks[0].shape[1]]
    np.testing.assert_array_equal(masks[0][inside], full[inside])


def test_which_pixels_are_inside_does_not_depend_on_the_window() -> None:
    import shapely

    from tileseg.scenes.aoi import AoiMask, _edges

    polygon = shapely.Polygon([(3.2, 1.7), (90.4, 10.1), (70.5, 77.7), (5.5, 60.25)],
                              holes=[[(30, 30), (50, 30), (50, 50), (30, 50)]])
    mask = AoiMask(_edges(polygon, 0, 0))
    whole = mask.inside(Rect(0, 0, 90, 100))
    parts = np.zeros_like(whole)
    for r in range(0, 90, 17):
        for c in range(0, 100, 29):
            rect = Rect(r, c, min(17, 90 - r), min(29, 100 - c))
            parts[r : rect.row_end, c : rect.col_end] = mask.inside(rect)
    np.testing.assert_array_equal(parts, whole)
    from rasterio.features import geometry_mask

    gdal = geometry_mask([polygon], (90, 100), Affine.identity(), invert=True)
    assert (gdal != whole).sum() <= 4 and not whole[40, 40] and whole[20, 20]


# ------------------------------------------------------------------- the output's item


def test_the_output_item_reads_back_with_every_extension(scene, deeplab4, tmp_path) -> None:
    import pystac
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.mlm import MLMExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    item, _ = scene
    dst = tmp_path / "scene.mask.tif"
    result = CliRunner().invoke(cli, [
        "predict", str(item), str(dst), "-m", str(deeplab4), "--tile-size", "64", "--overlap",
        "16", "--zarr", str(tmp_path / "scene.mask.zarr"), "--probabilities", "uint8",
        "--vectorize", str(tmp_path / "scene.mask.gpkg"), "--preview",
        str(tmp_path / "scene.mask.png"), "-q"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "scene.mask.stac.json"
    out = pystac.Item.from_file(str(path))
    assert out.datetime is not None and out.datetime.isoformat().startswith("2024-06-01T10:56")
    assert out.bbox is not None and out.geometry is not None
    proj = ProjectionExtension.ext(out)
    assert (proj.code, proj.shape, proj.transform) == (CRS, [SIDE, SIDE], list(GRID)[:6])
    assert set(out.assets) == {"mask", "zarr", "probabilities", "polygons", "preview", "model"}
    mask = out.assets["mask"]
    assert mask.get_absolute_href() == str(dst)
    assert mask.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
    (band,) = RasterExtension.ext(mask).bands or []
    assert (band.data_type, band.nodata, band.spatial_resolution) == ("uint8", 255, 10.0)
    classes = ClassificationExtension.ext(mask).classes or []
    assert [(c.value, c.name, c.color_hint) for c in classes] == [
        (0, "class_0", "000000"), (1, "class_1", "0A141E"), (2, "class_2", "14283C")]
    files = FileExtension.ext(mask)
    assert files.size == dst.stat().st_size
    assert files.checksum == "1220" + hashlib.sha256(dst.read_bytes()).hexdigest()
    for name in ("polygons", "preview"):
        local = Path(out.assets[name].get_absolute_href() or "")
        assert local.is_file() and FileExtension.ext(out.assets[name]).size == local.stat().st_size
    assert out.assets["preview"].roles == ["overview"]
    assert out.assets["probabilities"].get_absolute_href() == str(
        tmp_path / "scene.mask.zarr" / "probabilities")
    props = out.properties
    assert "https://stac-extensions.github.io/processing/v1.2.0/schema.json" in \
        out.stac_extensions  # pystac has no accessor for processing: read as fields
    from tileseg._version import __version__

    assert props["processing:software"] == {"tileseg": __version__}
    assert props["processing:lineage"].startswith("tileseg predict of")
    mlm = MLMExtension.ext(out)
    assert (mlm.mlm_name, mlm.architecture, mlm.tasks, mlm.framework) == (
        "s2-deeplab", "DeepLabV3Plus", ["semantic-segmentation"], "PyTorch")
    (model_input,) = mlm.input or []
    assert model_input.bands == list(NAMES4) and model_input.input.shape == [-1, 4, 64, 64]
    assert props["mlm:input"][0]["value_scaling"][0] == {"type": "z-score", "mean": 0.0,
                                                         "stddev": pytest.approx(1e4)}
    (model_output,) = mlm.output or []
    assert model_output.result.shape == [-1, 3, 64, 64] and len(model_output.classes) == 3
    assert out.assets["model"].roles == ["mlm:model", "mlm:weights"]  # as the model's own item
    (source,) = [link for link in out.links if link.rel == "derived_from"]
    assert source.get_absolute_href() == str(item)
    assert props["tileseg:tiles"]["total"] == 9


def test_the_item_replaces_only_an_item_tileseg_wrote(stack_tif, deeplab4, tmp_path) -> None:
    args = ["predict", str(stack_tif), str(tmp_path / "m.tif"), "--tile-size", "64",
            "--overlap", "16", "-q"]
    theirs = tmp_path / "m.stac.json"
    theirs.write_text('{"type": "Feature", "id": "mine"}')
    model = deeplab4
    result = CliRunner().invoke(cli, [*args, "-m", str(model)])
    assert result.exit_code == 4 and "--no-stac-item" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.stac.json"]
    assert theirs.read_text() == '{"type": "Feature", "id": "mine"}'
    result = CliRunner().invoke(cli, [*args, "-m", str(model), "--no-stac-item"])
    assert result.exit_code == 0 and theirs.read_text() == '{"type": "Feature", "id": "mine"}'
    theirs.unlink()
    result = CliRunner().invoke(cli, [*args, "-m", str(model), "--overwrite"])
    assert result.exit_code == 0 and json.loads(theirs.read_text())["id"] == "m"
    result = CliRunner().invoke(cli, [*args, "-m", str(model), "--overwrite"])
    assert result.exit_code == 0, result.output  # its own item is replaced


def test_config_refuses_bad_scene_options() -> None:
    for kwargs, word in ((dict(resolution=-3), "resolution"), (dict(resolution="fine"),
                                                               "resolution"),
                         (dict(resampling=("fancy",)), "unknown method"),
                         (dict(resampling=("=nearest",)), "NAME=METHOD"),
                         (dict(aoi_crs="EPSG:4326"), "give aoi too"),
                         (dict(bands=("red", "")), "empty name"), (dict(src=[]), "lists no")):
        with pytest.raises(ConfigError, match=word):
            PredictConfig(**{"src": "a.tif", "dst": "b.tif", **kwargs})  # type: ignore[arg-type]


# ------------------------------------------------------------------------- object storage

BUCKET = "tileseg-stac"


@pytest.fixture(scope="module")
def s3_scene(tmp_path_factory):
    """A larger scene (512 px at 10 m, 256 px blocks) on the loopback store: large enough that
    what a run reads is its blocks, not the fixed cost of opening small files."""
    from s3_server import running_s3, s3_environment

    folder = tmp_path_factory.mktemp("s2-s3")
    files = write_scene(folder, side=512, block=256)
    item = write_item(folder, files)
    with running_s3() as server, s3_environment(server):
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        for path in folder.iterdir():
            client.upload_file(str(path), BUCKET, f"scenes/{path.name}")
            # and readable anonymously over http(s), as a public catalogue's items are
            client.upload_file(str(path), BUCKET, f"public/{path.name}",
                               ExtraArgs={"ACL": "public-read"})
        yield server, item, files


def test_an_item_on_s3_reads_each_asset_about_once(s3_scene, tmp_path) -> None:
    s3_scene, item, files = s3_scene
    model = named(per_pixel_model(4, 5, scale=1e-4, seed=4), NAMES4)
    settings = dict(tile_size=128, overlap=16, precision="fp32")  # the default chunk size
    local = predict(PredictConfig(str(item), str(tmp_path / "local.tif"), **settings),
                    model=model)
    s3_scene.traffic.reset()
    url = f"s3://{BUCKET}/out/mask.tif"
    remote = predict(PredictConfig(f"s3://{BUCKET}/scenes/item.json", url, **settings),
                     model=model)
    read = s3_scene.traffic.per_object
    for key in NAMES4:
        ratio = read.get(f"/{BUCKET}/scenes/{files[key].name}", 0) / files[key].stat().st_size
        assert 0.3 <= ratio <= 1.3, (key, ratio)
    assert f"/{BUCKET}/scenes/SCL.tif" not in read  # only the bands the model takes
    fetched = tmp_path / "fetched.tif"
    client = s3_scene.client()
    fetched.write_bytes(client.get_object(Bucket=BUCKET, Key="out/mask.tif")["Body"].read())
    np.testing.assert_array_equal(mask_of(fetched), mask_of(local.dst))
    assert remote.stac_item == f"s3://{BUCKET}/out/mask.stac.json"
    written = json.loads(client.get_object(Bucket=BUCKET, Key="out/mask.stac.json")["Body"]
                         .read())
    assert written["assets"]["mask"]["href"] == "./mask.tif"
    assert written["assets"]["mask"]["file:size"] == fetched.stat().st_size
    assert written["links"][0]["href"] == f"s3://{BUCKET}/scenes/item.json"


def test_an_item_over_http_with_relative_hrefs(s3_scene, tmp_path) -> None:
    server, item, _ = s3_scene
    model = named(per_pixel_model(4, 5, scale=1e-4, seed=4), NAMES4)
    settings = dict(tile_size=128, overlap=16, precision="fp32", stac_item=False)
    local = predict(PredictConfig(str(item), str(tmp_path / "local.tif"), **settings),
                    model=model)
    url = f"{server.endpoint}/{BUCKET}/public/item.json"  # assets resolved against it
    remote = predict(PredictConfig(url, str(tmp_path / "http.tif"), **settings), model=model)
    np.testing.assert_array_equal(mask_of(remote.dst), mask_of(local.dst))


def test_an_interrupted_item_run_with_an_aoi_resumes_to_the_same_mask(scene, tmp_path) -> None:
    from conftest import interrupt_after

    item, _ = scene
    keys = ("blue", "green", "nir08")
    model = named(per_pixel_model(3, 5, scale=1e-4, seed=2), keys)
    aoi = aoi_polygon()
    path = write_vector(tmp_path / "aoi.gpkg", aoi, CRS)
    settings = dict(aoi=str(path), tile_size=64, overlap=16, chunk_size=48, precision="fp32")
    whole = predict(PredictConfig(str(item), str(tmp_path / "whole.tif"), **settings),
                    model=model)
    with pytest.raises(KeyboardInterrupt):
        predict(PredictConfig(str(item), str(tmp_path / "resumed.tif"), **settings), model=model,
                progress=interrupt_after(1))
    assert (tmp_path / "resumed.tif.partial").is_dir()
    resumed = predict(PredictConfig(str(item), str(tmp_path / "resumed.tif"), resume=True,
                                    **settings), model=model)
    assert resumed.report["tiles_reused"] > 0
    np.testing.assert_array_equal(mask_of(resumed.dst), mask_of(whole.dst))
