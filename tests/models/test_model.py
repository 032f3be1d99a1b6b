"""model and metadata: the process cache, the registry of in-process models, and what a model
directory may hold (binary models, normalization, colours, names, files that cannot be read)."""

from __future__ import annotations

import builtins
import errno
import gc
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import CountingModel, metadata, per_pixel_model, random_image

from tileseg.cli.main import cli
from tileseg.errors import ModelError
from tileseg.models import loaded as model_mod
from tileseg.models import registry
from tileseg.models.formats import load_model
from tileseg.models.loaded import ModelSpec, build_model, save_model, wrap_module
from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization


def test_cached_calls_the_factory_once_per_key_and_does_not_block_other_keys() -> None:
    calls: list[str] = []
    slow_started = threading.Event()

    def slow() -> str:
        slow_started.set()
        time.sleep(0.5)
        calls.append("slow")
        return "slow"

    key_slow, key_fast = ("test-slow", object()), ("test-fast", object())
    worker = threading.Thread(target=model_mod.cached, args=(key_slow, slow))
    worker.start()
    slow_started.wait(5)
    began = time.perf_counter()
    assert model_mod.cached(key_fast, lambda: "fast") == "fast"
    waited = time.perf_counter() - began
    worker.join()
    assert waited < 0.4, "a load under way held up a load of another key"
    assert model_mod.cached(key_slow, lambda: "again") == "slow" and calls == ["slow"]


def test_registry_forgets_a_released_model_and_its_runtime() -> None:
    model = per_pixel_model(2, 3)
    key = registry.register_model(model)
    assert registry.register_model(model) == key  # one key per object
    ref = registry.ModelRef(key=key)
    model_mod.cached(("runtime", ref), lambda: "placed")
    del model
    gc.collect()
    assert key not in registry._IN_PROCESS_MODELS
    registry.register_model(per_pixel_model(2, 3))  # registering prunes dead entries' runtimes
    assert all(k[1:2] != (ref,) for k in model_mod._CACHE)


# --------------------------------------------------------------------------- model directories


def _variant(source: Path, target: Path, **files: Any) -> Path:
    """A copy of the model directory ``source`` (its weights linked, not copied) with ``files``
    replaced: ``tileseg_json=`` a dict (as JSON), a str, or None to leave it out."""
    target.mkdir()
    for original in source.iterdir():
        if original.suffix == ".safetensors":
            (target / original.name).symlink_to(original)
        else:
            shutil.copy(original, target / original.name)
    for name, content in files.items():
        path = target / name.replace("_", ".", 1)
        path.unlink(missing_ok=True)
        if isinstance(content, dict):
            path.write_text(json.dumps(content))
        elif content is not None:
            path.write_text(content)
    return path.parent if files else target


def _meta(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "tileseg.json").read_text())


def _predict_cli(src: Path, dst: Path, model_dir: Path, *extra: str) -> Any:
    return CliRunner().invoke(cli, ["predict", str(src), str(dst), "-m", str(model_dir),
                                    "--tile-size", "64", "--overlap", "16", *extra])


