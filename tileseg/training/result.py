"""What a training run produced (shared by the loop that makes it and the card that shows it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tileseg.metrics import SegmentationMetrics


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: the model directory and the holdout metrics of its best epoch."""

    out_dir: str
    best_epoch: int
    metrics: SegmentationMetrics
    history: tuple[dict[str, float], ...]
    seconds: float
    device: str
    train_pixels: int
    val_pixels: int
    recipe: dict[str, Any] = field(default_factory=dict)
