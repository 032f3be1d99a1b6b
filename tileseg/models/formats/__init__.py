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
:func:`load_model` reads any of them (``tileseg.load_model``).
"""

from __future__ import annotations

from pathlib import Path

from tileseg.models.formats.load import FORMATS, load_any
from tileseg.models.formats.network import LoadOptions
from tileseg.models.loaded import LoadedModel, ModelSpec

__all__ = ["FORMATS", "LoadOptions", "load_any", "load_model"]


def load_model(
    path: str | Path,
    *,
    spec: ModelSpec | None = None,
    encoder_output_stride: int | None = None,
    decoder_atrous_rates: tuple[int, ...] | None = None,
    raster_dtype: str | None = None,
    architecture: str | None = None,
    encoder_name: str | None = None,
) -> LoadedModel:
    """Load a model in eval mode on the CPU, whatever form the user holds it in.

    Parameters
    ----------
    path
        What the format is, is read from the content (see :mod:`tileseg.models.formats`): a
        directory written by ``model.save_pretrained(dir)`` (optionally with ``tileseg.json``);
        a TorchGeo ``SemanticSegmentationTask`` checkpoint (``.ckpt``); plain weights (a
        ``.pt``/``.pth``/``.safetensors`` state dict) with the architecture in a ``tileseg.json``
        beside it, in ``spec`` or in ``architecture``/``encoder_name``; an ONNX file with a
        ``tileseg.json`` or STAC MLM item beside it; or a STAC item using the Machine Learning
        Model extension that points at any of these.
    encoder_output_stride, decoder_atrous_rates
        Run a DeepLab model at another output stride or with other atrous rates than it was
        saved with (the weights do not change shape).
    raster_dtype
        Used only to choose default normalization when the model has no metadata.
    architecture, encoder_name
        The network of plain weights, when no ``tileseg.json`` beside them names it.

    Examples
    --------
    >>> model = load_model("models/landcover")          # doctest: +SKIP
    >>> model.metadata.class_names                       # doctest: +SKIP
    >>> load_model("epoch=9.ckpt").format                # doctest: +SKIP
    'torchgeo'
    """
    options = LoadOptions(spec=spec, encoder_output_stride=encoder_output_stride,
                          decoder_atrous_rates=decoder_atrous_rates, raster_dtype=raster_dtype,
                          architecture=architecture, encoder_name=encoder_name)
    return load_any(Path(path), options)

