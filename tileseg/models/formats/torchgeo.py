"""TorchGeo ``SemanticSegmentationTask`` checkpoints.

A task saved by Lightning (``trainer.save_checkpoint`` or its ``ModelCheckpoint`` callback)
holds the task's ``hyper_parameters`` (``model``, ``backbone``, ``in_channels``, ``task``,
``num_classes``/``num_labels``, ...: the arguments of ``SemanticSegmentationTask``) and its
``state_dict``, where the network's weights are under ``model.``. The network is the smp model
TorchGeo builds from those hyper-parameters (its ``fcn`` is TorchGeo's own, built by TorchGeo
when it is installed). Older TorchGeo releases (before 0.4) named them ``segmentation_model``
and ``encoder_name``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tileseg.errors import DependencyError, ModelError
from tileseg.models.loaded import ModelSpec

logger = logging.getLogger(__name__)

# TorchGeo's model names -> smp classes (as SemanticSegmentationTask.configure_models builds)
MODELS = {"unet": "Unet", "deeplabv3+": "DeepLabV3Plus", "upernet": "UPerNet",
          "segformer": "Segformer", "dpt": "DPT", "fcn": "FCN"}
PREFIX = "model."


def is_lightning_checkpoint(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("state_dict"), dict)
            and isinstance(value.get("hyper_parameters"), dict))


def is_segmentation_task(hparams: dict[str, Any]) -> bool:
    """Whether a Lightning checkpoint's hyper-parameters are a SemanticSegmentationTask's."""
    if "num_outputs" in hparams:  # PixelwiseRegressionTask has model and backbone too
        return False
    named = ("model" in hparams and "backbone" in hparams) or "segmentation_model" in hparams
    return named and any(k in hparams for k in ("num_classes", "num_labels", "task"))


def task_network(hparams: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """The smp architecture and its arguments the task's hyper-parameters describe, as
    TorchGeo's ``configure_models`` reads them."""
    name = str(hparams.get("model", hparams.get("segmentation_model", "unet"))).lower()
    if name not in MODELS:
        raise ModelError(f"{where}: TorchGeo model {name!r} is not one tileseg builds; it builds "
                         f"{', '.join(MODELS)}")
    task = hparams.get("task", "multiclass")
    if task == "multilabel":
        raise ModelError(f"{where}: a multilabel task gives each pixel several labels at once; "
                         "tileseg writes one class a pixel: train with task multiclass or binary")
    try:
        in_channels = int(hparams.get("in_channels", 3))
        classes = int(hparams.get("num_classes") or hparams.get("num_labels") or 1)
        backbone = str(hparams.get("backbone", hparams.get("encoder_name", "resnet50")))
        filters = int(hparams.get("num_filters", 64))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: hyper_parameters are not TorchGeo's ({exc})") from exc
    return MODELS[name], {"encoder_name": backbone, "in_channels": in_channels,
                          "classes": classes, "num_filters": filters}


def task_spec(hparams: dict[str, Any], where: str) -> ModelSpec | None:
    """The smp :class:`ModelSpec` of the task's network; None for TorchGeo's FCN."""
    architecture, args = task_network(hparams, where)
    if architecture == "FCN":
        return None
    try:
        return ModelSpec(architecture, args["encoder_name"], in_channels=args["in_channels"],
                         classes=args["classes"])
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from exc


def build_fcn(hparams: dict[str, Any], where: str) -> nn.Module:
    """TorchGeo's own five-layer FCN, built by TorchGeo (tileseg has no copy of it)."""
    _, args = task_network(hparams, where)
    try:
        from torchgeo.models import FCN
    except ImportError as exc:
        raise DependencyError(f"{where}: its network is TorchGeo's FCN, which needs TorchGeo: "
                              "pip install torchgeo") from exc
    module: nn.Module = FCN(in_channels=args["in_channels"], classes=args["classes"],
                            num_filters=args["num_filters"])
    return module


def network_weights(state: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The network's tensors of the task's state dict (``model.*``, prefix removed); the
    loss's and metrics' tensors are the task's, not the network's."""
    out = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise ModelError(f"{where}: its state_dict holds no network weights under 'model.'; "
                         "it is not a SemanticSegmentationTask checkpoint")
    return out
