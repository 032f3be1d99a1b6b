"""Models as users hold them, each read from its content and run with the same guarantees.

========== ==============================================================================
format     what it is, and where tileseg reads each fact
========== ==============================================================================
smp        a ``save_pretrained`` folder: ``config.json`` (network), ``model.safetensors``,
           ``tileseg.json`` (classes, bands, normalization)
torchgeo   a TorchGeo ``SemanticSegmentationTask`` checkpoint (``.ckpt``, Lightning): the
           network from its ``hyper_parameters``, weights from ``state_dict`` (``model.*``)
weights    a plain state dict (``.pt``, ``.pth``, ``.safetensors``): the network named in a
           ``tileseg.json`` beside it (``"network"``) or by options; bands and outputs from
           the tensors' shapes
onnx       an ONNX file from any framework, run by ONNX Runtime as it is
mlm        a STAC item using the Machine Learning Model extension that points at any of the
           above (:mod:`tileseg.models.formats.mlm`)
========== ==============================================================================

Loading never executes code from a file: ``torch.load(weights_only=True)`` (tensors, numbers,
strings, lists, dicts), safetensors, JSON, and ONNX graphs. What else a description leaves out
keeps tileseg's defaults (numbered classes, the dtype's scaling) and their warnings.
"""

from __future__ import annotations

from tileseg.models.formats.load import FORMATS, load_any
from tileseg.models.formats.network import LoadOptions

__all__ = ["FORMATS", "LoadOptions", "load_any"]
