"""STAC Machine Learning Model items: written for any model, read back (and read from others),
the same mask either way."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import random_image

from tileseg.cli.main import cli
from tileseg.errors import ModelError
from tileseg.models.formats import load_model
from tileseg.models.formats.mlm import MLM_SCHEMA, mlm_properties, stac_item

TILING = ["--tile-size", "64", "--overlap", "16", "--engine", "torch", "-q"]


def _mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _predict(src: Path, dst: Path, model: Path, *extra: str) -> np.ndarray:
    res = CliRunner().invoke(cli, ["predict", str(src), str(dst), "-m", str(model), *TILING,
                                   *extra])
    assert res.exit_code == 0, res.output
    return _mask(dst)


def test_export_stac_then_predict_from_the_item_gives_the_same_mask(
        make_raster, tmp_path, several_class_deeplab: Path) -> None:
    src = make_raster(random_image(3, 90, 110, seed=3))
    item = tmp_path / "model.json"
    res = CliRunner().invoke(cli, ["model", "export-stac", str(several_class_deeplab),
                                   str(item)])
    assert res.exit_code == 0, res.output
    model = load_model(item)
    assert model.item == str(item) and model.format == "weights"
    original = load_model(several_class_deeplab)
    assert model.metadata == original.metadata  # classes, colours, bands, dtype, normalization
    reference = _predict(src, tmp_path / "dir.tif", several_class_deeplab)
    np.testing.assert_array_equal(_predict(src, tmp_path / "item.tif", item), reference)
    assert len(np.unique(reference)) > 1


def test_an_independent_reader_reads_the_item(tmp_path, deeplab_dir: Path) -> None:
    """pystac's MLM extension (another implementation of the spec) reads what tileseg wrote."""
    pystac = pytest.importorskip("pystac")
    from pystac.extensions.mlm import AssetGeneralMLMExtension, MLMExtension

    data = stac_item(load_model(deeplab_dir), tmp_path / "item.json")
    assert data["stac_extensions"] == [MLM_SCHEMA] and data["stac_version"] == "1.1.0"
    item = pystac.Item.from_dict(copy.deepcopy(data))
    ext = MLMExtension.ext(item)
    assert ext.mlm_name == "deeplab" and ext.architecture == "DeepLabV3Plus"
    assert [str(t) for t in ext.tasks] == ["semantic-segmentation"]
    assert ext.input[0].input.shape == [-1, 3, -1, -1]
    # the classification extension's names (no spaces), the classes' own names as titles
    assert [(c.name, c.title) for c in ext.output[0].classes or []] == [
        ("class_0", "class 0"), ("class_1", "class 1"), ("class_2", "class 2")]
    asset = AssetGeneralMLMExtension.ext(item.assets["model"])
    assert asset.artifact_type == "safetensors.torch.save_file"
    scaling = data["properties"]["mlm:input"][0]["value_scaling"]
    assert scaling == [{"type": "z-score", "mean": 0, "stddev": 255}]  # uint8 /255


# --------------------------------------------------------------------------- items by others


def _foreign_item(artifact: Path, **inp: Any) -> dict[str, Any]:
    """An item written as stac-model writes one for an smp network: its qualified class name as
    the architecture, its encoder in the hyper-parameters, one value_scaling for all bands."""
    model_input: dict[str, Any] = {
        "name": "model_input", "bands": ["B4", "B3", "B2"],
        "input": {"shape": [-1, 3, 256, 256], "dim_order": ["batch", "bands", "height", "width"],
                  "data_type": "float32"},
        "value_scaling": [{"type": "z-score", "mean": 0, "stddev": 255}],
    }
    model_input.update(inp)
    return {
        "type": "Feature", "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.4.0/schema.json"],
        "id": "foreign", "geometry": None,
        "properties": {
            "datetime": "2024-01-01T00:00:00Z", "mlm:name": "DeepLab_resnet18",
            "mlm:architecture": "segmentation_models_pytorch.decoders.deeplabv3.model."
                                "DeepLabV3Plus",
            "mlm:tasks": ["semantic-segmentation"],
            "mlm:hyperparameters": {"encoder_name": "resnet18", "learning_rate": 0.001},
            "mlm:input": [model_input],
            "mlm:output": [{
                "name": "model_output", "tasks": ["semantic-segmentation"],
                "result": {"shape": [-1, 3, 256, 256], "dim_order": ["batch", "channel",
                                                                   "height", "width"],
                           "data_type": "float32"},
                "classification:classes": [
                    {"value": 2, "name": "forest", "color_hint": "00ff00"},
                    {"value": 0, "name": "background"},
                    {"value": 1, "name": "water", "description": "open water"}]}],
        },
        "links": [],
        "assets": {"weights": {"href": artifact.name, "roles": ["mlm:model", "mlm:weights"],
                               "mlm:artifact_type": "safetensors.torch.save_file"}},
    }


