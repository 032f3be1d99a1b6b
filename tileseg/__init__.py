"""tileseg: seam-free semantic segmentation of huge geospatial rasters.

The public Python API, loaded lazily so that ``import tileseg`` stays light (no torch, no
rasterio until a function needs them)::

    import tileseg

    result = tileseg.predict(tileseg.PredictConfig("scene.tif", "scene.mask.tif"))
    polygons = tileseg.vectorize(result.dst, "scene.gpkg")

Functions: :func:`predict`, :func:`vectorize`, :func:`evaluate`, :func:`train`,
:func:`run_batch`, :func:`load_model`; their configuration types, results and errors. The
modules behind them (``tileseg.pipeline``, ``tileseg.vectorization``, ``tileseg.evaluation``,
``tileseg.training``, ``tileseg.batch``, ``tileseg.models``) hold the rest; docs/architecture.md
maps the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tileseg._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "predict": "tileseg.pipeline",
    "PredictResult": "tileseg.pipeline",
    "PredictConfig": "tileseg.config",
    "vectorize": "tileseg.vectorization",
    "VectorizeConfig": "tileseg.vectorization",
    "VectorizeResult": "tileseg.vectorization",
    "evaluate": "tileseg.evaluation",
    "EvaluateConfig": "tileseg.evaluation",
    "EvaluationReport": "tileseg.evaluation",
    "train": "tileseg.training",
    "TrainConfig": "tileseg.training",
    "TrainSource": "tileseg.training",
    "Holdout": "tileseg.training",
    "TrainResult": "tileseg.training",
    "run_batch": "tileseg.batch",
    "load_manifest": "tileseg.batch",
    "BatchConfig": "tileseg.batch",
    "BatchResult": "tileseg.batch",
    "load_model": "tileseg.models.formats",
    "LoadedModel": "tileseg.models.loaded",
    "TilesegError": "tileseg.errors",
    "InputError": "tileseg.errors",
    "InputNotFoundError": "tileseg.errors",
    "ModelError": "tileseg.errors",
    "OutputError": "tileseg.errors",
    "ConfigError": "tileseg.errors",
    "RunError": "tileseg.errors",
    "DestinationBusyError": "tileseg.errors",
    "DependencyError": "tileseg.errors",
}

__all__ = [
    "__version__",
    "BatchConfig",
    "BatchResult",
    "ConfigError",
    "DependencyError",
    "DestinationBusyError",
    "EvaluateConfig",
    "EvaluationReport",
    "Holdout",
    "InputError",
    "InputNotFoundError",
    "LoadedModel",
    "ModelError",
    "OutputError",
    "PredictConfig",
    "PredictResult",
    "RunError",
    "TilesegError",
    "TrainConfig",
    "TrainResult",
    "TrainSource",
    "VectorizeConfig",
    "VectorizeResult",
    "evaluate",
    "load_manifest",
    "load_model",
    "predict",
    "run_batch",
    "train",
    "vectorize",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads on use
    from tileseg.batch import BatchConfig, BatchResult, load_manifest, run_batch
    from tileseg.config import PredictConfig
    from tileseg.errors import (
        ConfigError,
        DependencyError,
        DestinationBusyError,
        InputError,
        InputNotFoundError,
        ModelError,
        OutputError,
        RunError,
        TilesegError,
    )
    from tileseg.evaluation import EvaluateConfig, EvaluationReport, evaluate
    from tileseg.models.formats import load_model
    from tileseg.models.loaded import LoadedModel
    from tileseg.pipeline import PredictResult, predict
    from tileseg.training import Holdout, TrainConfig, TrainResult, TrainSource, train
    from tileseg.vectorization import VectorizeConfig, VectorizeResult, vectorize


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tileseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