@pytest.fixture(scope="module")
def binary_deeplab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smp's binary default: a DeepLabV3+ with ``classes=1`` (one sigmoid logit), its head bias
    shifted so that the logit is positive on about half of an image, saved without tileseg.json."""
    torch.manual_seed(0)
    module = build_model(ModelSpec(encoder_name="resnet18", in_channels=3, classes=1)).eval()
    x = torch.from_numpy(random_image(3, 64, 64, seed=7).astype(np.float32) / 255)[None]
    with torch.no_grad():
        module.segmentation_head[0].bias -= module(x)[0].median()
    path = tmp_path_factory.mktemp("models") / "binary"
    save_model(module, path, metadata(2, 3, scale=1 / 255, dtype="uint8"))
    (path / "tileseg.json").unlink()
    return path


def test_a_binary_model_gives_two_classes_where_its_sigmoid_crosses_one_half(
        binary_deeplab: Path, make_raster: Callable[..., Path], tmp_path: Path) -> None:
    src = make_raster(random_image(3, 64, 64, seed=7))
    result = _predict_cli(src, tmp_path / "out.tif", binary_deeplab, "--engine", "torch")
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out.tif") as out:
        mask = out.read(1)
        names = [c["name"] for c in json.loads(out.tags()["TILESEG_CLASSES"])]
    assert names == ["class_0", "class_1"]
    share = (mask == 1).mean()  # before: class 0 everywhere (the argmax of one channel)
    assert set(np.unique(mask)) == {0, 1} and 0.2 < share < 0.8, share
    # exactly the sigmoid's 0.5 threshold, blended, on either engine: tests/inference/test_engine.py


def test_a_binary_model_takes_its_two_class_names_from_tileseg_json(
        binary_deeplab: Path, tmp_path: Path) -> None:
    two = metadata(2, 3, scale=1 / 255).to_json()
    two["classes"][0]["name"], two["classes"][1]["name"] = "background", "building"
    named = _variant(binary_deeplab, tmp_path / "named", tileseg_json=two)
    assert load_model(named).metadata.class_names == ("background", "building")
    one = {**two, "classes": [{**two["classes"][1], "id": 0}]}
    with pytest.raises(ModelError, match="binary model.*name two") as info:
        load_model(_variant(binary_deeplab, tmp_path / "one", tileseg_json=one))
    assert "\n" not in str(info.value)


def test_class_logits_make_a_binary_logit_two_classes_and_refuse_other_counts() -> None:
    x = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0]).reshape(1, 1, 1, 5)
    logits = model_mod.class_logits(x, 2)
    assert logits.shape == (1, 2, 1, 5)
    assert logits.argmax(1).flatten().tolist() == [0, 0, 0, 1, 1]  # sigmoid(0) = 0.5: not above
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1], torch.sigmoid(x)[:, 0])
    assert wrap_module(CountingModel(3, 1)).metadata.num_classes == 2
    with pytest.raises(ModelError, match="1 output channels but its metadata names 3 classes"):
        model_mod.class_logits(x, 3)


def test_a_negative_std_is_refused() -> None:
    with pytest.raises(ModelError, match="std contains -2.0; every std must be positive"):
        Normalization(std=(1.0, -2.0, 1.0))


def test_tileseg_json_without_normalization_is_scaled_by_the_dtype_with_a_warning(
        deeplab_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="tileseg.models.loaded")
    meta = _meta(deeplab_dir)
    del meta["normalization"]
    stated = _variant(deeplab_dir, tmp_path / "stated", tileseg_json=meta)  # dtype uint8
    loaded = load_model(stated, raster_dtype="uint16")  # the model's dtype decides, not the raster's
    assert loaded.metadata.normalization == Normalization(scale=(1 / 255,))
    assert "gives no normalization" in caplog.text and "uint8 values divided by 255" in caplog.text
    caplog.clear()
    del meta["dtype"]
    unstated = _variant(deeplab_dir, tmp_path / "unstated", tileseg_json=meta)
    loaded = load_model(unstated, raster_dtype="uint16")  # no dtype given: the raster's
    assert loaded.metadata.normalization == Normalization(scale=(1 / 10000,))
    assert "uint16 values divided by 10000" in caplog.text
    # saved again, it is still without normalization (a guess, not a choice)
    assert "normalization" not in loaded.metadata.to_json()
    caplog.clear()
    # normalization given: used as it is, without a word
    assert load_model(deeplab_dir, raster_dtype="uint16").metadata.normalization.scale == (1 / 255,)
    assert "guess" not in caplog.text


def test_a_module_without_metadata_is_scaled_by_a_guess_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="tileseg.models.loaded")
    model = wrap_module(CountingModel(3, 2), source="<test module>", dtype="uint8")
    assert model.metadata.normalization.scale == (1 / 255,)
    assert "<test module>: no metadata given" in caplog.text


@pytest.mark.parametrize("color", [[300, 0, 0], [0, -1, 0], [0.5, 0, 0], "#-10000"])
def test_a_class_colour_out_of_range_is_refused_when_the_model_loads(
        deeplab_dir: Path, tmp_path: Path, make_raster: Callable[..., Path], color: Any) -> None:
    meta = _meta(deeplab_dir)
    meta["classes"][1]["color"] = color
    bad = _variant(deeplab_dir, tmp_path / "bad", tileseg_json=meta)
    with pytest.raises(ModelError, match="colour"):
        load_model(bad)
    # the CLI: one line, exit 3, and nothing staged (before: found when the mask was written)
    src = make_raster(random_image(3, 40, 40))
    result = _predict_cli(src, tmp_path / "out.tif", bad, "--engine", "torch")
    assert result.exit_code == 3, result.output
    assert len(result.output.strip().splitlines()) == 1 and "tileseg.json" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "scene.tif"]


@pytest.mark.parametrize("name", ["bell\x07", "two\nlines", "tab\there", "nul\x00",
                                  "surrogate\ud800"])
def test_a_class_name_with_a_control_character_is_refused(name: str) -> None:
    with pytest.raises(ModelError, match="control character") as info:
        ModelMetadata(classes=(ClassInfo(0, "ok", (1, 2, 3)), ClassInfo(1, name, (4, 5, 6))),
                      in_channels=3)
    assert "\n" not in str(info.value)


def test_printable_class_names_of_any_script_are_kept(deeplab_dir: Path, tmp_path: Path) -> None:
    meta = _meta(deeplab_dir)
    names = ['a < b & "c"', "l'eau", "forêt 森林 🌲"]
    for c, name in zip(meta["classes"], names, strict=True):
        c["name"] = name
    assert load_model(_variant(deeplab_dir, tmp_path / "m", tileseg_json=meta)
                      ).metadata.class_names == tuple(names)


# --------------------------------------------------------------------------- unreadable files


def _refuse(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Opening or listing ``target`` fails with EACCES, as without read permission: tests run as
    root here, whom permission bits do not stop (the chmod test below runs where they do)."""
    real_open, real_listdir = builtins.open, os.listdir

    def denied(path: Any) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and Path(file) == target:
            raise denied(file)
        return real_open(file, *args, **kwargs)

    def fake_listdir(path: Any = ".") -> list[str]:
        if Path(path) == target:
            raise denied(path)
        return real_listdir(path)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's read_text opens through io.open
    monkeypatch.setattr(os, "listdir", fake_listdir)


