"""No hidden downloads: ImageNet encoder weights are fetched by an explicit `tileseg sample`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tileseg.errors import InputNotFoundError
from tileseg.training import Holdout, TrainConfig, TrainSource, train


def test_train_never_downloads_imagenet_weights(make_raster: Callable[..., Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILESEG_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"train started a subprocess: {args}")

    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setattr(subprocess, "Popen", no_network)
    rng = np.random.default_rng(0)
    image = make_raster(rng.integers(0, 255, (3, 64, 64)).astype(np.uint8), "image.tif")
    labels = make_raster(rng.integers(0, 2, (64, 64)).astype(np.uint8), "labels.tif")
    config = TrainConfig(sources=(TrainSource(str(image), str(labels)),),
                         out_dir=str(tmp_path / "model"), class_names=("a", "b"), crop_size=32,
                         batch_size=2, epochs=1, steps_per_epoch=1, holdout=Holdout("right", 0.25),
                         encoder_name="tu-efficientnet_lite0", encoder_weights="imagenet")
    with pytest.raises(InputNotFoundError, match="tileseg sample efficientnet-lite0"):
        train(config)
    assert not (tmp_path / "empty-cache" / "downloads").exists()
