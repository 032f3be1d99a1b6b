"""Shared fixtures: real GeoTIFFs written with rasterio, and small real models."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from torch import nn

from tileseg.models.loaded import LoadedModel, wrap_module
from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization

SUITE_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tileseg-tests"
HOME_CACHE = Path.home() / ".cache" / "tileseg"
USER_EXPORTS: list[Path] = []  # where the user's own ONNX exports live: the suite never writes


def pytest_configure(config: pytest.Config | None) -> None:
    """Samples and weights the tests fetch go to the suite's own cache folder, kept between runs
    (or to $TILESEG_CACHE when set, as .ci/run does), never to the user's ~/.cache/tileseg; the
    ONNX exports of the suite's models (hundreds of MB) always to the suite's own folder, never
    to the user's $TILESEG_CACHE. Set here, before any test runs, so subprocesses and worker
    processes inherit it too."""
    from tileseg.inference.engine import ONNX_CACHE_ENV, onnx_cache_dir

    USER_EXPORTS[:] = [onnx_cache_dir(), HOME_CACHE / "onnx"]
    current = os.environ.get("TILESEG_CACHE")
    if not current or Path(current).expanduser().resolve() == HOME_CACHE.resolve():
        os.environ["TILESEG_CACHE"] = str(SUITE_CACHE)
    os.environ[ONNX_CACHE_ENV] = str(SUITE_CACHE / "onnx")


@pytest.fixture(scope="session", autouse=True)
def _user_exports_untouched() -> Any:
    """The session check: no export this process makes lands in the user's export cache.
    (Exports are recorded as they are made, not found by listing the folder afterwards: other
    programs the user runs meanwhile may well write there. Worker and CLI processes the tests
    start inherit TILESEG_ONNX_CACHE, which test_samples checks.)"""
    from tileseg.inference import engine

    suite = (SUITE_CACHE / "onnx").resolve()
    users = [f.resolve() for f in USER_EXPORTS if f.resolve() != suite]
    written: list[Path] = []
    export = engine.export_onnx

    def recorded(module: Any, path: Path, *args: Any, **kwargs: Any) -> Any:
        written.append(Path(path))
        return export(module, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "export_onnx", recorded)
        yield
    wrong = [p for p in written if any(p.resolve().is_relative_to(f) for f in users)]
    if wrong:
        pytest.fail(f"the tests wrote into the user's ONNX export cache: {wrong[:3]}")


UTM = "EPSG:32631"
NORTH_UP = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)


def write_raster(path: Path, data: np.ndarray, *, nodata: float | None = None,
                 crs: str | None = UTM, transform: Affine = NORTH_UP, block: int = 256,
                 **profile: Any) -> Path:
    """Write ``data`` (bands, rows, cols; or rows, cols) as a GeoTIFF, tiled when it holds a
    whole ``block``; UTM 31N at 10 m unless told otherwise."""
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    opts: dict[str, Any] = dict(
        driver="GTiff", height=height, width=width, count=count, dtype=data.dtype.name,
        crs=crs, transform=transform, nodata=nodata,
    )
    if height >= block and width >= block:
        opts.update(tiled=True, blockxsize=block, blockysize=block)
    opts.update(profile)
    with rasterio.open(path, "w", **opts) as dst:
        dst.write(data)
    return path


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiled GeoTIFF: ``make_raster(data, name=..., nodata=..., crs=..., transform=...)``."""

    def make(data: np.ndarray, name: str = "scene.tif", **options: Any) -> Path:
        return write_raster(tmp_path / name, data, **options)

    return make


def random_image(bands: int, height: int, width: int, dtype: str = "uint8",
                 seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(0, 1, (bands, height, width)).astype(np.float32)
    info = np.iinfo(np.dtype(dtype))
    high = min(int(info.max), 10000)
    low = max(int(info.min), -10000)
    return rng.integers(low, high, (bands, height, width)).astype(dtype)


def metadata(classes: int, bands: int, scale: float = 1.0, dtype: str | None = None) -> ModelMetadata:
    return ModelMetadata(
        classes=tuple(ClassInfo(i, f"class {i}", (10 * i, 20 * i, 30 * i)) for i in range(classes)),
        in_channels=bands,
        dtype=dtype,
        normalization=Normalization(scale=(scale,)),
    )


class CountingModel(nn.Module):
    """A per-pixel model (1x1 convolution) that counts the tiles it sees."""

    def __init__(self, bands: int, classes: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(bands, classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=gen))
        self.tiles_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles_seen += x.shape[0]
        return self.conv(x)


def interrupt_after(n: int) -> Callable[[object], None]:
    """A progress callback that stops the run (as Ctrl-C would) at its ``n``-th call."""
    calls = {"n": 0}

    def stop(event: object) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    return stop


def per_pixel_model(bands: int, classes: int, scale: float = 1.0, seed: int = 0) -> LoadedModel:
    return wrap_module(CountingModel(bands, classes, seed), metadata(classes, bands, scale))


def untiled_mask(model: LoadedModel, data: np.ndarray, scale: float = 1.0) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(data.astype(np.float32))[None] * scale
        return model.module(x)[0].argmax(0).numpy()


@pytest.fixture(scope="session")
def deeplab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real smp DeepLabV3+ (resnet18, random weights) saved with save_pretrained + metadata."""
    from tileseg.models.loaded import ModelSpec, build_model, save_model

    torch.manual_seed(0)
    module = build_model(ModelSpec(encoder_name="resnet18", in_channels=3, classes=3))
    path = tmp_path_factory.mktemp("models") / "deeplab"
    save_model(module, path, metadata(3, 3, scale=1 / 255, dtype="uint8"))
    return path


@pytest.fixture(scope="session")
def several_class_deeplab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight DeepLabV3+ whose head bias is shifted by each class's mean logit on an
    image, so its mask has several classes (unshifted it predicts one class almost everywhere,
    which would hide a wrong mask)."""
    from tileseg.models.loaded import ModelSpec, build_model, save_model

    torch.manual_seed(0)
    module = build_model(ModelSpec(encoder_name="resnet18", in_channels=3, classes=3)).eval()
    x = torch.from_numpy(random_image(3, 256, 256, seed=5).astype(np.float32) / 255)[None]
    with torch.no_grad():
        module.segmentation_head[0].bias -= module(x)[0].mean((1, 2))
    path = tmp_path_factory.mktemp("models") / "several"
    save_model(module, path, metadata(3, 3, scale=1 / 255, dtype="uint8"))
    return path


@pytest.fixture(scope="session")
def near_tie_deeplab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepLabV3+ whose two classes are near-ties everywhere: class 1's head is class 0's
    scaled by 1 + 1e-6 and shifted back by 1e-6 times class 0's median logit, so the two
    logits differ by a few float32 rounding steps, either way about as often: the order in
    which overlapping tiles are summed would decide the class of many pixels."""
    from tileseg.models.loaded import ModelSpec, build_model, save_model

    torch.manual_seed(1)
    module = build_model(ModelSpec(encoder_name="resnet18", in_channels=3, classes=2)).eval()
    head = module.segmentation_head[0]
    x = torch.from_numpy(random_image(3, 208, 208, seed=5).astype(np.float32) / 255)[None]
    eps = 1e-6
    with torch.no_grad():
        median = float(module(x)[0, 0].median())
        head.weight[1] = head.weight[0] * (1 + eps)
        head.bias[1] = head.bias[0] * (1 + eps) - eps * median
    path = tmp_path_factory.mktemp("models") / "near-tie"
    save_model(module, path, metadata(2, 3, scale=1 / 255, dtype="uint8"))
    return path
