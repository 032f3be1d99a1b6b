"""Device and precision rules: which torch device, autocast dtype and batch size a run uses.

``auto`` values are resolved here, on the process that runs the tasks (a dask worker may see
another GPU than the client), and once per process: the answers are cached, so a thousand
chunk tasks ask CUDA once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from tileseg.choices import PRECISIONS, Precision, check_choice
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
    check_choice(precision, PRECISIONS, "precision")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU",
                          params=("precision",))
    return _AUTOCAST[precision](device)  # type: ignore[index]


# the autocast dtype of each precision on a device (None: full fp32)
_AUTOCAST: dict[Precision, Callable[[torch.device], torch.dtype | None]] = {
    "auto": lambda device: torch.bfloat16 if device.type == "cuda" else None,
    "fp32": lambda device: None,
    "bf16": lambda device: torch.bfloat16,
    "fp16": lambda device: torch.float16,
}


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
