"""The mask is a function of the raster, the model and the tiling/blending/precision options:
chunk size, batch size, workers and scheduler (threads, sync) never change a pixel of it, nor of
the probabilities. (Worker processes of a real cluster: tests/test_distributed.py.)

Two models: one whose classes are balanced on the test raster, so a wrong pixel would show, and
one whose two classes tie to within a float32 rounding step almost everywhere, so any difference
in how overlapping tiles are summed would flip pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import random_image, write_raster

from tileseg.config import PredictConfig
from tileseg.pipeline import predict

# 64-px tiles step 48 px (16-px overlap on the model's 16-px grid); 200 x 200 is 5 x 5 tiles
# whose last row and column have cores of 8 px, so their context reaches 56 px past the raster.
TILING = {"tile_size": 64, "overlap": 16, "probabilities": "float16"}
LAYOUTS = [  # (chunk_size, batch_size, workers, scheduler)
    (2048, 4, 2, None),  # the reference: one chunk larger than the raster
    (16, 1, 2, None),  # smaller than a tile's step: one tile a chunk
    (144, 3, 2, None),  # the last tile column alone in a narrow chunk
    (96, 6, 1, "threads"),
    (150, 5, 2, "sync"),
    (200, 8, 1, None),
    (48, 7, 1, "sync"),
]
CASES = {  # (model, engine): the layouts it runs
    ("balanced", "torch"): LAYOUTS,
    ("balanced", "onnxruntime"): LAYOUTS[:3],
    ("near-tie", "torch"): LAYOUTS[:4],
    ("near-tie", "onnxruntime"): LAYOUTS[:3],
}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("determinism") / "scene.tif"
    return write_raster(path, random_image(3, 200, 200, seed=11))


def _run(scene: Path, model: Path, out: Path, engine: str, layout: tuple) -> tuple[np.ndarray, ...]:
    chunk_size, batch_size, workers, scheduler = layout
    name = f"{engine}-{chunk_size}-{batch_size}-{workers}-{scheduler}"
    result = predict(PredictConfig(
        str(scene), str(out / f"{name}.zarr"), model=str(model), chunk_size=chunk_size,
        batch_size=batch_size, workers=workers, scheduler=scheduler, engine=engine, device="cpu",
        precision="fp32", **TILING))  # type: ignore[arg-type]
    assert result.report["engine"] == engine
    group = zarr.open_group(str(out / f"{name}.zarr"), mode="r")
    return group["mask"][:], group["probabilities"][:]


def _assert_same_everywhere(scene: Path, model: Path, out: Path, engine: str,
                            layouts: list[tuple]) -> tuple[np.ndarray, ...]:
    reference = _run(scene, model, out, engine, layouts[0])
    for layout in layouts[1:]:
        got = _run(scene, model, out, engine, layout)
        for name, a, b in zip(("mask", "probabilities"), got, reference, strict=True):
            differ = int((a != b).sum())
            assert differ == 0, f"{layout}: {differ} {name} values differ from {layouts[0]}"
    return reference


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_balanced_classes_same_mask_whatever_the_layout(scene, several_class_deeplab, tmp_path,
                                                        engine) -> None:
    mask, _ = _assert_same_everywhere(scene, several_class_deeplab, tmp_path, engine,
                                      CASES["balanced", engine])
    shares = np.bincount(mask.ravel(), minlength=3) / mask.size
    assert (shares >= 0.05).sum() >= 2, shares  # several classes: a wrong pixel would show


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_near_ties_same_mask_whatever_the_layout(scene, near_tie_deeplab, tmp_path,
                                                 engine) -> None:
    mask, probabilities = _assert_same_everywhere(scene, near_tie_deeplab, tmp_path, engine,
                                                  CASES["near-tie", engine])
    # near-ties indeed: both classes have probability 0.5 to float16 precision on most pixels,
    # and the class that wins by a hair is either, all over the raster
    tied = np.abs(probabilities[0].astype(np.float32) - probabilities[1]) < 1e-3
    assert tied.mean() > 0.9, tied.mean()
    assert 0.05 < mask.mean() < 0.95, mask.mean()


def _interrupted(scene: Path, model: Path, dst: Path, **options: object) -> None:
    from conftest import interrupt_after

    with pytest.raises(KeyboardInterrupt):
        predict(PredictConfig(str(scene), str(dst), model=str(model), chunk_size=96,
                              device="cpu", **{**TILING, **options}),  # type: ignore[arg-type]
                progress=interrupt_after(3))
    assert Path(f"{dst}.partial").is_dir() and not dst.exists()


def test_resume_with_other_batches_and_workers_gives_the_same_mask(
        scene, several_class_deeplab, tmp_path) -> None:
    reference = _run(scene, several_class_deeplab, tmp_path, "torch", LAYOUTS[0])
    dst = tmp_path / "resumed.zarr"
    _interrupted(scene, several_class_deeplab, dst, engine="torch", batch_size=2, workers=1)
    result = predict(PredictConfig(str(scene), str(dst), model=str(several_class_deeplab),
                                   chunk_size=96, batch_size=7, workers=2, engine="torch",
                                   device="cpu", resume=True, **TILING))  # type: ignore[arg-type]
    assert result.report["tiles_reused"] > 0
    group = zarr.open_group(str(dst), mode="r")
    assert np.array_equal(group["mask"][:], reference[0])
    assert np.array_equal(group["probabilities"][:], reference[1])


def test_a_resume_whose_engine_resolves_otherwise_is_not_published(
        scene, several_class_deeplab, tmp_path, monkeypatch) -> None:
    """The interrupted run had ONNX Runtime (``auto`` picked it); the resumed one does not: its
    chunks' logits would differ from the kept ones, so nothing is published, and resuming where
    ONNX Runtime is back finishes the run with the mask of an uninterrupted one."""
    import tileseg.inference.engine
    from tileseg.errors import RunError
    from tileseg.models.loaded import clear_cache

    dst = tmp_path / "mixed.zarr"
    _interrupted(scene, several_class_deeplab, dst, engine="auto")
    config = PredictConfig(str(scene), str(dst), model=str(several_class_deeplab),
                           chunk_size=96, device="cpu", resume=True, **TILING)  # type: ignore[arg-type]
    clear_cache()  # as in another process: the interrupted run's runtime is not cached here
    with monkeypatch.context() as patch:
        patch.setattr(tileseg.inference.engine, "_import_onnxruntime", lambda: None)
        work = Path(f"{dst}.partial") / "work"
        kept = sorted(p.name for p in work.rglob("*"))
        with pytest.raises(RunError, match="inferred by onnxruntime cpu fp32, this worker would "
                                           "infer by torch cpu fp32"):
            predict(config)
    assert not dst.exists() and sorted(p.name for p in work.rglob("*")) == kept
    clear_cache()
    result = predict(config)
    assert result.report["engine"] == "onnxruntime"
    reference = _run(scene, several_class_deeplab, tmp_path, "onnxruntime", LAYOUTS[0])
    assert np.array_equal(zarr.open_group(str(dst), mode="r")["mask"][:], reference[0])


def test_a_resume_with_another_chunk_size_is_refused_by_name(scene, several_class_deeplab,
                                                             tmp_path) -> None:
    """The staged work is cut in the interrupted run's chunks: continuing it in others is
    refused with one line naming the option and both values (the CLI says --chunk-size)."""
    from click.testing import CliRunner

    from tileseg.cli.main import cli

    dst = tmp_path / "chunks.zarr"
    _interrupted(scene, several_class_deeplab, dst, engine="onnxruntime")
    result = CliRunner().invoke(cli, [
        "predict", str(scene), str(dst), "-m", str(several_class_deeplab), "--tile-size", "64",
        "--overlap", "16", "--probabilities", "float16", "--chunk-size", "144", "--resume"])
    assert result.exit_code == 2, result.output
    assert ("--chunk-size 144 (the interrupted run had 96); resume with the interrupted run's "
            "values, or pass --overwrite") in result.output
    assert len(result.output.strip().splitlines()) == 1
