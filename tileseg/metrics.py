"""Segmentation metrics from a confusion matrix.

``confusion[i, j]`` counts pixels whose reference class is ``i`` and predicted class is ``j``.
The four summary metrics are those of Long et al. (FCN) used across the DeepLab literature:

- pixel accuracy          ``sum_i n_ii / sum_i t_i``
- mean class accuracy     ``(1/n_cl) sum_i n_ii / t_i``
- mean IoU                ``(1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
- frequency-weighted IoU  ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

where ``t_i`` is the number of reference pixels of class ``i``. Classes absent from both the
reference and the prediction have no defined IoU; they are reported as ``None`` and left out of
the means (``n_cl`` counts the classes present in the reference for class accuracy, and the
classes present in the reference or the prediction for IoU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, num_classes: int,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Count ``(reference, predicted)`` pairs; pixels outside ``0..num_classes-1`` are skipped.

    Examples
    --------
    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    ref = np.asarray(reference).ravel().astype(np.int64)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    keep = (ref >= 0) & (ref < num_classes) & (pred >= 0) & (pred < num_classes)
    if valid is not None:
        keep &= np.asarray(valid).ravel().astype(bool)
    idx = ref[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Summary metrics of a confusion matrix (see the module docstring for the formulas)."""

    pixel_accuracy: float
    mean_class_accuracy: float
    mean_iou: float
    frequency_weighted_iou: float
    class_iou: tuple[float | None, ...]
    class_accuracy: tuple[float | None, ...]
    confusion: tuple[tuple[int, ...], ...]
    pixels: int

    def to_json(self, class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
        names = class_names or tuple(f"class_{i}" for i in range(len(self.class_iou)))
        return {
            "pixels": self.pixels,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "mean_iou": self.mean_iou,
            "frequency_weighted_iou": self.frequency_weighted_iou,
            "classes": [
                {"id": i, "name": names[i], "iou": iou, "accuracy": acc,
                 "reference_pixels": int(sum(self.confusion[i])),
                 "predicted_pixels": int(sum(row[i] for row in self.confusion))}
                for i, (iou, acc) in enumerate(zip(self.class_iou, self.class_accuracy,
                                                   strict=True))
            ],
            "confusion_matrix": [list(row) for row in self.confusion],
        }


def compute_metrics(confusion: np.ndarray) -> SegmentationMetrics:
    """Pixel accuracy, mean class accuracy, mean IoU, frequency-weighted IoU, per-class IoU.

    Examples
    --------
    >>> m = compute_metrics(np.array([[3, 1], [0, 4]]))
    >>> round(m.pixel_accuracy, 3), round(m.mean_iou, 3)
    (0.875, 0.775)
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError("the confusion matrix must be square")
    total = cm.sum()
    diag = np.diag(cm)
    ref = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    union = ref + pred - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, diag / union, np.nan)
        acc = np.where(ref > 0, diag / ref, np.nan)
    present_iou = union > 0
    present_ref = ref > 0
    pixel_acc = float(diag.sum() / total) if total else 0.0
    mean_acc = float(acc[present_ref].mean()) if present_ref.any() else 0.0
    miou = float(iou[present_iou].mean()) if present_iou.any() else 0.0
    fwiou = float((ref[present_iou] * iou[present_iou]).sum() / total) if total else 0.0
    return SegmentationMetrics(
        pixel_accuracy=pixel_acc,
        mean_class_accuracy=mean_acc,
        mean_iou=miou,
        frequency_weighted_iou=fwiou,
        class_iou=tuple(None if np.isnan(v) else float(v) for v in iou),
        class_accuracy=tuple(None if np.isnan(v) else float(v) for v in acc),
        confusion=tuple(tuple(int(v) for v in row) for row in np.asarray(confusion)),
        pixels=int(total),
    )


def format_table(metrics: SegmentationMetrics, class_names: tuple[str, ...] | None = None) -> str:
    """A plain-text report: summary metrics, per-class IoU/accuracy and the confusion matrix."""
    n = len(metrics.class_iou)
    names = class_names or tuple(f"class_{i}" for i in range(n))
    width = max(8, *(len(s) for s in names))
    lines = [
        f"pixels                  {metrics.pixels}",
        f"pixel accuracy          {metrics.pixel_accuracy:.4f}",
        f"mean class accuracy     {metrics.mean_class_accuracy:.4f}",
        f"mean IoU                {metrics.mean_iou:.4f}",
        f"frequency-weighted IoU  {metrics.frequency_weighted_iou:.4f}",
        "",
        f"{'id':>3}  {'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'ref px':>10}",
    ]

    def fmt(v: float | None) -> str:
        return "      -" if v is None else f"{v:7.4f}"

    for i in range(n):
        lines.append(f"{i:>3}  {names[i]:<{width}}  {fmt(metrics.class_iou[i])}  "
                     f"{fmt(metrics.class_accuracy[i])}  {sum(metrics.confusion[i]):>10}")
    cell = max(6, len(str(max((max(r) for r in metrics.confusion), default=0))) + 1)
    lines += ["", "confusion matrix (rows: reference, columns: predicted)",
              " " * 5 + "".join(f"{j:>{cell}}" for j in range(n))]
    for i, row in enumerate(metrics.confusion):
        lines.append(f"{i:>5}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
