"""preview: a PNG quicklook of a mask read back with PIL; bounded reads on a large mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from conftest import per_pixel_model, random_image
from PIL import Image

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import OutputError
from tileseg.pipeline import predict
from tileseg.preview import PreviewConfig, make_preview, stretch

COLOURS = {i: (10 * i, 20 * i, 30 * i) for i in range(4)}  # conftest's per_pixel_model palette


@pytest.fixture
def mask(make_raster: Any, tmp_path: Path) -> Path:
    src = make_raster(random_image(3, 150, 120), "scene.tif")
    dst = tmp_path / "mask.tif"
    predict(PredictConfig(str(src), str(dst), tile_size=64, overlap=16, chunk_size=96),
            model=per_pixel_model(3, 4))
    return dst


def _colours(image: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(c) for c in np.asarray(image.convert("RGB")).reshape(-1, 3)}


def test_preview_draws_the_palette_and_a_legend_of_exact_areas(mask: Path, tmp_path: Path) -> None:
    result = make_preview(mask, tmp_path / "p.png", PreviewConfig(size=300))
    with rasterio.open(mask) as src:
        full = src.read(1)
    present = [int(v) for v in np.unique(full) if v != 255]
    assert len(present) >= 3  # the model draws several classes, so colours can be told apart

    image = Image.open(tmp_path / "p.png")
    assert image.format == "PNG" and image.size == (result.width, result.height)
    assert max(image.size) <= 300
    map_h, map_w = result.map_shape
    assert map_w < image.width  # a legend panel beside the map
    rgb = np.asarray(image.convert("RGB"))
    map_colours = _colours(Image.fromarray(rgb[:map_h, :map_w]))
    legend_colours = _colours(Image.fromarray(rgb[:, map_w:]))
    for v in present:
        assert COLOURS[v] in map_colours and COLOURS[v] in legend_colours  # swatches
    # exact: every pixel counted; 10 m pixels -> 1e-4 km2 each
    assert [a.id for a in result.areas] == present
    for a in result.areas:
        assert a.pixels == int((full == a.id).sum())
        assert a.km2 == pytest.approx(a.pixels * 1e-4)
        assert a.name == f"class {a.id}" and a.color == COLOURS[a.id]
    assert sum(a.share for a in result.areas) == pytest.approx(1.0)


def test_a_large_mask_is_read_decimated_never_whole(make_raster: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    side = 4000
    rows = np.arange(side)[:, None] // 500 + np.arange(side)[None, :] // 1000
    data = (rows % 3).astype(np.uint8)
    path = make_raster(data, "big.tif", block=512, compress="deflate")
    with rasterio.open(path, "r+") as src:
        src.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.mode)

    reads: list[int] = []
    original = rasterio.io.DatasetReader.read

    def spy(self: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        out = original(self, *args, **kwargs)
        reads.append(out.size)
        return out

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy, raising=False)
    size = 512
    estimate = make_preview(path, tmp_path / "e.png", PreviewConfig(size=size, areas="estimate"))
    assert reads and max(reads) <= size * size  # one picture-sized read, nothing more
    reads.clear()
    exact = make_preview(path, tmp_path / "x.png", PreviewConfig(size=size))
    assert max(reads) <= 512 * 512  # block by block: a block, or the picture
    assert sum(reads) >= side * side  # ... and yet every pixel was counted
    assert max(Image.open(tmp_path / "x.png").size) <= size
    counts = np.bincount(data.ravel(), minlength=3)
    assert [a.pixels for a in exact.areas] == counts.tolist()
    for e, x in zip(estimate.areas, exact.areas, strict=True):
        assert e.pixels == pytest.approx(x.pixels, rel=0.05)


def test_geographic_mask_areas_are_on_the_ellipsoid(make_raster: Any, tmp_path: Path) -> None:
    from pyproj import Geod

    data = np.ones((200, 100), np.uint8)
    # 0.01 degree pixels from 60N: a degree of longitude is half as long as at the equator
    path = make_raster(data, "geo.tif", crs="EPSG:4326",
                       transform=Affine(0.01, 0, 10.0, 0, -0.01, 60.0))
    result = make_preview(path, tmp_path / "g.png", PreviewConfig(size=256))
    reference, _ = Geod(ellps="WGS84").polygon_area_perimeter([10, 11, 11, 10], [60, 60, 58, 58])
    assert result.approximate_area
    assert result.areas[0].km2 == pytest.approx(abs(reference) / 1e6, rel=1e-4)


def test_a_mask_without_crs_shows_shares_only(make_raster: Any, tmp_path: Path) -> None:
    data = np.zeros((64, 64), np.uint8)
    data[:16] = 1
    path = make_raster(data, "plain.tif", crs=None, transform=Affine.identity())
    result = make_preview(path, tmp_path / "n.png", PreviewConfig(size=128))
    assert [(a.km2, a.share) for a in result.areas] == [(None, 0.75), (None, 0.25)]


def test_zarr_mask_preview_matches_the_geotiff(make_raster: Any, tmp_path: Path) -> None:
    src = make_raster(random_image(3, 150, 120), "scene.tif")
    for name in ("m.tif", "m.zarr"):
        predict(PredictConfig(str(src), str(tmp_path / name), tile_size=64, overlap=16,
                              chunk_size=64), model=per_pixel_model(3, 4))
    tif = make_preview(tmp_path / "m.tif", tmp_path / "t.png", PreviewConfig(size=200))
    zarr = make_preview(tmp_path / "m.zarr", tmp_path / "z.png", PreviewConfig(size=200))
    assert zarr.areas == tif.areas
    t, z = (np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("t.png", "z.png"))
    assert (t == z).mean() > 0.95  # same picture (nearest sampling may pick neighbours)


def test_over_the_source_stretches_and_blends(mask: Path, tmp_path: Path) -> None:
    scene = tmp_path / "scene.tif"
    plain = make_preview(mask, tmp_path / "a.png", PreviewConfig(size=200, legend=False))
    over = make_preview(mask, tmp_path / "b.png",
                        PreviewConfig(size=200, legend=False, over=str(scene), opacity=0.5))
    a = np.asarray(Image.open(plain.path).convert("RGB")).astype(int)
    b = np.asarray(Image.open(over.path).convert("RGB")).astype(int)
    assert a.shape == b.shape and (a != b).mean() > 0.5  # the image shows through
    # half the class colour plus half the stretched source, nothing else
    with rasterio.open(scene) as src:
        stretched = stretch(src.read(out_shape=(3, *over.map_shape), masked=True))
    assert np.abs(b - (a + stretched.astype(int)) / 2).max() <= 1


def test_stretch_maps_percentiles_to_the_full_range() -> None:
    band = np.ma.masked_array(np.arange(100, dtype=float).reshape(1, 10, 10))
    out = stretch(band)
    assert out.shape == (10, 10, 3) and (out[..., 0] == out[..., 2]).all()  # grey
    assert out[0, 0, 0] == 0 and out[9, 9, 0] == 255 and 120 < out[5, 0, 0] < 135


def test_cli_preview_writes_beside_the_mask_and_refuses_a_non_mask(mask: Path,
                                                                   tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["preview", str(mask), "--size", "256"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mask.png").is_file() and "mask.png" in result.output
    bad = CliRunner().invoke(cli, ["preview", str(tmp_path / "scene.tif")])
    assert bad.exit_code == 2
    assert bad.output.startswith("Error: ") and "class mask" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_predict_draws_a_preview_over_its_source(make_raster: Any, tmp_path: Path) -> None:
    import json

    src = make_raster(random_image(3, 150, 120), "scene.tif")
    report = tmp_path / "run.json"
    config = PredictConfig(str(src), str(tmp_path / "out.tif"), tile_size=64, overlap=16,
                           chunk_size=96, preview=str(tmp_path / "out.png"), report=str(report))
    predict(config, model=per_pixel_model(3, 4))
    image = Image.open(tmp_path / "out.png")
    assert image.format == "PNG" and max(image.size) <= 1024
    written = json.loads(report.read_text())["preview"]
    assert written["path"] == str(tmp_path / "out.png")
    assert len(written["km2_per_class"]) >= 2 and all(v > 0 for v in written["km2_per_class"].values())
    # checked before the run: an existing preview is not replaced without --overwrite
    with pytest.raises(OutputError, match="already exists"):
        predict(PredictConfig(str(src), str(tmp_path / "again.tif"),
                              preview=str(tmp_path / "out.png")), model=per_pixel_model(3, 4))
    assert not (tmp_path / "again.tif").exists()
    assert "--preview" in CliRunner().invoke(cli, ["predict", "--help"]).output


def test_any_integer_class_ids_are_drawn_and_counted(make_raster: Any, tmp_path: Path) -> None:
    data = np.full((40, 60), 4_000_000_000, np.uint32)
    data[:, :15] = 7
    path = make_raster(data, "ids.tif")
    result = make_preview(path, tmp_path / "ids.png", PreviewConfig(size=128))
    assert [(a.id, a.pixels) for a in result.areas] == [(7, 600), (4_000_000_000, 1800)]
    signed = make_raster(np.where(data == 7, -1, 3).astype(np.int16), "signed.tif")
    assert [a.id for a in make_preview(signed, tmp_path / "s.png").areas] == [-1, 3]


def test_a_legend_with_more_classes_than_fit_lists_the_largest(make_raster: Any,
                                                                tmp_path: Path) -> None:
    data = np.zeros((200, 200), np.uint8)
    data[:, :] = np.arange(200)[None, :] % 40  # 40 classes of 5 columns each...
    data[:100] = 39  # ...and one of them much larger
    path = make_raster(data, "many.tif")
    result = make_preview(path, tmp_path / "many.png", PreviewConfig(size=300))
    rgb = np.asarray(Image.open(result.path).convert("RGB"))
    assert max(rgb.shape[:2]) <= 300 and len(result.areas) == 40
    legend = _colours(Image.fromarray(rgb[:, result.map_shape[1]:]))
    largest = next(a for a in result.areas if a.id == 39)
    assert largest.color in legend  # its swatch is shown
    assert sum(a.color in legend for a in result.areas) < 40  # not all 40 fit in 300 px
