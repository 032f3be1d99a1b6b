"""Models as users hold them: a real TorchGeo checkpoint, plain weights, formats read from the
content, and files that would run code refused without running it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import metadata, random_image

from tileseg.cli.main import cli
from tileseg.errors import ModelError
from tileseg.models.formats import load_model
from tileseg.models.loaded import ModelSpec, build_model, save_model
from tileseg.models.metadata import save_metadata

TILING = ["--tile-size", "64", "--overlap", "16", "-q"]
META = metadata(3, 3, scale=1 / 255, dtype="uint8")


@pytest.fixture(scope="module")
def torchgeo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SemanticSegmentationTask (U-Net, resnet18) fitted one step by Lightning on a tiny
    dataset, saved by Lightning as TorchGeo users save it, with tileseg.json beside it; and the
    same network saved as an smp model folder."""
    pytest.importorskip("torchgeo")
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset
    from torchgeo.trainers import SemanticSegmentationTask

    class Tiny(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            image = random_image(3, 64, 64, seed=i).astype(np.float32) / 255
            return {"image": torch.from_numpy(image),
                    "mask": torch.from_numpy((image[0] > 0.5).astype(np.int64) * 2)}

    root = tmp_path_factory.mktemp("torchgeo")
    torch.manual_seed(0)
    task = SemanticSegmentationTask(model="unet", backbone="resnet18", in_channels=3,
                                    num_classes=3, loss="ce")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                         default_root_dir=str(root))
    threads = torch.get_num_threads()
    trainer.fit(task, DataLoader(Tiny(), batch_size=2), DataLoader(Tiny(), batch_size=2))
    torch.set_num_threads(threads)
    ckpt_dir = root / "checkpoints"
    ckpt_dir.mkdir()
    trainer.save_checkpoint(ckpt_dir / "epoch=0-step=1.ckpt")
    save_metadata(META, ckpt_dir)
    save_model(task.model, root / "smp", META)
    return {"ckpt": ckpt_dir / "epoch=0-step=1.ckpt", "smp": root / "smp", "root": root}


def _mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _predict(src: Path, dst: Path, model: Path | str, *extra: str) -> np.ndarray:
    engine = [] if "--engine" in extra else ["--engine", "torch"]  # no export unless asked
    res = CliRunner().invoke(cli, ["predict", str(src), str(dst), "-m", str(model), *TILING,
                                   *engine, *extra])
    assert res.exit_code == 0, res.output
    return _mask(dst)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_a_torchgeo_checkpoint_gives_the_mask_of_its_smp_model_bitwise(
        make_raster, tmp_path, torchgeo_models, engine: str) -> None:
    src = make_raster(random_image(3, 100, 130, seed=4))
    loaded = load_model(torchgeo_models["ckpt"])
    assert loaded.format == "torchgeo" and loaded.architecture == "Unet"
    assert loaded.spec is not None and loaded.spec.encoder_name == "resnet18"
    assert loaded.metadata.class_names == META.class_names
    ckpt = _predict(src, tmp_path / "ckpt.tif", torchgeo_models["ckpt"], "--engine", engine)
    smp = _predict(src, tmp_path / "smp.tif", torchgeo_models["smp"], "--engine", engine)
    np.testing.assert_array_equal(ckpt, smp)
    assert len(np.unique(ckpt)) > 1


