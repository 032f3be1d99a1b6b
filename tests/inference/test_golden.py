"""Golden regression: the bundled model's logits on a fixed crop of its real sample scene.

The reference was computed once with this code on CPU in fp32 and stored as float16 (a few KB).
A change to loading, normalization, the architecture or an upgrade of smp/timm/torch that
moves these logits fails here before it reaches anyone's masks. To regenerate after a
deliberate change: ``TILESEG_REGENERATE_GOLDEN=1 python -m pytest tests/inference/test_golden.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from tileseg.models.formats import load_model
from tileseg.samples import fetch

GOLDEN = Path(__file__).parents[1] / "data" / "golden_landcover_logits.npz"
BUNDLED = Path(__file__).parents[2] / "tileseg" / "models" / "landcover"
CROP = Window(col_off=160, row_off=200, width=96, height=96)  # fields, forest and built-up


def _logits() -> np.ndarray:
    model = load_model(BUNDLED)
    with rasterio.open(fetch("landsat-multiband")) as src:
        data = src.read(window=CROP).astype(np.float32)
    a, b = model.metadata.normalization.coefficients(model.metadata.in_channels)
    x = torch.from_numpy(data * a[:, None, None] + b[:, None, None])[None]
    with torch.no_grad():
        out = model.module.eval()(x)
    return out[0].numpy()


def test_bundled_model_logits_match_the_stored_reference() -> None:
    logits = _logits()
    if os.environ.get("TILESEG_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, logits=logits.astype(np.float16))
    reference = np.load(GOLDEN)["logits"].astype(np.float32)
    assert logits.shape == reference.shape == (7, 96, 96)
    # float16 storage keeps ~3 significant digits; the tolerance is a few of its steps.
    np.testing.assert_allclose(logits, reference, rtol=5e-3, atol=2e-2)
    mask = logits.argmax(0)
    assert (mask == reference.argmax(0)).mean() > 0.999
    assert len(np.unique(mask)) >= 3, "the crop must exercise several classes"