@pytest.mark.parametrize("target", ["model.safetensors", "config.json", "tileseg.json", "."])
def test_a_model_file_or_folder_that_cannot_be_read_is_one_line_exit_3(
        deeplab_dir: Path, tmp_path: Path, make_raster: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    src = make_raster(random_image(3, 40, 40))
    model_dir = _variant(deeplab_dir, tmp_path / "m")
    _refuse(monkeypatch, model_dir / target)
    result = _predict_cli(src, tmp_path / "out.tif", model_dir, "--engine", "torch")
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot be read (Permission denied)" in lines[0], lines
    assert "chmod" in lines[0] and "corrupt" not in lines[0]
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "out.tif.partial").exists()


@pytest.mark.parametrize("target", ["model.safetensors", "config.json", "tileseg.json"])
def test_a_folder_where_a_model_file_should_be_is_one_line_exit_3(
        deeplab_dir: Path, tmp_path: Path, target: str) -> None:
    model_dir = _variant(deeplab_dir, tmp_path / "m")
    (model_dir / target).unlink()
    (model_dir / target).mkdir()  # before, a folder named tileseg.json was ignored: no metadata
    with pytest.raises(ModelError, match="cannot be read .*it must be a file"):
        load_model(model_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_model_without_read_permission_is_one_line_exit_3(
        deeplab_dir: Path, tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    src = make_raster(random_image(3, 40, 40))
    model_dir = tmp_path / "m"
    shutil.copytree(deeplab_dir, model_dir)
    for path, mode in ((model_dir / "model.safetensors", 0o000), (model_dir, 0o311),
                       (model_dir, 0o000)):
        path.chmod(mode)
        try:
            result = _predict_cli(src, tmp_path / "out.tif", model_dir, "--engine", "torch")
        finally:
            path.chmod(0o755 if path.is_dir() else 0o644)
        assert result.exit_code == 3, result.output
        assert "cannot be read (Permission denied)" in result.output, result.output
