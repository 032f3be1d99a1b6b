"""The bundled land-cover model: it loads, its metadata is complete, predict uses it by default."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tileseg.models.formats import load_model

BUNDLED = Path(__file__).resolve().parents[2] / "tileseg" / "models" / "landcover"
CLASSES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment")

pytestmark = pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(),
                                reason="bundled model not trained yet")


def test_bundled_model_loads_with_complete_metadata() -> None:
    model = load_model(BUNDLED)
    meta = model.metadata
    assert model.architecture == "DeepLabV3Plus"
    assert meta.class_names == CLASSES
    assert meta.in_channels == 5 and len(meta.bands) == 5
    assert meta.dtype == "float32" and meta.gsd == pytest.approx(28.5)
    assert len(meta.normalization.mean) == 5 and all(s > 0 for s in meta.normalization.std)
    assert not meta.is_default and "Landsat" in meta.description
    card = (BUNDLED / "MODEL_CARD.md").read_text()
    assert "random forest" in card and "mean IoU" in card
    # small enough to ship in the package
    assert (BUNDLED / "model.safetensors").stat().st_size < 10 * 2**20


def test_bundled_model_card_reports_both_holdout_scores() -> None:
    training = json.loads((BUNDLED / "training.json").read_text())
    assert 0.0 < training["holdout_metrics"]["mean_iou"] <= 1.0
    assert 0.0 < training["baselines"]["random_forest"]["mean_iou"] <= 1.0


def test_bundled_model_card_verdict_matches_its_numbers() -> None:
    training = json.loads((BUNDLED / "training.json").read_text())
    ours = training["holdout_metrics"]["mean_iou"]
    forest = training["baselines"]["random_forest"]["mean_iou"]
    card = (BUNDLED / "MODEL_CARD.md").read_text()
    assert f"mIoU {ours:.3f} vs {forest:.3f}" in card
    assert ("DeepLabv3+ beats the per-pixel random forest" in card) == (ours > forest)
    assert ("does NOT beat" in card) == (ours <= forest)


def test_predict_uses_the_bundled_model_by_default(make_raster: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    rng = np.random.default_rng(0)
    scene = rng.normal(75, 15, (5, 80, 96)).astype(np.float32)  # Landsat-like DN range
    src = make_raster(scene, "scene.tif", nodata=-99999.0)
    dst = tmp_path / "landcover.tif"
    predict(PredictConfig(src=str(src), dst=str(dst), tile_size=64, overlap=16, device="cpu"))
    with rasterio.open(dst) as out:
        mask = out.read(1)
    assert mask.shape == (80, 96)
    assert mask.max() < len(CLASSES)