def test_model_info_says_what_it_read_from_the_checkpoint(torchgeo_models) -> None:
    res = CliRunner().invoke(cli, ["model", "info", str(torchgeo_models["ckpt"]), "--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.output)
    assert facts["format"] == "torchgeo" and facts["architecture"] == "Unet"
    assert facts["encoder_name"] == "resnet18" and facts["in_channels"] == 3
    assert facts["input_multiple"] == 32 and facts["input_size"] is None
    assert "hyper_parameters" in facts["read_from"]["architecture"]
    assert facts["read_from"]["classes"] == "tileseg.json"
    text = CliRunner().invoke(cli, ["model", "info", str(torchgeo_models["ckpt"])])
    assert text.exit_code == 0 and "TorchGeo SemanticSegmentationTask" in text.output


def test_a_checkpoint_renamed_is_still_read_by_its_content(tmp_path, torchgeo_models) -> None:
    renamed = tmp_path / "weights.bin"
    shutil.copy(torchgeo_models["ckpt"], renamed)
    assert load_model(renamed).format == "torchgeo"


def test_a_checkpoint_exported_as_an_mlm_item_gives_the_same_mask(make_raster, tmp_path,
                                                                  torchgeo_models) -> None:
    src = make_raster(random_image(3, 90, 90, seed=8))
    item = tmp_path / "unet.json"
    res = CliRunner().invoke(cli, ["model", "export-stac", str(torchgeo_models["ckpt"]),
                                   str(item)])
    assert res.exit_code == 0, res.output
    asset = json.loads(item.read_text())["assets"]["model"]
    assert asset["mlm:artifact_type"] == "torch.save" and "mlm:checkpoint" in asset["roles"]
    np.testing.assert_array_equal(_predict(src, tmp_path / "a.tif", item),
                                  _predict(src, tmp_path / "b.tif", torchgeo_models["ckpt"]))


# --------------------------------------------------------------------------- torchgeo, by hand


def _task_checkpoint(path: Path, hparams: dict[str, Any], spec: ModelSpec,
                     seed: int = 0) -> torch.nn.Module:
    """A file shaped as Lightning writes a task: hyper_parameters and model.* weights."""
    torch.manual_seed(seed)
    net = build_model(spec).eval()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # the loss's tensors are the task's, not the network's
    torch.save({"epoch": 1, "global_step": 1, "pytorch-lightning_version": "2.6.6",
                "state_dict": state, "hyper_parameters": hparams, "hparams_name": "kwargs"}, path)
    return net


def test_a_binary_task_is_a_sigmoid_model_of_two_classes(tmp_path) -> None:
    hparams = {"model": "deeplabv3+", "backbone": "resnet18", "in_channels": 4,
               "task": "binary", "num_classes": None, "num_labels": None, "loss": "bce"}
    _task_checkpoint(tmp_path / "b.ckpt", hparams, ModelSpec("DeepLabV3Plus", "resnet18", 4, 1))
    model = load_model(tmp_path / "b.ckpt")
    assert model.metadata.num_classes == 2 and model.spec is not None and model.spec.classes == 1
    assert model.metadata.in_channels == 4 and model.divisor == 16


def test_older_lightning_hyper_parameters_are_read_as_the_dict_they_are(tmp_path) -> None:
    from lightning.fabric.utilities.data import AttributeDict

    hparams = AttributeDict(model="unet", backbone="resnet18", in_channels=3, num_classes=3,
                            task="multiclass")
    net = _task_checkpoint(tmp_path / "old.ckpt", hparams, ModelSpec("Unet", "resnet18", 3, 3))
    model = load_model(tmp_path / "old.ckpt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.module(x), net(x))


@pytest.mark.parametrize(("hparams", "match"), [
    ({"model": "unet", "backbone": "resnet18", "in_channels": 3, "task": "multilabel",
      "num_labels": 3}, "multilabel"),
    ({"model": "farseg", "backbone": "resnet18", "num_classes": 3}, "not one tileseg builds"),
    ({"lr": 0.1, "optimizer": "adam"}, "not of TorchGeo's SemanticSegmentationTask"),
])
def test_checkpoints_tileseg_cannot_run_are_one_line(tmp_path, hparams, match) -> None:
    _task_checkpoint(tmp_path / "x.ckpt", hparams, ModelSpec("Unet", "resnet18", 3, 3))
    with pytest.raises(ModelError, match=match) as info:
        load_model(tmp_path / "x.ckpt")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- plain weights


@pytest.fixture(scope="module")
def unet_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Unet's weights as a .pth state dict and as .safetensors, and the smp folder."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(2)
    net = build_model(ModelSpec("Unet", "resnet18", in_channels=3, classes=3)).eval()
    save_model(net, root / "smp", META)
    (root / "pth").mkdir()
    torch.save(net.state_dict(), root / "pth" / "unet.pth")
    save_metadata(META, root / "pth")
    data = json.loads((root / "pth" / "tileseg.json").read_text())
    data["network"] = {"architecture": "unet", "encoder_name": "resnet18"}
    (root / "pth" / "tileseg.json").write_text(json.dumps(data))
    (root / "st").mkdir()
    save_file(net.state_dict(), str(root / "st" / "unet.safetensors"))
    return {"smp": root / "smp", "pth": root / "pth" / "unet.pth",
            "safetensors": root / "st" / "unet.safetensors"}


def test_plain_weights_with_their_network_beside_them_or_by_options(make_raster, tmp_path,
                                                                    unet_weights) -> None:
    src = make_raster(random_image(3, 80, 100, seed=5))
    reference = _predict(src, tmp_path / "smp.tif", unet_weights["smp"])
    np.testing.assert_array_equal(_predict(src, tmp_path / "pth.tif", unet_weights["pth"]),
                                  reference)
    # no tileseg.json beside it: the network by options, numbered classes, a guessed scaling
    got = _predict(src, tmp_path / "st.tif", unet_weights["safetensors"], "--architecture",
                   "Unet", "--encoder", "resnet18")
    np.testing.assert_array_equal(got, reference)
    model = load_model(unet_weights["pth"])
    assert model.format == "weights" and model.origin["architecture"].endswith("tileseg.json")


def test_plain_weights_without_their_network_are_one_line_naming_the_options(
        make_raster, tmp_path, unet_weights) -> None:
    src = make_raster(random_image(3, 40, 40))
    res = CliRunner().invoke(cli, ["predict", str(src), str(tmp_path / "o.tif"), "-m",
                                   str(unet_weights["safetensors"])])
    assert res.exit_code == 3, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "--architecture" in lines[0] and "--encoder" in lines[0]
    res = CliRunner().invoke(cli, ["predict", str(src), str(tmp_path / "o.tif"), "-m",
                                   str(unet_weights["safetensors"]), "--architecture",
                                   "DeepLabV3Plus", "--encoder", "resnet18"])
    assert res.exit_code == 3 and "weights do not match DeepLabV3Plus" in res.output
    assert not list(tmp_path.glob("o.tif*"))


# --------------------------------------------------------------------------- hostile files


class Payload:
    """Unpickling this runs a shell command that leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("name", ["task.ckpt", "weights.pth"])
def test_a_pickled_payload_is_refused_and_never_runs(make_raster, tmp_path, name: str) -> None:
    marker = tmp_path / "payload-ran"
    net = build_model(ModelSpec("Unet", "resnet18", 3, 3))
    state: dict[str, Any] = {f"model.{k}": v for k, v in net.state_dict().items()}
    content: dict[str, Any] = {"state_dict": state, "evil": Payload(marker)}
    if name.endswith(".ckpt"):
        content["hyper_parameters"] = {"model": "unet", "backbone": "resnet18", "num_classes": 3}
    torch.save(content, tmp_path / name)
    src = make_raster(random_image(3, 40, 40))
    res = CliRunner().invoke(cli, ["predict", str(src), str(tmp_path / "o.tif"), "-m",
                                   str(tmp_path / name), "--architecture", "unet", "--encoder",
                                   "resnet18"])
    assert res.exit_code == 3, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "refuses to load" in lines[0] and "posix.system" in lines[0]
    assert not marker.exists(), "the payload ran"
    assert not list(tmp_path.glob("o.tif*"))
    # the payload is real: unpickled the unsafe way, it runs
    torch.load(tmp_path / name, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_a_truncated_checkpoint_is_one_line(tmp_path, torchgeo_models, keep: float) -> None:
    data = torchgeo_models["ckpt"].read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match="truncated or corrupt") as info:
        load_model(cut)
    assert "\n" not in str(info.value)


def test_files_that_are_no_model_are_one_line(tmp_path) -> None:
    (tmp_path / "notes.pt").write_text("just some notes\n")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    (tmp_path / "feature.json").write_text('{"type": "Feature", "properties": {}}')
    for name, match in (("notes.pt", "not a model file tileseg reads"),
                        ("empty.ckpt", "empty"),
                        ("list.pt", "neither a state dict"),
                        ("feature.json", "not a STAC item using the Machine Learning Model")):
        with pytest.raises(ModelError, match=match) as info:
            load_model(tmp_path / name, architecture="unet", encoder_name="resnet18")
        assert "\n" not in str(info.value)


def test_a_batch_manifest_takes_a_checkpoint_and_tta(make_raster, tmp_path,
                                                    torchgeo_models) -> None:
    src = make_raster(random_image(3, 70, 80, seed=9))
    shutil.copytree(torchgeo_models["ckpt"].parent, tmp_path / "checkpoints")
    manifest = tmp_path / "scenes.yaml"
    manifest.write_text(f"- src: {src}\n  dst: flips.tif\n  model: checkpoints/epoch=0-step=1.ckpt"
                        "\n  tta: flips\n  tile_size: 64\n  overlap: 16\n  engine: torch\n")
    res = CliRunner().invoke(cli, ["batch", str(manifest), "-q"])
    assert res.exit_code == 0, res.output
    expected = _predict(src, tmp_path / "one.tif", torchgeo_models["ckpt"], "--tta", "flips")
    np.testing.assert_array_equal(_mask(tmp_path / "flips.tif"), expected)


def test_a_run_fingerprints_the_model_format_and_the_files_beside_it(
        make_raster, tmp_path, torchgeo_models, monkeypatch) -> None:
    """--resume continues only the same model: format facts and every file it was read from
    (the tileseg.json beside a checkpoint too), by name, whatever path names the model."""
    from tileseg.config import PredictConfig
    from tileseg.pipeline import _fingerprint
    from tileseg.sources.raster import open_raster

    src = make_raster(random_image(3, 40, 40))
    raster = open_raster(str(src))

    def fingerprint(model: Path | str, **kw: object) -> str:
        cfg = PredictConfig(str(src), str(tmp_path / "o.tif"), **kw)  # type: ignore[arg-type]
        return _fingerprint(cfg, raster, str(model), load_model(model))

    folder = tmp_path / "copy"
    shutil.copytree(torchgeo_models["ckpt"].parent, folder)
    ckpt = folder / torchgeo_models["ckpt"].name
    first = fingerprint(ckpt)
    monkeypatch.chdir(tmp_path)
    assert fingerprint(Path("copy") / ckpt.name) == first  # another path to the same files
    assert fingerprint(torchgeo_models["smp"]) != first  # the same weights as an smp folder
    assert fingerprint(ckpt, tta="flips") != first
    meta = json.loads((folder / "tileseg.json").read_text())
    meta["classes"][0]["name"] = "renamed"
    (folder / "tileseg.json").write_text(json.dumps(meta))
    assert fingerprint(ckpt) != first
