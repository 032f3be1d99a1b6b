"""The plan of a run (tileseg.plan): raster, model and tile grid, before anything is computed."""

from __future__ import annotations

from conftest import per_pixel_model, random_image

from tileseg.config import PredictConfig
from tileseg.plan import make_plan


def test_a_plan_is_made_from_the_config_alone_and_reads_no_pixels(make_raster, tmp_path) -> None:
    src = make_raster(random_image(3, 150, 130))
    config = PredictConfig(str(src), str(tmp_path / "o.tif"), tile_size=64, overlap=16,
                           chunk_size=96)
    plan = make_plan(config, per_pixel_model(3, 4))  # every default: checks and notes on
    assert (plan.raster.height, plan.raster.width) == (150, 130)
    assert plan.grid.tile_size == 64 and plan.grid.num_chunks > 1
    assert plan.output_raster is plan.raster and plan.aoi is None
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.tif.partial").exists()
