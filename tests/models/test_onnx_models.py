"""ONNX files from another framework: a plain PyTorch U-Net (not smp) exported by the test,
with its description beside it, run by ONNX Runtime as it is."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import metadata, random_image, write_raster
from torch import nn

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import ConfigError, ModelError
from tileseg.models.formats import load_model
from tileseg.models.loaded import wrap_module
from tileseg.models.metadata import save_metadata
from tileseg.pipeline import predict

pytest.importorskip("onnxruntime")

TILING = ["--tile-size", "64", "--overlap", "16"]


class TinyUNet(nn.Module):
    """Two levels: convolutions, a 2x max-pool, a transposed convolution back up, a skip."""

    def __init__(self, bands: int = 3, classes: int = 3, outputs: int = 1) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(bands, 8, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(16, classes, 1)
        self.outputs = outputs
        self.tileseg_divisor = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skip = self.down(x)
        logits = self.head(torch.cat([skip, self.up(self.mid(skip))], 1))
        return logits if self.outputs == 1 else (logits, logits.mean((2, 3)))


class HalfResolution(nn.Module):
    """Logits at half the input's size, as a SegFormer gives them at a quarter: each band's
    mean over 2 x 2 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 2, stride=2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None].expand(3, 3, 2, 2) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsampled(nn.Module):
    """What a SegFormer user's own post-processing does: the logits upsampled bilinearly."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.tileseg_divisor = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.inner(x), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


def export(module: nn.Module, path: Path, *, size: tuple[int, int] | None = None,
           batch: int | None = None, description: dict | None = None) -> Path:
    """Export ``module`` as a user of torch.onnx does, with a tileseg.json beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size or (64, 64)
    dynamic: dict[int, str] = {} if batch else {0: "batch"}
    if size is None:
        dynamic.update({2: "height", 3: "width"})
    outputs = ["logits"] if getattr(module, "outputs", 1) == 1 else ["logits", "scores"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(batch or 1, 3, height, width),), str(path),
                          dynamo=False, opset_version=17, input_names=["image"],
                          output_names=outputs,
                          dynamic_axes={"image": dynamic, "logits": dynamic} if dynamic else None)
    save_metadata(metadata(3, 3, scale=1 / 255, dtype="uint8"), path.parent)
    data = json.loads((path.parent / "tileseg.json").read_text())
    data["network"] = description or {"architecture": "U-Net (plain PyTorch)", "input_multiple": 4}
    (path.parent / "tileseg.json").write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def unet() -> TinyUNet:
    """Random weights, its head's bias shifted by each class's mean logit on an image, so its
    mask has every class (unshifted, one class wins almost everywhere, hiding a wrong mask)."""
    torch.manual_seed(0)
    module = TinyUNet().eval()
    x = torch.from_numpy(random_image(3, 128, 128, seed=5).astype(np.float32) / 255)[None]
    with torch.no_grad():
        module.head.bias -= module(x)[0].mean((1, 2))  # type: ignore[index]
    return module


