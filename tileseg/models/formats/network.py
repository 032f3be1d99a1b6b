"""smp networks from what describes them: ``config.json``, a ``network`` section, options or a
TorchGeo task's hyper-parameters; and weights loaded into them strictly."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tileseg.errors import ModelError
from tileseg.models.loaded import DEEPLAB, ModelSpec, build_model, canonical_architecture
from tileseg.models.metadata import read_json_file

logger = logging.getLogger(__name__)

_SPEC_KEYS = {"encoder_name", "in_channels", "classes", "encoder_output_stride",
              "decoder_atrous_rates"}


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model, beyond its files (see :func:`tileseg.models.loaded.load_model`)."""

    spec: ModelSpec | None = None  # the network of plain weights, built by the caller's hand
    encoder_output_stride: int | None = None
    decoder_atrous_rates: tuple[int, ...] | None = None
    raster_dtype: str | None = None
    architecture: str | None = None  # the network of plain weights, by name
    encoder_name: str | None = None


def read_config(directory: Path) -> dict[str, Any]:
    """smp's ``config.json`` of a ``save_pretrained`` folder."""
    config_path = directory / "config.json"
    config = read_json_file(config_path, "re-save the model")
    if not isinstance(config, dict) or "_model_class" not in config:
        raise ModelError(
            f"{config_path}: not an smp config (no _model_class); save the model with "
            "model.save_pretrained(dir)"
        )
    return config


def spec_from_config(config: dict[str, Any], config_path: Path) -> ModelSpec:
    """The :class:`ModelSpec` smp's ``config.json`` describes; a :class:`ModelError` naming the
    file for anything missing or malformed."""
    try:
        rates = config.get("decoder_atrous_rates")
        return ModelSpec(
            architecture=canonical_architecture(str(config["_model_class"])),
            encoder_name=str(config["encoder_name"]),
            in_channels=int(config.get("in_channels", 3)),
            classes=int(config.get("classes", 1)),
            encoder_output_stride=config.get("encoder_output_stride"),
            decoder_atrous_rates=None if rates is None else tuple(int(r) for r in rates),
            extra={k: v for k, v in config.items()
                   if k not in _SPEC_KEYS and k != "encoder_weights" and not k.startswith("_")},
        )
    except ModelError as exc:
        raise ModelError(f"{config_path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{config_path}: invalid smp config ({type(exc).__name__}: {exc}); "
                         "re-save the model with model.save_pretrained(dir)") from exc


def spec_config(spec: ModelSpec) -> dict[str, Any]:
    """``spec`` as the keyword arguments that rebuild it (an MLM item's hyper-parameters)."""
    out: dict[str, Any] = {"architecture": spec.architecture, "encoder_name": spec.encoder_name,
                           "in_channels": spec.in_channels, "classes": spec.classes}
    if spec.encoder_output_stride is not None:
        out["encoder_output_stride"] = spec.encoder_output_stride
    if spec.decoder_atrous_rates is not None:
        out["decoder_atrous_rates"] = list(spec.decoder_atrous_rates)
    out.update(spec.extra)
    return out


def with_overrides(spec: ModelSpec, options: LoadOptions) -> ModelSpec:
    """``spec`` run at another output stride or with other atrous rates (DeepLab only)."""
    overrides: dict[str, Any] = {}
    if options.encoder_output_stride is not None:
        overrides["encoder_output_stride"] = options.encoder_output_stride
    if options.decoder_atrous_rates is not None:
        overrides["decoder_atrous_rates"] = tuple(options.decoder_atrous_rates)
    if not overrides:
        return spec
    if spec.architecture not in DEEPLAB:
        raise ModelError("encoder_output_stride and decoder_atrous_rates apply to DeepLab models "
                         "only", params=("encoder_output_stride", "decoder_atrous_rates"))
    return replace(spec, **overrides)


