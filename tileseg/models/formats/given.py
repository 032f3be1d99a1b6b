"""What a model's description says about it, whichever file says it.

A model's facts come from its network (input bands and output channels, read from the weights
or the ONNX graph) and from a description beside it: ``tileseg.json`` or a STAC MLM item. Each
fact a description leaves out keeps tileseg's default (numbered classes, the dtype's scaling,
with the warnings they always had); each it gives is checked against the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tileseg.errors import ModelError
from tileseg.models.loaded import mask_classes, warn_once, with_scaling
from tileseg.models.metadata import (
    METADATA_FILENAME,
    ClassInfo,
    ModelMetadata,
    Normalization,
    default_color,
    read_metadata_json,
    scaling_words,
)
from tileseg.text import counted

logger = logging.getLogger(__name__)

# keys of tileseg.json's "network" section that are not smp keyword arguments
NETWORK_KEYS = ("architecture", "encoder_name", "in_channels", "classes", "input_multiple")


@dataclass(frozen=True)
class Given:
    """Facts a description gives; ``None`` (or empty) where it says nothing."""

    source: str = ""  # the file that says them; "" when there is none
    kind: str = "tileseg.json"  # how messages name that file
    classes: tuple[ClassInfo, ...] | None = None
    in_channels: int | None = None
    bands: tuple[str, ...] = ()
    dtype: str | None = None
    normalization: Normalization | None = None  # None: none given, tileseg guesses
    description: str = ""
    gsd: float | None = None
    tile_size: int | None = None
    network: dict[str, Any] = field(default_factory=dict)  # architecture, encoder_name, kwargs
    input_multiple: int | None = None
    input_size: int | None = None  # the one network input size the description declares

    def __post_init__(self) -> None:
        for name in ("input_multiple", "input_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ModelError(f"{self.source}: {name} {value!r} must be a positive integer")


def read_sidecar(folder: Path) -> Given:
    """The ``tileseg.json`` in ``folder``; an empty :class:`Given` when there is none.

    Besides the metadata :func:`tileseg.models.metadata.save_metadata` writes, it may name the network
    of plain weights or an ONNX file: ``"network": {"architecture": "Unet", "encoder_name":
    "resnet34", "input_multiple": 32}`` (other keys are smp keyword arguments).
    """
    path = folder / METADATA_FILENAME
    data = read_metadata_json(path)
    if data is None:
        return Given()
    network = data.get("network", {})
    if not isinstance(network, dict):
        raise ModelError(f"{path}: \"network\" must be an object such as {{\"architecture\": "
                         "\"Unet\", \"encoder_name\": \"resnet34\"}; fix or remove it")
    network = dict(network)
    multiple = network.pop("input_multiple", None)
    given = Given(source=str(path), network=network, input_multiple=multiple,
                  tile_size=_int_or_none(data.get("tile_size"), path))
    if "classes" not in data:  # a network section only
        return given
    meta = ModelMetadata.from_json(data, source=str(path))
    return replace(given, classes=meta.classes, in_channels=meta.in_channels, bands=meta.bands,
                   dtype=meta.dtype,
                   normalization=None if meta.guessed_scaling else meta.normalization,
                   description=meta.description, gsd=meta.gsd, tile_size=meta.tile_size)


def _int_or_none(value: Any, path: Path) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ModelError(f"{path}: tile_size {value!r} is not an integer; fix or remove it") from None


def checked_metadata(given: Given, *, model_source: str, outputs: int, in_channels: int,
                     raster_dtype: str | None) -> ModelMetadata:
    """The model's metadata: the description's facts, checked against the network's
    ``outputs`` channels and ``in_channels``; numbered classes and guessed scaling (with their
    warnings) where it gives none."""
    classes = mask_classes(outputs)
    where = given.source
    if given.classes is None:
        if not where:
            warn_once(
                logger, str(Path(model_source).resolve()),
                "%s has no tileseg.json: classes are numbered and the input is scaled by a guess "
                "(%s); add metadata (tileseg.models.metadata.save_metadata) for real class names and "
                "normalization", model_source, scaling_words(raster_dtype))
            return ModelMetadata.default(classes, in_channels, raster_dtype)
        warn_once(logger, where, "%s names no classes: they are numbered (class_0, class_1, ...)",
                  where)
        numbered = tuple(ClassInfo(i, f"class_{i}", default_color(i)) for i in range(classes))
        given = replace(given, classes=numbered)
    assert given.classes is not None
    if outputs == 1 and len(given.classes) == 1:
        raise ModelError(
            f"{model_source}: the model has one output (a binary model, thresholded at sigmoid "
            f"0.5) but {given.kind} names one class; name two in {given.kind}: below 0.5, then "
            "above (e.g. background, building)")
    if len(given.classes) != classes or given.in_channels not in (None, in_channels):
        said = (f"{counted(len(given.classes), 'class')}/"
                f"{counted(given.in_channels or in_channels, 'band')}")
        raise ModelError(f"{model_source}: {given.kind} says {said} but the weights have "
                         f"{classes}/{in_channels}; fix {given.kind}")
    if given.bands and len(given.bands) != in_channels:
        raise ModelError(f"{model_source}: {given.kind} names {counted(len(given.bands), 'band')} "
                         f"but the network takes {in_channels}; fix {given.kind}")
    metadata = ModelMetadata(
        classes=given.classes, in_channels=in_channels, bands=given.bands, dtype=given.dtype,
        normalization=given.normalization or Normalization(), gsd=given.gsd,
        description=given.description, tile_size=given.tile_size or 513,
        is_default=not given.source, guessed_scaling=given.normalization is None)
    why = f"{given.kind} gives no normalization"
    return with_scaling(metadata, model_source, raster_dtype, why)