@pytest.fixture
def foreign(tmp_path, deeplab_dir: Path) -> tuple[Path, dict[str, Any]]:
    artifact = tmp_path / "weights.safetensors"
    artifact.symlink_to(deeplab_dir / "model.safetensors")
    return tmp_path / "item.json", _foreign_item(artifact)


def _load(item: Path, data: dict[str, Any], **options: Any):  # type: ignore[no-untyped-def]
    item.write_text(json.dumps(data))
    return load_model(item, **options)


def test_an_item_written_by_others_gives_bands_scaling_classes_and_size(foreign) -> None:
    item, data = foreign
    model = _load(item, data)
    meta = model.metadata
    assert model.architecture == "DeepLabV3Plus" and model.format == "weights"
    assert meta.class_names == ("background", "water", "forest")
    assert meta.classes[2].color == (0, 255, 0)
    assert meta.bands == ("B4", "B3", "B2") and meta.tile_size == 256
    a, b = meta.normalization.coefficients(3)
    assert np.allclose(a, 1 / 255) and np.allclose(b, 0) and not meta.guessed_scaling
    assert model.input_size is None  # a torch network runs at any multiple of its stride


@pytest.mark.parametrize(("field", "value", "a", "b"), [
    ("value_scaling", [{"type": "min-max", "minimum": 10, "maximum": 20}], 0.1, -1.0),
    ("value_scaling", [{"type": "scale", "value": 4}] * 3, 0.25, 0.0),
    ("value_scaling", [{"type": "offset", "value": 3}], 1.0, -3.0),
    ("value_scaling", None, 1.0, 0.0),  # none applies, said explicitly
])
def test_value_scaling_types(foreign, field: str, value: Any, a: float, b: float) -> None:
    item, data = foreign
    data["properties"]["mlm:input"][0][field] = value
    norm = _load(item, data).metadata.normalization
    got_a, got_b = norm.coefficients(3)
    assert np.allclose(got_a, a) and np.allclose(got_b, b)


def test_the_normalization_fields_of_mlm_before_1_4(foreign) -> None:
    item, data = foreign
    inp = data["properties"]["mlm:input"][0]
    del inp["value_scaling"]
    inp.update(norm_type="z-score", norm_by_channel=True,
               statistics=[{"mean": 1, "stddev": 2}, {"mean": 3, "stddev": 4},
                           {"mean": 5, "stddev": 8}])
    norm = _load(item, data).metadata.normalization
    assert norm.mean == (1, 3, 5) and norm.std == (2, 4, 8)


def test_an_item_without_normalization_keeps_the_guess_and_its_warning(foreign, caplog) -> None:
    item, data = foreign
    caplog.set_level(logging.WARNING)  # an earlier CLI case may have quieted the root logger
    del data["properties"]["mlm:input"][0]["value_scaling"]
    meta = _load(item, data, raster_dtype="uint16").metadata
    assert meta.guessed_scaling and np.allclose(meta.normalization.coefficients(3)[0], 1e-4)
    assert "the MLM item gives no normalization" in caplog.text


def test_the_encoder_missing_from_an_item_can_be_given(foreign) -> None:
    item, data = foreign
    del data["properties"]["mlm:hyperparameters"]["encoder_name"]
    with pytest.raises(ModelError, match="no encoder; give encoder_name"):
        _load(item, data)
    assert _load(item, data, encoder_name="resnet18").spec.encoder_name == "resnet18"


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *keys, last = path.split("/")
    target: Any = data
    for key in keys:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()
INPUT = "properties/mlm:input/0"


