"""predict() end to end on real GeoTIFFs and Zarr stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import (
    CountingModel,
    interrupt_after,
    metadata,
    per_pixel_model,
    random_image,
    untiled_mask,
)

from tileseg.config import PredictConfig
from tileseg.errors import RunError, SourceChangedError
from tileseg.models.loaded import wrap_module
from tileseg.pipeline import predict
from tileseg.progress import Progress


def _config(src: Path, dst: Path, **kw: object) -> PredictConfig:
    base: dict[str, object] = dict(tile_size=64, overlap=16, chunk_size=96)
    base.update(kw)
    return PredictConfig(src=str(src), dst=str(dst), **base)  # type: ignore[arg-type]


def _interrupt_after_two_chunks(src: Path, dst: Path) -> None:
    """Run predict and stop it (Ctrl-C) once two chunks are done, leaving DST.partial."""
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, dst, workers=1), model=per_pixel_model(3, 4),
                progress=interrupt_after(2))


@pytest.mark.parametrize(
    ("dtype", "bands", "shape", "tile", "overlap"),
    [("uint8", 3, (101, 203), 64, 16), ("uint16", 4, (130, 77), 48, 7),
     ("int16", 2, (1, 1), 32, 0), ("float32", 5, (90, 150), 40, 24)],
)
def test_per_pixel_model_tiled_equals_untiled(make_raster, tmp_path, dtype, bands, shape, tile,
                                              overlap) -> None:
    data = random_image(bands, *shape, dtype=dtype)
    src = make_raster(data)
    scale = 1 / 255 if dtype == "uint8" else 1e-3
    model = per_pixel_model(bands, 5, scale=scale)
    result = predict(_config(src, tmp_path / "out.tif", tile_size=tile, overlap=overlap,
                             precision="fp32"), model=model)
    with rasterio.open(result.dst) as out:
        mask = out.read(1)
    np.testing.assert_array_equal(mask, untiled_mask(model, data, scale))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16"])
def test_a_lossless_cast_gives_the_mask_of_a_converted_raster(make_raster, tmp_path,
                                                              dtype) -> None:
    """A model trained on float32 takes integer rasters as if gdal_translate -ot Float32 had
    converted them first."""
    data = random_image(3, 70, 90, dtype=dtype, seed=3)
    scale = 1 / 32 if dtype == "uint8" else 1e-3  # values spread over a few units
    model = wrap_module(CountingModel(3, 5, seed=4), metadata(5, 3, scale=scale, dtype="float32"))
    masks = []
    for name, array in (("raw.tif", data), ("converted.tif", data.astype(np.float32))):
        result = predict(_config(make_raster(array, name), tmp_path / f"{name}.mask.tif",
                                 precision="fp32"), model=model)
        with rasterio.open(result.dst) as out:
            masks.append(out.read(1))
    assert len(np.unique(masks[0])) >= 3  # several classes, so the comparison means something
    np.testing.assert_array_equal(masks[0], masks[1])


def test_every_tile_is_inferred_exactly_once(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 300, 410))
    model = per_pixel_model(3, 4)
    result = predict(_config(src, tmp_path / "out.tif"), model=model)
    assert isinstance(model.module, CountingModel)
    assert result.tiles_inferred == result.tiles_total == model.module.tiles_seen
    assert result.chunks > 4  # several chunks, so overlaps really crossed chunk borders


def test_georeferencing_round_trip_keeps_rotation(make_raster, tmp_path) -> None:
    import xarray as xr

    rotated = Affine(8.0, 3.0, 600000.0, 2.0, -8.0, 5000000.0)
    src = make_raster(random_image(3, 120, 90), transform=rotated, crs="EPSG:32633")
    result = predict(_config(src, tmp_path / "out.tif", zarr_path=str(tmp_path / "out.zarr")),
                     model=per_pixel_model(3, 3))
    with rasterio.open(src) as a, rasterio.open(result.dst) as b:
        assert b.transform == a.transform and b.crs == a.crs
        assert (b.width, b.height) == (a.width, a.height)
    ds = xr.open_zarr(tmp_path / "out.zarr", decode_coords="all")
    assert ds["mask"].shape == (120, 90)
    assert ds["spatial_ref"].attrs["GeoTransform"].split()[:3] == ["600000.0", "8.0", "3.0"]


def test_zarr_output_opens_georeferenced_in_xarray(make_raster, tmp_path) -> None:
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    data = random_image(3, 150, 170)
    src = make_raster(data)
    model = per_pixel_model(3, 4, scale=1 / 255)
    predict(_config(src, tmp_path / "out.zarr", probabilities="uint8"), model=model)
    ds = xr.open_zarr(tmp_path / "out.zarr", decode_coords="all", mask_and_scale=False)
    with rasterio.open(src) as ref:
        assert ds.rio.crs == ref.crs
        assert ds["mask"].rio.transform() == ref.transform
    np.testing.assert_array_equal(ds["mask"].values, untiled_mask(model, data, 1 / 255))
    probs = ds["probabilities"].values.astype(int)
    assert probs.shape == (4, 150, 170)
    assert np.abs(probs.sum(axis=0) - 255).max() <= 3  # uint8 rounding of 4 classes
    assert ds.attrs["tileseg"]["complete"] is True


def test_nodata_pixels_stay_nodata_and_empty_tiles_are_skipped(make_raster, tmp_path) -> None:
    data = random_image(3, 200, 200)
    data[:, :100, :] = 0  # top half nodata: the top row of tiles holds no valid pixel
    src = make_raster(data, nodata=0)
    model = per_pixel_model(3, 3)
    result = predict(_config(src, tmp_path / "out.tif", tile_size=64, overlap=0), model=model)
    with rasterio.open(result.dst) as out:
        mask = out.read(1)
        assert out.nodata == 255
    invalid = (data == 0).any(axis=0)
    assert (mask[invalid] == 255).all() and (mask[~invalid] < 3).all()
    assert result.tiles_skipped_nodata >= 4  # the first tile row lies wholly in nodata
    assert result.tiles_inferred + result.tiles_skipped_nodata == result.tiles_total


def test_deeplab_at_513_uses_real_neighbours_and_crops(make_raster, tmp_path, deeplab_dir) -> None:
    from tileseg.models.formats import load_model

    data = random_image(3, 600, 560)
    src = make_raster(data)
    model = load_model(deeplab_dir)
    assert model.context_size(513) == 528
    result = predict(PredictConfig(str(src), str(tmp_path / "out.tif"), model=str(deeplab_dir),
                                   overlap=0, chunk_size=4096), model=model)
    assert result.tiles_inferred == 4
    # Overlap 0 becomes 1 (step 512, on the model's 16-px grid). The first tile's logits come
    # from the 528 window of real pixels that starts at the raster's origin, exactly what a
    # whole-raster pass sees there; the tile is its first 513 rows and columns.
    ctx = data[:, :528, :528]
    with torch.no_grad():
        x = torch.from_numpy(ctx.astype(np.float32) / 255)[None]
        expected = model.module(x)[0, :, :513, :513].argmax(0).numpy()
    with rasterio.open(result.dst) as out:
        mask = out.read(1)
    # overlap 0 + hann: the top-left core is that tile alone
    np.testing.assert_array_equal(mask[:505, :505], expected[:505, :505])


def test_interrupted_run_leaves_no_output_and_resume_completes_identically(make_raster,
                                                                           tmp_path) -> None:
    src = make_raster(random_image(3, 260, 260))
    clean = predict(_config(src, tmp_path / "clean.tif"), model=per_pixel_model(3, 4))

    dst = tmp_path / "out.tif"
    _interrupt_after_two_chunks(src, dst)
    assert not dst.exists()
    assert (tmp_path / "out.tif.partial").is_dir()
    with pytest.raises(Exception, match="pass resume"):
        predict(_config(src, dst), model=per_pixel_model(3, 4))
    kept_chunks, kept_tiles = _work_left_by(dst)
    events: list[Progress] = []
    resumed = predict(_config(src, dst, resume=True), model=per_pixel_model(3, 4),
                      progress=events.append)
    # progress counts the chunks finished before, its rate leaves them out
    assert events[-1].done == events[-1].total and 0 < events[0].start == events[-1].start
    assert events[-1].rate == (events[-1].done - events[-1].start) / events[-1].elapsed
    assert 0 < resumed.tiles_inferred < clean.tiles_inferred
    # the report counts what the interrupted run had done, and nothing is inferred twice
    assert resumed.report["chunks_resumed"] == kept_chunks >= 2
    assert resumed.report["tiles_reused"] == kept_tiles > 0
    assert resumed.tiles_inferred + kept_tiles == clean.tiles_inferred
    assert not (tmp_path / "out.tif.partial").exists()
    with rasterio.open(clean.dst) as a, rasterio.open(dst) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


@pytest.mark.parametrize("recover", ["resume", "overwrite"])
def test_a_run_killed_before_its_first_chunk_is_recovered_by_resume_or_overwrite(
        make_raster, tmp_path, monkeypatch: pytest.MonkeyPatch, recover: str) -> None:
    import tileseg.pipeline
    from tileseg.outputs.staging import LocalStaging

    src = make_raster(random_image(3, 150, 230))
    clean = predict(_config(src, tmp_path / "clean.tif"), model=per_pixel_model(3, 4))
    real = tileseg.pipeline.create_zarr

    def create_then_die(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # killed right after the staged Zarr store was created

    monkeypatch.setattr(tileseg.pipeline, "create_zarr", create_then_die)
    dst = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        predict(_config(src, dst), model=per_pixel_model(3, 4))
    monkeypatch.undo()
    staging = Path(f"{dst}.partial")
    assert (staging / "mosaic.zarr" / "zarr.json").is_file()
    assert json.loads((staging / "run.json").read_text())["ready"] is False  # written first
    result = predict(_config(src, dst, **{recover: True}), model=per_pixel_model(3, 4))
    assert result.tiles_inferred == clean.tiles_inferred and not staging.exists()
    with rasterio.open(clean.dst) as a, rasterio.open(dst) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    # a staging folder is removed with its run record last: cut short, it is still tileseg's
    order: list[str] = []
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: order.append(self.name))
    monkeypatch.setattr("shutil.rmtree", lambda path, *a, **k: order.append(Path(path).name))
    monkeypatch.setattr(Path, "rmdir", lambda self: order.append(self.name))
    staging.mkdir()
    for name in ("mosaic.zarr", "work", "zz-extra"):
        (staging / name).mkdir()
    (staging / "run.json").write_text("{}")
    LocalStaging(dst).discard()
    assert order[-2:] == ["run.json", "out.tif.partial"] and len(order) == 5


def _work_left_by(dst: Path) -> tuple[int, int]:
    """Chunks an interrupted run finished or saved the logits of, and their inferred tiles, read
    from its work folder (done records and saved pieces)."""
    work = Path(f"{dst}.partial") / "work"
    chunks: dict[str, int] = {}
    for piece in (work / "pieces").glob("*.npz"):
        with np.load(piece) as arrays:
            chunks[piece.stem] = int(arrays["tiles"][0])
    for done in (work / "done").iterdir():
        chunks[done.name] = int(json.loads(done.read_text())["tiles"])
    return len(chunks), sum(chunks.values())


def test_resume_refuses_a_different_job(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 100, 100))
    staging = tmp_path / "out.tif.partial"
    staging.mkdir()
    (staging / "run.json").write_text('{"fingerprint": "other"}')
    with pytest.raises(RunError, match="other inputs"):
        predict(_config(src, tmp_path / "out.tif", resume=True), model=per_pixel_model(3, 4))


def test_geotiff_has_colour_table_class_names_and_overviews(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 700, 600))
    predict(_config(src, tmp_path / "out.tif", tile_size=128, overlap=32, chunk_size=512),
            model=per_pixel_model(3, 3))
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        assert out.colormap(1)[1] == (10, 20, 30, 255)
        assert "class 2" in out.tags()["TILESEG_CLASSES"]
        assert out.overviews(1) and out.profile["tiled"]
        assert out.profile["compress"] == "deflate"


def test_corrupt_block_error_carries_gdals_reason(make_raster, tmp_path) -> None:
    src = make_raster(random_image(1, 256, 256), block=64, compress="deflate")
    with rasterio.open(src) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    data = bytearray(src.read_bytes())
    data[offset : offset + size] = b"\xff" * size
    src.write_bytes(bytes(data))
    with pytest.raises(RunError) as info:
        predict(_config(src, tmp_path / "out.tif", chunk_size=128), model=per_pixel_model(1, 3))
    message = str(info.value)
    assert "\n" not in message and "See previous exception" not in message
    assert "cannot read rows" in message and "Decoding error" in message
    assert not (tmp_path / "out.tif").exists()


def _vrt_of(src: Path, vrt: Path) -> Path:
    """A plain VRT over every band of ``src`` (what gdalbuildvrt writes for one file)."""
    with rasterio.open(src) as ds:
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{src}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
            for b in ds.indexes)
        gt = ", ".join(str(v) for v in ds.transform.to_gdal())
        vrt.write_text(f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">'
                       f"<SRS>{ds.crs.to_wkt()}</SRS><GeoTransform>{gt}</GeoTransform>{bands}"
                       "</VRTDataset>")
    return vrt


def test_resume_refuses_a_vrt_whose_source_changed(make_raster, tmp_path) -> None:
    """The finished chunks were read from the old tile: going on would mix two versions (it
    used to go on with a warning). The refusal names the file behind the VRT that changed."""
    import os

    src = make_raster(random_image(3, 260, 260))
    vrt = _vrt_of(src, tmp_path / "scene.vrt")
    dst = tmp_path / "out.tif"
    _interrupt_after_two_chunks(vrt, dst)
    stat = os.stat(src)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the tile behind the VRT
    with pytest.raises(SourceChangedError, match=rf"scene.vrt: changed since the interrupted "
                       rf"run \({src.name}: modified at .*overwrite") as info:
        predict(_config(vrt, dst, resume=True), model=per_pixel_model(3, 4))
    assert info.value.exit_code == 2
    assert not dst.exists() and Path(f"{dst}.partial").is_dir()  # still there to restore and resume


def test_a_model_retrained_in_place_is_used_by_the_next_run(make_raster, tmp_path,
                                                             several_class_deeplab,
                                                             monkeypatch) -> None:
    """In one process (a notebook, a batch) the second run must not reuse the runtime cached
    for the weights the directory held before; and the driver's own load is handed to the
    in-process task instead of loading the model twice."""
    import shutil

    import tileseg.models.registry as registry
    from tileseg.models.formats import load_model
    from tileseg.models.loaded import save_model

    model_dir = tmp_path / "model"
    shutil.copytree(several_class_deeplab, model_dir)
    src = make_raster(random_image(3, 300, 280, seed=5))
    loads = []
    real_load = registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    def run(name: str) -> np.ndarray:
        result = predict(PredictConfig(str(src), str(tmp_path / name), model=str(model_dir),
                                       engine="torch", workers=1))
        with rasterio.open(result.dst) as out:
            return out.read(1)

    first = run("first.tif")
    assert len(np.unique(first)) >= 2
    assert loads == []  # the task used the model the driver loaded
    retrained = load_model(model_dir)
    with torch.no_grad():  # class 2 wins everywhere now
        retrained.module.segmentation_head[0].bias[2] += 1e4
    save_model(retrained.module, model_dir, retrained.metadata)
    second = run("second.tif")
    assert (second == 2).all()


def test_progress_counts_tiles_as_they_are_inferred(make_raster, tmp_path) -> None:
    """One chunk of four tiles, one tile per batch: the bar moves after every batch, not once
    when the chunk is written (a default 2048-px chunk is 25 tiles, minutes on a CPU)."""
    src = make_raster(random_image(3, 96, 96))
    events: list[Progress] = []
    result = predict(_config(src, tmp_path / "out.tif", chunk_size=2048, batch_size=1),
                     model=per_pixel_model(3, 4), progress=events.append)
    assert result.chunks == 1 and result.tiles_total == 4
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert {e.total for e in events} == {4}
