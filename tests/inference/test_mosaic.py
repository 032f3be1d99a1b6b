"""mosaic: the chunk graph, its on-disk pieces and done records, and reuse on a rerun."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import zarr
from conftest import per_pixel_model, random_image, untiled_mask

from tileseg.config import RuntimeConfig
from tileseg.inference.mosaic import Job, build_graph, finalize_task, infer_task
from tileseg.models.registry import ModelRef, register_model
from tileseg.outputs.mask_files import create_zarr, mask_dtype_for
from tileseg.outputs.workdir import LocalWorkDir
from tileseg.sources.raster import open_raster
from tileseg.tiling.grid import TileGrid


def _job(make_raster, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = random_image(2, 70, 90)
    raster = open_raster(make_raster(data))
    model = per_pixel_model(2, 3)
    grid = TileGrid(70, 90, tile_size=32, overlap=8, chunk_tiles=2)
    store, work = tmp_path / "m.zarr", LocalWorkDir(tmp_path / "work")
    create_zarr(store, raster, model.metadata, chunk_side=grid.chunk_side, probabilities="none",
                source="test")
    work.create()
    dtype, nodata = mask_dtype_for(3)
    job = Job(raster=raster, grid=grid, model=ModelRef(key=register_model(model)), num_classes=3,
              settings=RuntimeConfig(device="cpu", precision="fp32", batch_size=4),
              blend="hann", probabilities="none", mask_dtype=dtype.name, nodata=nodata,
              work_dir=str(work.path), zarr_path=str(store))
    return job, work, model, data


def test_graph_writes_the_untiled_mask_and_marks_every_chunk(make_raster, tmp_path: Path) -> None:
    job, work, model, data = _job(make_raster, tmp_path)
    mosaic = build_graph(job)
    assert len(mosaic.infer_keys) == len(mosaic.finalize_keys) == job.grid.num_chunks > 1
    results = dask.get(mosaic.graph, mosaic.finalize_keys)
    assert sum(r["tiles"] for r in results) == job.grid.num_tiles
    written = zarr.open_array(f"{job.zarr_path}/mask", mode="r")[:]
    expected = untiled_mask(model, data)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(written, expected)
    assert all(work.is_done(r, c) for r, c in job.grid.chunks())
    assert not list(work.pieces.iterdir())  # spills cleaned up once nobody needs them


def test_tasks_of_a_finished_chunk_do_nothing_again(make_raster, tmp_path: Path) -> None:
    job, work, model, _ = _job(make_raster, tmp_path)  # the registry holds models weakly: keep it
    first = infer_task(job, 0, 0)
    assert not first["reused"] and first["tiles"] > 0 and work.has_piece(0, 0)
    again = infer_task(job, 0, 0)
    assert again["reused"] and again["tiles"] == 0 and again["reused_tiles"] == first["tiles"]
    for r, c in job.grid.neighbours(0, 0):
        infer_task(job, r, c)
    done = finalize_task(job, 0, 0)
    assert not done["reused"] and finalize_task(job, 0, 0)["reused"]
    assert model.module.tiles_seen == sum(len(job.grid.chunk_tiles_of(r, c))
                                          for r, c in job.grid.neighbours(0, 0))