def named_network(network: dict[str, Any], options: LoadOptions,
                  where: str) -> tuple[str, str, dict[str, Any]] | None:
    """(architecture, encoder_name, other smp arguments) that options or a ``network``
    description name for plain weights; None when neither names an architecture."""
    architecture = options.architecture or network.get("architecture")
    encoder = options.encoder_name or network.get("encoder_name") or network.get("backbone")
    if architecture is None:
        return None
    if encoder is None:
        raise ModelError(f"{where}: names architecture {architecture} but no encoder; give "
                         "encoder_name (e.g. resnet34)", params=("encoder_name",))
    try:
        canonical = canonical_architecture(str(architecture))
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}", params=("architecture",)) from exc
    extra = {k: v for k, v in network.items()
             if k not in ("architecture", "encoder_name", "backbone", "in_channels", "classes",
                          "encoder_weights") and not k.startswith("_")}
    return canonical, str(encoder), extra


def spec_for_state(architecture: str, encoder: str, extra: dict[str, Any],
                   state: dict[str, torch.Tensor], where: str) -> ModelSpec:
    """The smp network of ``architecture``/``encoder`` whose input bands and output channels
    are those of the weights ``state``: read from the shapes of the tensors that hold them in
    a reference network (its first convolution, its segmentation head's last)."""
    stride = extra.pop("encoder_output_stride", None)
    rates = extra.pop("decoder_atrous_rates", None)
    try:
        reference = build_model(ModelSpec(architecture, encoder, in_channels=3, classes=1,
                                          encoder_output_stride=stride,
                                          decoder_atrous_rates=None if rates is None
                                          else tuple(rates), extra=extra))
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from exc
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    convs = [k for k, shape in shapes.items() if len(shape) == 4]
    head = [k for k in convs if k.startswith("segmentation_head.")] or convs
    first, last = convs[0], head[-1]
    if first not in state or last not in state:
        missing = first if first not in state else last
        raise ModelError(f"{where}: weights do not match {architecture}/{encoder} (no tensor "
                         f"{missing}); name the network the weights were trained with")
    return ModelSpec(architecture, encoder, in_channels=int(state[first].shape[1]),
                     classes=int(state[last].shape[0]), encoder_output_stride=stride,
                     decoder_atrous_rates=None if rates is None else tuple(rates), extra=extra)


def network_state(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` as the network's own names: without the ``model.`` of a Lightning module's
    state dict or the ``module.`` of ``DataParallel``, when the weights carry one."""
    if expected & state.keys():
        return state
    for prefix in ("model.", "module.", "net."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if expected & stripped.keys():
            return stripped
    return state


def build_with_weights(spec: ModelSpec, state: dict[str, torch.Tensor], where: str,
                       weights: str) -> nn.Module:
    """The smp network of ``spec`` holding ``state``, strictly (every tensor, every shape).

    Built without memory or random initialization (4-7x faster: every worker process loads
    the model), the weights then become its tensors; a network with a tensor no weights file
    holds (a non-persistent buffer) is built for real.
    """
    try:
        with torch.device("meta"):
            module = build_model(spec)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from exc
    network = f"{spec.architecture}/{spec.encoder_name}"
    load_strict(module, state, network, weights, assign=True)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        module = build_model(spec)
        load_strict(module, state, network, weights)
    return module


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], network: str,
                weights: str, *, assign: bool = False) -> None:
    """Load every tensor of ``state`` into ``module``, each of its shape; a one-line error
    saying how they differ otherwise. ``assign``: the tensors become the module's (cast to
    its dtypes first, as copying into it would: a model saved in half precision runs in
    float32)."""
    own = module.state_dict()
    state = network_state(state, set(own))
    missing = [k for k in own if k not in state]
    foreign = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or foreign or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {len(own)} tensors are not in the file "
                         f"({missing[0]}, ...)")
        if foreign:
            parts.append(f"{len(foreign)} in the file are not its own ({foreign[0]}, ...)")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} differ in shape ({k}: {tuple(state[k].shape)} in the "
                         f"file, {tuple(own[k].shape)} in the network)")
        raise ModelError(f"{weights}: weights do not match {network}: {'; '.join(parts)}; name "
                         "the network they were trained with")
    if assign:
        state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:  # dtype or other loading problems
        raise ModelError(f"{weights}: weights do not match {network} ({str(exc)[:160]})") from exc
