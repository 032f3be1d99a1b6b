"""The inference engines: eager torch and ONNX Runtime give the same masks; the export is cached."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import metadata, random_image
from torch import nn

from tileseg.cli.main import cli
from tileseg.config import PredictConfig
from tileseg.errors import DependencyError, ModelError
from tileseg.inference import engine
from tileseg.inference.infer import make_runtime
from tileseg.models import BUNDLED_MODEL
from tileseg.models.formats import load_model
from tileseg.models.loaded import ModelSpec, build_model, clear_cache, save_model, wrap_module
from tileseg.pipeline import predict

pytest.importorskip("onnxruntime")


@pytest.fixture
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """An empty export cache, and a count of the exports made."""
    monkeypatch.setattr(engine, "onnx_cache_dir", lambda: tmp_path / "onnx-cache")
    counts = {"exports": 0}
    export = engine.export_onnx

    def counting(*args: object, **kwargs: object) -> None:
        counts["exports"] += 1
        export(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "export_onnx", counting)
    clear_cache()
    yield counts
    clear_cache()


def _landsat() -> Path:
    from tileseg.samples import SampleError, fetch

    try:
        return fetch("landsat-multiband")
    except SampleError as exc:
        pytest.skip(f"no registry access: {exc}")


def _mask(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_engines_agree_on_the_landsat_sample(tmp_path: Path, onnx_cache: dict[str, int]) -> None:
    src = _landsat()
    masks, reports = {}, {}
    for name in ("torch", "onnxruntime"):
        result = predict(PredictConfig(str(src), str(tmp_path / f"{name}.tif"), tile_size=256,
                                       overlap=32, engine=name))  # type: ignore[arg-type]
        masks[name], reports[name] = _mask(result.dst), result.report
    assert reports["torch"]["engine"] == "torch"
    assert reports["onnxruntime"]["engine"] == "onnxruntime"
    assert reports["torch"]["tiles_inferred"] == 6  # 443x489 in 224-px steps: seams to cross
    classes = np.unique(masks["torch"][masks["torch"] != 255])
    assert len(classes) >= 4, classes  # a real mask, not one class everywhere
    agree = (masks["torch"] == masks["onnxruntime"]).mean()
    assert agree >= 0.999, agree
    assert onnx_cache["exports"] == 1


class ConstantModel(nn.Module):
    """Logits that ignore the input: every engine must give exactly the same mask."""

    def __init__(self, bands: int, classes: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(bands, classes, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.linspace(-1.0, 1.0, classes).roll(1))  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_constant_output_model_gives_identical_masks(make_raster, tmp_path: Path,
                                                     onnx_cache: dict[str, int]) -> None:
    src = make_raster(random_image(3, 150, 170))
    model = wrap_module(ConstantModel(3, 4), metadata(4, 3, scale=1 / 255))
    masks = {}
    for name in ("torch", "onnxruntime"):
        result = predict(PredictConfig(str(src), str(tmp_path / f"{name}.tif"), tile_size=64,
                                       overlap=16, engine=name), model=model)  # type: ignore[arg-type]
        assert result.report["engine"] == name
        masks[name] = _mask(result.dst)
    np.testing.assert_array_equal(masks["torch"], masks["onnxruntime"])
    assert (masks["torch"] == 0).all()  # the bias rolled the largest logit to class 0


def _runtime(model_dir: Path, tile_size: int = 64) -> object:
    return make_runtime(load_model(model_dir), device="cpu", precision="auto", batch_size=2,
                        tile_size=tile_size, overlap=16, blend="hann", engine="auto",
                        from_directory=True)


def test_export_is_cached_and_redone_when_the_weights_change(
        deeplab_dir: Path, tmp_path: Path, onnx_cache: dict[str, int]) -> None:
    first = _runtime(deeplab_dir)
    assert first.engine == "onnxruntime" and onnx_cache["exports"] == 1  # type: ignore[attr-defined]
    clear_cache()
    again = _runtime(deeplab_dir)  # a new process would do the same: load the cached file
    assert onnx_cache["exports"] == 1
    assert again.onnx.path == first.onnx.path  # type: ignore[attr-defined]
    assert not list(again.onnx.path.parent.glob("*.tmp*"))  # type: ignore[attr-defined]
    # the same directory with other weights exports again
    changed = tmp_path / "changed"
    model = load_model(deeplab_dir)
    with torch.no_grad():
        model.module.segmentation_head[0].bias.add_(1.0)  # type: ignore[index,union-attr]
    save_model(model.module, changed, model.metadata)
    retrained = _runtime(changed)
    assert onnx_cache["exports"] == 2
    assert retrained.onnx.path != first.onnx.path  # type: ignore[attr-defined]
    # so does another network input size
    _runtime(deeplab_dir, tile_size=80)
    assert onnx_cache["exports"] == 3


def test_last_smaller_batch_runs(deeplab_dir: Path, onnx_cache: dict[str, int]) -> None:
    runtime = _runtime(deeplab_dir)
    model = load_model(deeplab_dir).module
    for n in (2, 1):  # the batch size, then a smaller last batch (dynamic batch axis)
        x = torch.rand(n, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
        got = runtime.forward(x)  # type: ignore[attr-defined]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("architecture", "output_stride", "tile_size"), [
    ("DeepLabV3", None, 48),  # smp's DeepLabV3 runs at output stride 8
    ("DeepLabV3Plus", 8, 48),
    ("PSPNet", None, 48),  # pyramid pooling: the input must be a multiple of 48
])
def test_architectures_run_on_onnxruntime(tmp_path: Path, onnx_cache: dict[str, int],
                                          architecture: str, output_stride: int | None,
                                          tile_size: int) -> None:
    torch.manual_seed(0)
    module = build_model(ModelSpec(architecture, "resnet18", in_channels=3, classes=3,
                                   encoder_output_stride=output_stride))
    save_model(module, tmp_path / "m", metadata(3, 3))
    loaded = load_model(tmp_path / "m")
    runtime = make_runtime(loaded, device="cpu", precision="fp32", batch_size=2,
                           tile_size=tile_size, overlap=8, blend="hann", engine="onnxruntime")
    x = torch.rand(2, 3, runtime.context, runtime.context)
    with torch.no_grad():
        expected = loaded.module.eval()(x)
    torch.testing.assert_close(runtime.forward(x), expected, rtol=1e-3, atol=1e-3)


def test_pspnet_at_an_unsupported_size_says_which_engine_to_use(
        tmp_path: Path, onnx_cache: dict[str, int], caplog: pytest.LogCaptureFixture) -> None:
    module = build_model(ModelSpec("PSPNet", "resnet18", in_channels=3, classes=3))
    save_model(module, tmp_path / "m", metadata(3, 3))
    kwargs = dict(device="cpu", precision="fp32", batch_size=2, tile_size=64, overlap=8,
                  blend="hann", from_directory=True)
    with pytest.raises(ModelError, match="use engine torch") as info:
        make_runtime(load_model(tmp_path / "m"), engine="onnxruntime", **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and "multiple of 48" in str(info.value)
    # auto falls back to torch with a warning instead of failing
    runtime = make_runtime(load_model(tmp_path / "m"), engine="auto", **kwargs)  # type: ignore[arg-type]
    assert runtime.engine == "torch" and "running it with torch" in caplog.text


def test_missing_onnxruntime_is_exit_6_with_the_install_command(
        make_raster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    src = make_raster(random_image(5, 40, 40, dtype="float32"))
    res = CliRunner().invoke(cli, ["predict", str(src), str(tmp_path / "o.tif"), "--engine",
                                   "onnxruntime", "--model", str(BUNDLED_MODEL)])
    assert res.exit_code == 6, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "tileseg[cpu]" in lines[0]
    assert not (tmp_path / "o.tif").exists()
    # auto quietly uses torch
    assert engine.resolve_engine("auto", torch.device("cpu")) == "torch"
    with pytest.raises(DependencyError):
        engine.resolve_engine("onnxruntime", torch.device("cpu"))


def test_auto_picks_onnxruntime_on_the_cpu_for_model_directories_only() -> None:
    cpu = torch.device("cpu")
    assert engine.resolve_engine("auto", cpu) == "onnxruntime"
    assert engine.resolve_engine("auto", cpu, from_directory=False) == "torch"
    assert engine.resolve_engine("auto", cpu, autocast=torch.bfloat16) == "torch"
    assert engine.resolve_engine("auto", torch.device("cuda")) == "torch"


def test_manifest_scenes_choose_their_engine(tmp_path: Path) -> None:
    from tileseg.batch import load_manifest

    manifest = tmp_path / "scenes.yaml"
    manifest.write_text("defaults: {engine: onnxruntime}\n"
                        "scenes:\n  - {src: a.tif, dst: a_mask.tif}\n"
                        "  - {src: b.tif, dst: b_mask.tif, engine: torch}\n")
    a, b = load_manifest(manifest)
    assert a.config({}).engine == "onnxruntime" and b.config({}).engine == "torch"


# --------------------------------------------------------------------------- binary models


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_a_binary_model_is_the_sigmoid_threshold_on_either_engine(
        make_raster, tmp_path: Path, onnx_cache: dict[str, int], name: str) -> None:
    import zarr
    from conftest import CountingModel

    data = random_image(3, 150, 170)
    src = make_raster(data)
    module = CountingModel(3, 1, seed=3)  # one output channel: smp's classes=1
    with torch.no_grad():  # centred on this image, so both classes cover much of it
        module.conv.bias -= module(torch.from_numpy(data.astype(np.float32) / 255)[None]).median()
    meta = metadata(2, 3, scale=1 / 255)
    result = predict(PredictConfig(str(src), str(tmp_path / "out.zarr"), tile_size=64, overlap=16,
                                   probabilities="float16", engine=name),  # type: ignore[arg-type]
                     model=wrap_module(module, meta))
    assert result.report["engine"] == name
    with torch.no_grad():
        logit = module(torch.from_numpy(data.astype(np.float32) / 255)[None])[0, 0].numpy()
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    mask, probs = root["mask"][:], root["probabilities"][:].astype(np.float32)
    clear = np.abs(logit) > 1e-4  # blending sums equal logits: only a rounding from 0 may flip
    assert 0.2 < (mask == 1).mean() < 0.8
    np.testing.assert_array_equal(mask[clear], (logit > 0)[clear])
    sigmoid = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(probs[1], sigmoid, atol=2e-3)  # float16
    np.testing.assert_allclose(probs[0], 1 - sigmoid, atol=2e-3)


# --------------------------------------------------------------------------- the export cache


def test_a_cached_file_that_is_not_this_models_export_is_exported_again(
        deeplab_dir: Path, tmp_path: Path, onnx_cache: dict[str, int],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="tileseg.inference.engine")
    first = _runtime(deeplab_dir)
    path: Path = first.onnx.path  # type: ignore[attr-defined]
    # another model's export under this model's name (a copied cache, a hand-made file)
    other = build_model(ModelSpec(encoder_name="resnet18", in_channels=3, classes=3)).eval()
    engine.export_onnx(other, tmp_path / "other.onnx", first.context, 3)  # type: ignore[attr-defined]
    (tmp_path / "other.onnx").replace(path)
    clear_cache()
    model = load_model(deeplab_dir)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.module(x)
    again = _runtime(deeplab_dir)
    torch.testing.assert_close(again.forward(x), expected,  # type: ignore[attr-defined]
                               rtol=1e-3, atol=1e-3)
    assert onnx_cache["exports"] == 3 and "not used" in caplog.text
    # the same for a record naming another model, or bytes changed after the export
    for damage in ("record", "bytes"):
        clear_cache()
        if damage == "record":
            engine.export_record(path).write_text('{"model_key": "someone else", "sha256": ""}')
        else:
            with open(path, "r+b") as f:
                f.seek(-64, 2)
                f.write(bytes(64))
        _runtime(deeplab_dir).forward(x)  # type: ignore[attr-defined]
    assert onnx_cache["exports"] == 5


@pytest.mark.parametrize("engine_name", ["onnxruntime", "auto"])
def test_an_export_cache_that_cannot_be_written_is_named_before_staging(
        make_raster, tmp_path: Path, deeplab_dir: Path, engine_name: str) -> None:
    clear_cache()  # no runtime of an earlier test: this one must find its export
    src = make_raster(random_image(3, 40, 40))
    (tmp_path / "notes.txt").write_text("a file, where the cache would need a folder\n")
    cache = tmp_path / "notes.txt" / "cache"  # no folder can be made there, even by root
    args = ["predict", str(src), str(tmp_path / "out.tif"), "-m", str(deeplab_dir),
            "--tile-size", "64", "--overlap", "16", "--engine", engine_name]
    # the user's cache (the suite's own export folder, TILESEG_ONNX_CACHE, set aside)
    res = CliRunner().invoke(cli, args, env={"TILESEG_CACHE": str(cache),
                                             "TILESEG_ONNX_CACHE": None})
    if engine_name == "auto":  # torch instead, with a warning naming the cache
        assert res.exit_code == 0, res.output
        assert "ONNX export cache cannot be written" in res.output and "with torch" in res.output
        return
    assert res.exit_code == 4, res.output  # before: 3, blaming the model, once staged
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "ONNX export cache cannot be written" in lines[0], lines
    assert "TILESEG_CACHE" in lines[0] and "--engine torch" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "scene.tif"]


def test_a_read_only_cache_holding_the_export_is_used(
        make_raster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deeplab_dir: Path) -> None:
    src = make_raster(random_image(3, 40, 40))
    monkeypatch.setenv("TILESEG_CACHE", str(tmp_path / "cache"))
    clear_cache()

    def run(dst: str, tile_size: int = 64) -> Any:
        return CliRunner().invoke(cli, [
            "predict", str(src), str(tmp_path / dst), "-m", str(deeplab_dir), "--tile-size",
            str(tile_size), "--overlap", "16", "--engine", "onnxruntime", "-q"])

    assert run("first.tif").exit_code == 0
    # as on a read-only mount (root writes through permission bits; a mount it cannot)
    monkeypatch.setattr(engine, "_cache_problem", lambda folder: "Read-only file system")
    monkeypatch.setattr(engine, "export_onnx", None)  # no export may be attempted
    clear_cache()
    res = run("second.tif")
    assert res.exit_code == 0, res.output
    assert np.array_equal(_mask(str(tmp_path / "first.tif")), _mask(str(tmp_path / "second.tif")))
    # another input size is not cached: refused before anything is written
    res = run("third.tif", tile_size=48)
    assert res.exit_code == 4 and "Read-only file system" in res.output, res.output
    assert not (tmp_path / "third.tif.partial").exists()
