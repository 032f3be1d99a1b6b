"""Training: ``train(TrainConfig(...))`` writes a model directory that ``predict`` loads.

Modules: :mod:`~tileseg.train.config` (frozen configuration), :mod:`~tileseg.train.data`
(aligned sources, window-read random crops, holdout regions), :mod:`~tileseg.train.encoders`
(pretrained EfficientNet-Lite0 from a file), :mod:`~tileseg.train.loop` (the loop) and
:mod:`~tileseg.train.card` (the model card).
"""

from tileseg.train.card import write_model_card
from tileseg.train.config import IGNORE_INDEX, Holdout, TrainConfig, TrainSource
from tileseg.train.loop import TrainEvent, train
from tileseg.train.result import TrainResult

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