@pytest.fixture(scope="module")
def onnx_files(unet: TinyUNet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {
        "dynamic": export(unet, root / "dynamic" / "unet.onnx"),
        "batch3": export(unet, root / "batch3" / "unet.onnx", batch=3),
        "fixed64": export(unet, root / "fixed64" / "unet.onnx", size=(64, 64)),
        "oblong": export(unet, root / "oblong" / "unet.onnx", size=(64, 48)),
        "two_outputs": export(TinyUNet(outputs=2), root / "two" / "unet.onnx"),
        "half": export(HalfResolution(), root / "half" / "half.onnx",
                       description={"input_multiple": 2}),
    }


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    return write_raster(path, random_image(3, 150, 170, seed=6))


def _mask(path: Path | str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _predict(scene: Path, dst: Path, model: Path, *extra: str) -> np.ndarray:
    res = CliRunner().invoke(cli, ["predict", str(scene), str(dst), "-m", str(model), *TILING,
                                   "-q", *extra])
    assert res.exit_code == 0, res.output
    return _mask(dst)


def test_a_plain_pytorch_unet_exported_to_onnx_runs_as_it_is(scene, tmp_path, onnx_files,
                                                             unet) -> None:
    model = load_model(onnx_files["dynamic"])
    assert model.format == "onnx" and model.divisor == 4 and model.input_size is None
    assert model.architecture == "U-Net (plain PyTorch)"
    assert model.metadata.class_names == ("class 0", "class 1", "class 2")
    got = _predict(scene, tmp_path / "onnx.tif", onnx_files["dynamic"])
    # the same network run by torch, through the same grid: ONNX Runtime's float32 differs by
    # rounding steps only, which flip a near-tie pixel at most
    result = predict(PredictConfig(str(scene), str(tmp_path / "torch.tif"), tile_size=64,
                                   overlap=16), model=wrap_module(unet, model.metadata))
    assert (got == _mask(result.dst)).mean() > 0.999
    assert len(np.unique(got)) == 3
    # never exported again: no cached export of it
    assert result.report["engine"] == "torch"


def test_a_fixed_batch_file_gets_full_batches_and_the_same_mask(scene, tmp_path,
                                                                onnx_files) -> None:
    model = load_model(onnx_files["batch3"])
    assert model.module.signature.batch == 3  # type: ignore[union-attr]
    reference = _predict(scene, tmp_path / "dynamic.tif", onnx_files["dynamic"])
    for batch in ("2", "4", "5"):  # 2 and 5: a last pass padded; 4: a pass of 3 then 1
        got = _predict(scene, tmp_path / f"b{batch}.tif", onnx_files["batch3"], "--batch-size",
                       batch, "--overwrite")
        np.testing.assert_array_equal(got, reference)


def test_a_fixed_size_file_takes_tiles_of_its_size(scene, tmp_path, onnx_files) -> None:
    model = load_model(onnx_files["fixed64"])
    assert model.input_size == 64 and model.context_size(32) == 64
    reference = _predict(scene, tmp_path / "dynamic.tif", onnx_files["dynamic"])
    res = CliRunner().invoke(cli, ["predict", str(scene), str(tmp_path / "f.tif"), "-m",
                                   str(onnx_files["fixed64"]), "--tile-size", "128",
                                   "--overlap", "16", "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tiling"]["tile_size"] == 64 and report["tiling"]["context"] == 64
    np.testing.assert_array_equal(_mask(tmp_path / "f.tif"), reference)


def test_logits_at_a_fraction_of_the_input_are_upsampled_to_it(scene, tmp_path,
                                                               onnx_files) -> None:
    got = _predict(scene, tmp_path / "half.tif", onnx_files["half"])
    model = load_model(onnx_files["half"])
    result = predict(PredictConfig(str(scene), str(tmp_path / "torch.tif"), tile_size=64,
                                   overlap=16), model=wrap_module(Upsampled(HalfResolution()),
                                                                  model.metadata))
    assert (got == _mask(result.dst)).mean() > 0.999 and len(np.unique(got)) == 3


@pytest.mark.parametrize(("name", "argv", "code", "words"), [
    ("oblong", [], 3, "64 x 48 inputs"),
    ("two_outputs", [], 3, "gives 2 outputs (logits, scores)"),
    ("dynamic", ["--engine", "torch"], 2, "runs on ONNX Runtime, not torch"),
    ("dynamic", ["--precision", "bf16"], 2, "use --precision fp32"),
    ("fixed64", ["--overlap", "64", "--tile-size", "96"], 2, "use an --overlap below that"),
])
def test_files_and_options_tileseg_cannot_meet_are_one_line_before_any_work(
        scene, tmp_path, onnx_files, name: str, argv: list[str], code: int, words: str) -> None:
    res = CliRunner().invoke(cli, ["predict", str(scene), str(tmp_path / "o.tif"), "-m",
                                   str(onnx_files[name]), *argv])
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.output
    assert not list(tmp_path.iterdir())  # no output, no staging


def test_a_truncated_onnx_file_is_one_line(tmp_path, onnx_files) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_files["dynamic"].read_bytes()[:500])
    with pytest.raises(ModelError, match="truncated or corrupt") as info:
        load_model(cut)
    assert "\n" not in str(info.value)


def test_model_info_of_an_onnx_file(onnx_files) -> None:
    res = CliRunner().invoke(cli, ["model", "info", str(onnx_files["batch3"]), "--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.output)
    assert facts["format"] == "onnx" and facts["input"] == "any multiple of 4"
    assert facts["engines"][0] == "onnxruntime (CPU)"
    assert "ONNX graph" in facts["read_from"]["network"]
    with pytest.raises(ConfigError, match="drop compile_model"):
        from tileseg.inference.infer import make_runtime

        make_runtime(load_model(onnx_files["dynamic"]), device="cpu", precision="auto",
                     batch_size=2, tile_size=64, overlap=16, blend="hann", engine="auto",
                     compile_model=True)


def test_an_onnx_file_round_trips_through_an_mlm_item(scene, tmp_path, onnx_files) -> None:
    item = tmp_path / "items" / "unet.json"
    item.parent.mkdir()
    res = CliRunner().invoke(cli, ["model", "export-stac", str(onnx_files["batch3"]), str(item)])
    assert res.exit_code == 0, res.output
    props = json.loads(item.read_text())["properties"]
    assert props["mlm:input"][0]["input"]["shape"] == [3, 3, -1, -1]
    assert props["mlm:hyperparameters"]["input_multiple"] == 4
    np.testing.assert_array_equal(_predict(scene, tmp_path / "a.tif", item),
                                  _predict(scene, tmp_path / "b.tif", onnx_files["batch3"]))


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=2,
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        yield client


@pytest.mark.slow
def test_an_onnx_file_on_worker_processes_gives_the_same_mask(scene, tmp_path, onnx_files,
                                                              cluster) -> None:
    reference = _predict(scene, tmp_path / "here.tif", onnx_files["dynamic"])
    config = PredictConfig(str(scene), str(tmp_path / "cluster.tif"),
                           model=str(onnx_files["dynamic"]), tile_size=64, overlap=16,
                           chunk_size=96)
    result = predict(config, client=cluster)
    assert result.report["engine"] == "onnxruntime"
    np.testing.assert_array_equal(_mask(result.dst), reference)