@pytest.mark.parametrize(("path", "value", "match"), [
    ("assets/weights/href", "https://huggingface.co/x/weights.safetensors", "never downloads"),
    ("assets/weights/mlm:artifact_type", "torch.jit.save", "not one tileseg runs"),
    ("assets/weights/mlm:artifact_type", "onnx", "is a safetensors file"),
    ("assets/weights/roles", ["data"], "no asset with the mlm:model role"),
    ("assets/weights/href", "gone.safetensors", "is not there"),
    (f"{INPUT}/value_scaling", [{"type": "clip", "minimum": 0, "maximum": 1}],
     "type 'clip' is not one tileseg applies"),
    (f"{INPUT}/value_scaling", [{"type": "z-score", "mean": 0, "stddev": 1}] * 2,
     "2 entries for 3 bands"),
    (f"{INPUT}/value_scaling", [{"type": "z-score", "mean": 0, "stddev": 0}], "divides by 0"),
    (f"{INPUT}/input/dim_order", ["batch", "height", "width", "bands"], "not (batch, channel"),
    (f"{INPUT}/input/shape", [-1, 3, 256, 128], "not square"),
    (f"{INPUT}/bands", ["B4", "B3"], "names 2 bands but its shape has 3"),
    ("properties/mlm:output/0/classification:classes/0/value", 5, "not 0, 1, 2"),
    ("properties/mlm:input", [{"name": "a"}, {"name": "b"}], "tileseg feeds one"),
    ("properties/mlm:architecture", "Mask R-CNN", "unknown architecture"),
])
def test_items_tileseg_cannot_run_are_one_line(foreign, path: str, value: Any,
                                               match: str) -> None:
    item, data = foreign
    _set(data, path, value)
    with pytest.raises(ModelError, match=re.escape(match)) as info:
        _load(item, data)
    assert "\n" not in str(info.value)


def test_properties_of_any_model_for_an_output_item(deeplab_dir: Path) -> None:
    props = mlm_properties(load_model(deeplab_dir))
    assert all(k.startswith("mlm:") for k in props)
    assert props["mlm:output"][0]["result"]["shape"] == [-1, 3, -1, -1]
    assert props["mlm:hyperparameters"]["network"]["encoder_name"] == "resnet18"
    assert props["mlm:total_parameters"] > 0


def test_a_runs_output_item_describes_its_model_as_the_models_own_item_does(
        make_raster, tmp_path, deeplab_dir: Path) -> None:
    """One description of a model in MLM's terms: the output item of a run adds only the
    run's facts (the input side it used) to what ``model export-stac`` writes."""
    from tileseg.outputs.stac_item import OutputAssets, build_item
    from tileseg.sources.raster import open_raster

    model = load_model(deeplab_dir)
    raster = open_raster(str(make_raster(random_image(3, 40, 50))))
    output = build_item(item_href=str(tmp_path / "m.stac.json"), raster=raster, model=model,
                        input_size=64, assets=OutputAssets(str(tmp_path / "m.tif"), "cog"),
                        nodata=255, mask_dtype="uint8", source=raster.path, source_item=None,
                        fingerprint="f")
    own = stac_item(model, tmp_path / "model.json")
    run_mlm = {k: v for k, v in output["properties"].items() if k.startswith("mlm:")}
    own_mlm = {k: v for k, v in own["properties"].items() if k.startswith("mlm:")}
    for io, field in (("mlm:input", "input"), ("mlm:output", "result")):
        assert run_mlm[io][0][field]["shape"][2:] == [64, 64]  # the side this run used
        run_mlm[io][0][field]["shape"][2:] = own_mlm[io][0][field]["shape"][2:]
    assert run_mlm == own_mlm
    assert output["assets"]["model"]["mlm:artifact_type"] == own["assets"]["model"][
        "mlm:artifact_type"]


def test_export_stac_replaces_only_an_item_it_wrote(tmp_path, deeplab_dir: Path) -> None:
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"mine": true}\n')
    ours = tmp_path / "ours.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["model", "export-stac", str(deeplab_dir), str(ours)]).exit_code == 0
    for argv, code in (([str(ours)], 4), ([str(ours), "--overwrite"], 0),
                       ([str(theirs), "--overwrite"], 4)):
        res = runner.invoke(cli, ["model", "export-stac", str(deeplab_dir), *argv])
        assert res.exit_code == code, res.output
    assert theirs.read_text() == '{"mine": true}\n'


def test_an_item_may_point_at_an_smp_folder(foreign, deeplab_dir: Path) -> None:
    item, data = foreign
    data["assets"]["weights"]["href"] = str(deeplab_dir)
    model = _load(item, data)
    assert model.format == "smp" and model.item == str(item)
    assert model.metadata.class_names == ("background", "water", "forest")  # the item's
    assert str(item) in model.files and str(deeplab_dir / "config.json") in model.files
