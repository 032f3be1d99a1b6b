"""``evaluate``: stream a predicted mask against a label raster and score it.

Both rasters are read window by window (``block_size`` pixels square), so memory stays bounded
whatever their size. Pixels that are nodata in either raster are left out. Metrics are those of
:mod:`tileseg.metrics` (pixel accuracy, mean class accuracy, mean IoU, frequency-weighted IoU,
per-class IoU and the confusion matrix).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from tileseg.errors import ConfigError, InputError, InputNotFoundError
from tileseg.metrics import SegmentationMetrics, compute_metrics, confusion_matrix, format_table
from tileseg.outputs import mask as mask_format
from tileseg.sources.subdatasets import raster_exists
from tileseg.text import counted

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """What to compare.

    ``label_values`` gives the label raster's value for each class id (default: the values the
    mask's classes recorded from training, for models trained by tileseg, else the ids
    themselves). ``class_names`` default to the names ``predict`` wrote into the mask's
    ``TILESEG_CLASSES`` tag. ``window`` restricts scoring to ``(row_off, col_off, height, width)``,
    e.g. a training holdout strip.
    """

    predicted: str
    labels: str
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None
    label_values: tuple[int, ...] | None = None
    window: tuple[int, int, int, int] | None = None
    block_size: int = 1024

    def __post_init__(self) -> None:
        if self.block_size < 16:
            raise ConfigError("block_size must be at least 16", params=("block_size",))
        if self.class_names is not None and self.num_classes is not None and len(
                self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for {self.num_classes} "
                              "classes; give one name per class")
        if self.label_values is not None and len(set(self.label_values)) != len(
                self.label_values):
            raise ConfigError("label values must be distinct")
        if self.window is not None and (len(self.window) != 4 or min(self.window[2:]) < 1
                                        or min(self.window[:2]) < 0):
            raise ConfigError("window takes row_off,col_off,height,width with positive sizes",
                              params=("window",))


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics plus what was compared."""

    predicted: str
    labels: str
    class_names: tuple[str, ...]
    metrics: SegmentationMetrics

    def to_json(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "labels": self.labels,
                **self.metrics.to_json(self.class_names)}

    def table(self) -> str:
        return format_table(self.metrics, self.class_names)


def _classes_from_tags(src: Any) -> list[dict[str, Any]] | None:
    try:
        return mask_format.classes_from_tags(src.tags())
    except ValueError:
        return None


def _tagged_label_values(tagged: list[dict[str, Any]] | None, n: int) -> tuple[int, ...] | None:
    """The training label values the mask's classes carry (models trained by tileseg record
    them), when every class has one."""
    if not tagged or len(tagged) != n:
        return None
    try:
        values = tuple(int(c["label_value"]) for c in sorted(tagged, key=lambda c: int(c["id"])))
    except (KeyError, TypeError, ValueError):
        return None
    if values != tuple(range(n)):
        logger.info("label values from the mask's classes: %s", list(values))
    return values


def evaluate(config: EvaluateConfig) -> EvaluationReport:
    """Score a predicted mask against labels on the same grid, streaming by windows.

    Examples
    --------
    >>> report = evaluate(EvaluateConfig("mask.tif", "labels.tif"))     # doctest: +SKIP
    >>> print(report.table())                                          # doctest: +SKIP
    """
    from tileseg.sources.raster import check_aligned

    for path in (config.predicted, config.labels):
        if not raster_exists(str(path)):  # a file, or a subdataset name whose file exists
            raise InputNotFoundError(f"{path}: no such file; check the path")
    try:
        pred_src = rasterio.open(config.predicted)
        label_src = rasterio.open(config.labels)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"not a readable raster ({exc})") from exc
    with pred_src, label_src:
        check_aligned(pred_src, label_src)
        tagged = _classes_from_tags(pred_src)
        names = config.class_names or (tuple(c["name"] for c in tagged) if tagged else None)
        n = config.num_classes or (len(names) if names else None)
        if n is None and config.label_values is not None:
            n = len(config.label_values)
        if n is None:
            raise ConfigError(
                f"{config.predicted}: no class list in the mask's tags; pass class_names a,b,... "
                "or num_classes N", params=("class_names", "num_classes")
            )
        if names is None or len(names) != n:
            names = tuple(f"class_{i}" for i in range(n))
        values = config.label_values or _tagged_label_values(tagged, n) or tuple(range(n))
        if len(values) != n:
            raise ConfigError(f"{counted(len(values), 'label value')} for "
                              f"{counted(n, 'class')}; give one per class")
        lookup = {int(v): i for i, v in enumerate(values)}
        if config.window is not None:
            row_off, col_off, height, width = config.window
            if row_off + height > pred_src.height or col_off + width > pred_src.width:
                raise ConfigError(f"window {config.window} exceeds the "
                                  f"{pred_src.height} x {pred_src.width} (height x width) raster",
                                  params=("window",))
        else:
            row_off, col_off, height, width = 0, 0, pred_src.height, pred_src.width
        cm = np.zeros((n, n), dtype=np.int64)
        step = config.block_size
        for row in range(row_off, row_off + height, step):
            for col in range(col_off, col_off + width, step):
                win = Window(col, row, min(step, col_off + width - col),
                             min(step, row_off + height - row))
                cm += _score_window(pred_src, label_src, win, lookup, n, config)
    if not cm.any():
        where = f" in window {config.window}" if config.window is not None else ""
        raise InputError(f"{config.labels}: no pixel{where} is valid in both rasters (the labels"
                         " or the mask are nodata everywhere); nothing to score",
                         params=("window",))
    metrics = compute_metrics(cm)
    logger.info("evaluated %s: mIoU %.4f", counted(metrics.pixels, "pixel"), metrics.mean_iou)
    return EvaluationReport(config.predicted, config.labels, tuple(names), metrics)


def _score_window(pred_src: Any, label_src: Any, win: Window, lookup: dict[int, int], n: int,
                  config: EvaluateConfig) -> np.ndarray:
    pred = pred_src.read(1, window=win)
    valid = pred_src.read_masks(1, window=win) > 0
    raw = label_src.read(1, window=win)
    valid &= label_src.read_masks(1, window=win) > 0
    if raw.dtype.kind == "f":
        valid &= np.isfinite(raw)
    ref = np.full(raw.shape, -1, dtype=np.int64)
    for value, cid in lookup.items():
        ref[raw == value] = cid
    unknown = valid & (ref < 0)
    if unknown.any():
        vals = np.unique(raw[unknown])[:5].tolist()
        raise InputError(
            f"{config.labels}: label values {vals} match no class (label values {list(lookup)});"
            " pass label_values, or set those pixels to the label nodata",
            params=("label_values",)
        )
    beyond = valid & ((pred < 0) | (pred >= n))
    if beyond.any():
        vals = np.unique(pred[beyond])[:5].tolist()
        raise InputError(
            f"{config.predicted}: class ids {vals} are beyond the {n} classes; pass the model's "
            "classes with class_names or num_classes", params=("class_names", "num_classes")
        )
    return confusion_matrix(ref, pred, n, valid=valid)
