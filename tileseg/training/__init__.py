"""Training: ``train(TrainConfig(...))`` writes a model directory that ``predict`` loads.

Modules: :mod:`~tileseg.training.config` (frozen configuration), :mod:`~tileseg.training.data`
(aligned sources, window-read random crops, holdout regions), :mod:`~tileseg.training.encoders`
(pretrained EfficientNet-Lite0 from a file), :mod:`~tileseg.training.loop` (the loop) and
:mod:`~tileseg.training.card` (the model card).
"""

from tileseg.training.card import write_model_card
from tileseg.training.config import IGNORE_INDEX, Holdout, TrainConfig, TrainSource
from tileseg.training.loop import TrainEvent, train
from tileseg.training.result import TrainResult

__all__ = [
    "IGNORE_INDEX",
    "Holdout",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainSource",
    "train",
    "write_model_card",
]
