"""Loading a model from what the user points at, its format read from the content."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tileseg.errors import InputNotFoundError, ModelError
from tileseg.models.formats import files as fmt_files
from tileseg.models.formats import torchgeo
from tileseg.models.formats.given import Given, checked_metadata, read_sidecar
from tileseg.models.formats.network import (
    LoadOptions,
    build_with_weights,
    load_strict,
    named_network,
    read_config,
    spec_for_state,
    spec_from_config,
    with_overrides,
)
from tileseg.models.loaded import LoadedModel, ModelSpec, _divisor, fixed_input_size
from tileseg.models.metadata import unreadable

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
FORMATS = ("smp", "torchgeo", "weights", "onnx")
HINT = ("give a model: an smp folder (save_pretrained), a TorchGeo .ckpt, a .pt/.pth/"
        ".safetensors state dict, an .onnx file or a STAC MLM item (.json)")


def load_any(path: Path, options: LoadOptions) -> LoadedModel:
    """Load the model at ``path`` (see :func:`tileseg.models.loaded.load_model`)."""
    try:
        found, folder = path.exists(), path.is_dir()
        # listed, not only looked up by name: the run fingerprints and ships every file of it
        names = sorted(os.listdir(path)) if folder else []
    except OSError as exc:  # e.g. a folder without read or search permission
        raise unreadable(path, exc) from exc
    if not found:
        raise InputNotFoundError(f"{path}: not found; {HINT}")
    if folder:
        return _load_folder(path, names, options)
    kind = fmt_files.sniff(path)
    if kind == "json":
        return _load_item(path, options)
    return _load_file(path, kind, read_sidecar(path.parent), options, item=None)


def _load_folder(path: Path, names: list[str], options: LoadOptions,
                 item: Path | None = None, described: Given | None = None) -> LoadedModel:
    given = described if described is not None else read_sidecar(path)
    files = ((str(item),) if item else ()) + tuple(str(path / n) for n in names
                                                   if (path / n).is_file())
    # by name: a folder called config.json is a config that cannot be read, not a missing one
    weights = next((path / n for n in WEIGHT_FILES if n in names), None)
    if "config.json" in names:
        spec = with_overrides(spec_from_config(read_config(path), path / "config.json"), options)
        if weights is None:
            raise ModelError(f"{path}: no model.safetensors in the directory; save with "
                             "save_pretrained")
        state = fmt_files.read_state_dict(weights)
        module = build_with_weights(spec, state, str(path), str(weights))
        return _finish(path, module, spec, given, options, "smp", files,
                       {"architecture": "config.json"}, item=item)
    if weights is None:
        raise ModelError(f"{path}: no model.safetensors in the directory; save with save_pretrained")
    return _load_weights(weights, fmt_files.read_state_dict(weights), given, options, files,
                         item=item, source=path)


def _load_file(path: Path, kind: str, given: Given, options: LoadOptions,
               item: Path | None) -> LoadedModel:
    sidecar = () if not given.source or item is not None else (given.source,)
    files = (*((str(item),) if item else ()), str(path), *sidecar)
    if kind == "onnx":
        return _load_onnx(path, given, options, files, item)
    if kind == "safetensors":
        return _load_weights(path, fmt_files.read_safetensors(path), given, options, files, item)
    content = fmt_files.read_torch(path)
    if torchgeo.is_lightning_checkpoint(content):
        hparams, state = content["hyper_parameters"], content["state_dict"]
        if torchgeo.is_segmentation_task(hparams):
            return _load_torchgeo(path, hparams, state, given, options, files, item)
        raise ModelError(f"{path}: a Lightning checkpoint, but not of TorchGeo's "
                         "SemanticSegmentationTask (its hyper_parameters name no model and "
                         "backbone); save the network's state dict and name its architecture")
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not fmt_files.is_state_dict(content):
        raise ModelError(f"{path}: neither a state dict of tensors nor a TorchGeo checkpoint; "
                         "save model.state_dict() with torch.save")
    return _load_weights(path, content, given, options, files, item)


def _load_torchgeo(path: Path, hparams: dict[str, Any], state: dict[str, Any], given: Given,
                   options: LoadOptions, files: tuple[str, ...], item: Path | None) -> LoadedModel:
    where = str(path)
    weights = torchgeo.network_weights(state, where)
    spec = torchgeo.task_spec(hparams, where)
    origin = {"architecture": f"{path.name}: hyper_parameters (TorchGeo SemanticSegmentationTask)",
              "weights": f"{path.name}: state_dict, model.*"}
    if spec is None:  # TorchGeo's FCN
        module = torchgeo.build_fcn(hparams, where)
        load_strict(module, weights, "TorchGeo FCN", where)
        return _finish(path, module, None, given, options, "torchgeo", files, origin, item=item,
                       architecture="FCN (TorchGeo)")
    spec = with_overrides(spec, options)
    module = build_with_weights(spec, weights, where, where)
    return _finish(path, module, spec, given, options, "torchgeo", files, origin, item=item)


def _load_weights(path: Path, state: dict[str, torch.Tensor], given: Given, options: LoadOptions,
                  files: tuple[str, ...], item: Path | None,
                  source: Path | None = None) -> LoadedModel:
    where = str(source or path)
    if options.spec is not None:
        spec, said = options.spec, "the spec given"
    else:
        named = named_network(given.network, options, where)
        if named is None:
            raise ModelError(
                f"{where}: plain weights need their network: give architecture and encoder_name "
                "(e.g. Unet and resnet34), or name both in the \"network\" object of a "
                "tileseg.json beside the weights", params=("architecture", "encoder_name"))
        architecture, encoder, extra = named
        spec = spec_for_state(architecture, encoder, extra, state, where)
        said = ("options" if options.architecture or options.encoder_name
                else given.source or "options")
    spec = with_overrides(spec, options)
    module = build_with_weights(spec, state, where, str(path))
    origin = {"architecture": said, "bands and outputs": f"{path.name}: tensor shapes"}
    return _finish(source or path, module, spec, given, options, "weights", files, origin,
                   item=item)


def _load_onnx(path: Path, given: Given, options: LoadOptions, files: tuple[str, ...],
               item: Path | None) -> LoadedModel:
    from tileseg.models.formats.onnxfile import OnnxNetwork, inspect_onnx, network_size

    where = str(item or path)
    if options.spec is not None or options.architecture or options.encoder_name:
        raise ModelError(f"{path}: an ONNX model carries its network; drop architecture and "
                         "encoder_name", params=("architecture", "encoder_name"))
    if options.encoder_output_stride is not None or options.decoder_atrous_rates is not None:
        raise ModelError(f"{path}: an ONNX model runs as it was exported; drop "
                         "encoder_output_stride and decoder_atrous_rates",
                         params=("encoder_output_stride", "decoder_atrous_rates"))
    signature = inspect_onnx(path)
    multiple, size, said = network_size(signature, given.input_multiple, given.input_size, where,
                                        Path(given.source).name or "the description")
    in_channels = signature.channels or given.in_channels
    outputs = signature.outputs or (len(given.classes) if given.classes else None)
    if in_channels is None or outputs is None:
        what = "input bands" if in_channels is None else "classes"
        raise ModelError(f"{path}: the ONNX graph leaves its {what} dynamic and no tileseg.json "
                         f"or MLM item beside it names them; add one naming the {what}")
    metadata = checked_metadata(given, model_source=where, outputs=outputs,
                                in_channels=in_channels, raster_dtype=options.raster_dtype)
    if given.tile_size is None and size is not None:
        metadata = replace(metadata, tile_size=size)
    origin = {"network": f"{path.name}: ONNX graph (input {signature.input_name}, output "
                         f"{signature.output_name})", "input multiple": said,
              **_metadata_origin(given)}
    return LoadedModel(
        module=OnnxNetwork(path, signature), metadata=metadata, source=where,
        architecture=str(given.network.get("architecture") or "ONNX graph"), divisor=multiple,
        format="onnx", input_size=size, files=files, onnx_path=str(path),
        item=str(item) if item else None, origin=origin)


def _load_item(path: Path, options: LoadOptions) -> LoadedModel:
    from tileseg.models.formats.mlm import ARTIFACT_KINDS, is_mlm_item, read_item

    data = fmt_files.read_json(path, "the model's STAC item")
    if not is_mlm_item(data):
        raise ModelError(f"{path}: JSON, but not a STAC item using the Machine Learning Model "
                         f"extension (no mlm: properties); {HINT}")
    given, artifact, artifact_type = read_item(data, path)
    try:
        found, folder = artifact.is_file(), artifact.is_dir()
        names = sorted(os.listdir(artifact)) if folder else []
    except OSError as exc:
        raise unreadable(artifact, exc) from exc
    if folder:  # an smp folder (save_pretrained), described by the item
        return _load_folder(artifact, names, options, item=path, described=given)
    if not found:
        raise ModelError(f"{path}: its model artifact {artifact} is not there; fix the asset's "
                         "href or copy the file beside the item")
    kind = fmt_files.sniff(artifact)
    if kind == "json":
        raise ModelError(f"{path}: its model artifact {artifact} is JSON, not a model file")
    expected = ARTIFACT_KINDS.get(artifact_type or "", (kind,))
    if kind not in expected:
        raise ModelError(f"{path}: mlm:artifact_type {artifact_type} but {artifact} is a {kind} "
                         "file; fix the item")
    return _load_file(artifact, kind, given, options, item=path)


def _finish(path: Path, module: nn.Module, spec: ModelSpec | None, given: Given,
            options: LoadOptions, fmt: str, files: tuple[str, ...], origin: dict[str, str],
            *, item: Path | None = None, architecture: str | None = None) -> LoadedModel:
    """The loaded torch network with its metadata, checked against it."""
    from tileseg.models.loaded import _infer_classes_and_channels

    module.eval()
    if spec is not None:
        outputs, in_channels = spec.classes, spec.in_channels
    else:
        outputs, in_channels = _infer_classes_and_channels(module)
    where = str(item or path)
    metadata = checked_metadata(given, model_source=where, outputs=outputs,
                                in_channels=in_channels, raster_dtype=options.raster_dtype)
    divisor = given.input_multiple or _divisor(module)
    notes = dict(origin)
    if given.input_size is not None and fixed_input_size(module) is None:
        # a torch network runs at any multiple of its stride: more context than the tiles it
        # was trained on, which is what the declared size usually is
        notes["input size"] = (f"{Path(given.source).name} declares {given.input_size} px (the "
                               f"size it was trained on); the network runs at any multiple of "
                               f"{divisor}")
    origin = notes
    return LoadedModel(
        module=module, metadata=metadata, source=where,
        architecture=architecture or (spec.architecture if spec else type(module).__name__),
        divisor=divisor, format=fmt, input_size=fixed_input_size(module), files=files,
        spec=spec, item=str(item) if item else None,
        origin={**origin, **_metadata_origin(given)})


def _metadata_origin(given: Given) -> dict[str, str]:
    if not given.source:
        return {"classes": "numbered (no tileseg.json)", "normalization": "guessed from the dtype"}
    name = Path(given.source).name
    return {"classes": name if given.classes else "numbered (not given)",
            "normalization": name if given.normalization else "guessed from the dtype"}
