"""Paths the GPU takes by default, exercised on the CPU where torch allows it: channels_last
memory format, bf16 autocast, and uint16 rasters carried as int16 bits (the full 0-65535 range)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import rasterio
import torch
from conftest import per_pixel_model, random_image, untiled_mask

from tileseg.config import PredictConfig
from tileseg.inference.infer import infer_chunk_logits, make_runtime
from tileseg.models.formats import load_model
from tileseg.pipeline import predict
from tileseg.sources.raster import open_raster
from tileseg.tiling.grid import TileGrid


def test_uint16_above_32767_is_read_exactly(make_raster, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(0, 65536, (2, 90, 110), dtype=np.uint16)
    data[0, :5, :5] = 65535  # the int16 bit pattern of -1
    data[1, :5, :5] = 32768
    src = make_raster(data)
    model = per_pixel_model(2, 4, scale=1e-4)
    result = predict(PredictConfig(str(src), str(tmp_path / "out.tif"), tile_size=48, overlap=8,
                                   chunk_size=64, precision="fp32"), model=model)
    with rasterio.open(result.dst) as out:
        np.testing.assert_array_equal(out.read(1), untiled_mask(model, data, 1e-4))


def _runtime_and_grid(src: Path, model_dir: Path, **kw: object):  # type: ignore[no-untyped-def]
    raster = open_raster(src)
    model = load_model(model_dir)
    runtime = make_runtime(model, device="cpu", precision=str(kw.get("precision", "fp32")),
                           batch_size=3, tile_size=64, overlap=16, blend="hann")
    grid = TileGrid(raster.height, raster.width, tile_size=64, overlap=16, chunk_tiles=3)
    return runtime, raster, grid


def test_channels_last_gives_the_same_logits(make_raster, deeplab_dir: Path) -> None:
    """CUDA runs the network in channels_last; the chunk's blended logits must not change."""
    src = make_raster(random_image(3, 150, 170))
    runtime, raster, grid = _runtime_and_grid(src, deeplab_dir)
    plain = infer_chunk_logits(runtime, raster, grid, 0, 0)
    module = runtime.model.module.to(memory_format=torch.channels_last)
    cl = dataclasses.replace(runtime, channels_last=True,
                             model=dataclasses.replace(runtime.model, module=module))
    last = infer_chunk_logits(cl, raster, grid, 0, 0)
    assert last.tiles == plain.tiles > 1
    torch.testing.assert_close(last.weight_sum, plain.weight_sum, rtol=0, atol=0)
    covered = plain.weight_sum > 0  # the sums are fixed-point integers: compare the logits
    torch.testing.assert_close((last.logit_sum / plain.weight_sum)[:, covered],
                               (plain.logit_sum / plain.weight_sum)[:, covered],
                               rtol=1e-4, atol=1e-4)


def test_bf16_autocast_agrees_with_fp32(make_raster, deeplab_dir: Path, tmp_path: Path) -> None:
    """bf16 is the GPU default; on the CPU the same autocast path runs and must agree closely."""
    src = make_raster(random_image(3, 150, 170))
    masks = {}
    for precision in ("fp32", "bf16"):
        dst = tmp_path / f"{precision}.tif"
        predict(PredictConfig(str(src), str(dst), model=str(deeplab_dir), tile_size=64,
                              overlap=16, precision=precision, device="cpu"))
        with rasterio.open(dst) as out:
            masks[precision] = out.read(1)
    agreement = float((masks["fp32"] == masks["bf16"]).mean())
    assert agreement > 0.9, agreement
    # and the autocast really ran in bf16: the logits differ somewhere
    runtime, raster, grid = _runtime_and_grid(src, deeplab_dir, precision="bf16")
    reference, _, _ = _runtime_and_grid(src, deeplab_dir)
    assert runtime.autocast == torch.bfloat16
    assert not torch.equal(infer_chunk_logits(runtime, raster, grid, 0, 0).logit_sum,
                           infer_chunk_logits(reference, raster, grid, 0, 0).logit_sum)


def test_no_georeferencing_warning_leaks_from_reader_threads(make_raster, tmp_path) -> None:
    """A raster with neither CRS nor geotransform (--allow-no-crs): rasterio warns on every open;
    tileseg's reader threads open it many times, and neither the warning nor a changed filter
    list may escape them."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    src = make_raster(random_image(3, 200, 230), crs=None, transform=None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with rasterio.open(src):
            pass
        assert any(issubclass(w.category, NotGeoreferencedWarning) for w in seen)  # it would
        seen.clear()
        before = list(warnings.filters)
        predict(PredictConfig(str(src), str(tmp_path / "out.tif"), tile_size=48, overlap=8,
                              chunk_size=48, workers=2, allow_no_crs=True),
                model=per_pixel_model(3, 3))
        assert list(warnings.filters) == before
    leaked = [f"{w.filename}:{w.lineno}" for w in seen
              if issubclass(w.category, NotGeoreferencedWarning)]
    assert not leaked, leaked
