"""Device and precision rules: which torch device, autocast dtype and batch size a run uses.

``auto`` values are resolved here, on the process that runs the tasks (a dask worker may see
another GPU than the client), and once per process: the answers are cached, so a thousand
chunk tasks ask CUDA once.
"""

from __future__ import annotations

import functools
import logging

import torch

from tileseg.config import Precision  # noqa: F401  (declared with the settings, torch-free)
from tileseg.errors import ConfigError

logger = logging.getLogger(__name__)

CPU_BATCH_SIZE = 4


@functools.cache
def resolve_device(device: str) -> torch.device:
    """The torch device for ``device`` (``auto``: the first CUDA GPU when one is visible).

    Raises
    ------
    ConfigError
        ``device`` is not a torch device, or names CUDA where none is visible.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1)",
                          params=("device",)) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for, but no CUDA GPU is visible; use device cpu",
                          params=("device",))
    return dev


@functools.cache
def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU",
                              params=("precision",))
        return torch.float16
    raise ConfigError(f"precision {precision!r}: choose auto, fp32, bf16 or fp16", params=("precision",))


def precision_name(autocast: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what precision ``auto`` resolved to."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, "fp32")  # type: ignore[arg-type]


@functools.cache
def default_batch_size(device: torch.device, context: int) -> int:
    """A batch that keeps a GPU busy without running out of memory."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    total = torch.cuda.get_device_properties(device).total_memory
    # About 0.6 GB of activations per 528x528 tile for a resnet50 DeepLabv3+ in bf16, measured
    # conservatively; stay within half of the card.
    per_tile = 0.6e9 * (context / 528) ** 2
    return int(max(1, min(64, total * 0.5 // per_tile)))
