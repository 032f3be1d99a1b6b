"""How much memory a local run needs at least, checked against what the machine has free.

The estimate is a lower bound on purpose: the buffers every chunk task holds whatever the model,
times the tasks running at once. A run whose lower bound does not fit cannot succeed, so it is
refused before anything is written, naming the option to change; one that fits may still need
more (the model's activations, which depend on its architecture).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tileseg.errors import ConfigError
from tileseg.text import counted

if TYPE_CHECKING:
    from tileseg.config import PredictConfig
    from tileseg.plan import Plan

logger = logging.getLogger(__name__)

FLOAT32 = 4
INT64 = 8  # blended sums are fixed-point integers (tileseg.tiling.blend)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one chunk task holds at least, and how many tasks run at once."""

    batch_input: int  # the batch of tiles, read and converted to float32
    batch_logits: int  # the model's output for the batch
    blend: int  # summed logits and weights over the chunk extent (int64)
    tasks: int
    batch_size: int

    @property
    def per_task(self) -> int:
        return self.batch_input + self.batch_logits + self.blend

    @property
    def total(self) -> int:
        return self.per_task * self.tasks


def estimate_memory(plan: Plan, batch_size: int, tasks: int) -> MemoryEstimate:
    """The lower bound for ``plan`` with ``batch_size`` tiles per batch and ``tasks`` at once.

    Examples
    --------
    >>> estimate_memory(plan, batch_size=4, tasks=2).total  # doctest: +SKIP
    94371840
    """
    grid = plan.grid
    itemsize = _itemsize(plan.raster.dtype)
    # a batch never holds more tiles than a chunk has
    tiles = min(batch_size, grid.chunk_tiles ** 2, grid.num_tiles)
    bands = len(plan.raster.indexes)
    classes = plan.model.metadata.num_classes
    ctx2 = plan.context * plan.context
    extent = grid.chunk_extent(0, 0)
    return MemoryEstimate(
        batch_input=tiles * bands * ctx2 * (itemsize + FLOAT32),
        batch_logits=tiles * classes * ctx2 * FLOAT32,
        blend=(classes + 1) * extent.height * extent.width * INT64,
        tasks=tasks,
        batch_size=tiles,
    )


def available_memory() -> int | None:
    """Bytes the machine can give a process now (MemAvailable on Linux), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config: PredictConfig, plan: Plan) -> None:
    """Refuse (:class:`ConfigError`, exit 2) a local run whose lower bound cannot fit in the free
    memory of its device: host memory on the CPU, the card's free memory on CUDA."""
    import torch

    from tileseg.inference.device import default_batch_size, resolve_device

    device = resolve_device(config.device)
    batch = config.batch_size or default_batch_size(device, plan.context)
    tasks = 1 if config.scheduler == "sync" else (config.workers or 2)
    estimate = estimate_memory(plan, batch, tasks)
    if device.type == "cuda":
        try:
            free = int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:  # a driver that cannot tell: the run finds out itself
            free = 0
        where = f"free on {device}"
    else:
        free = available_memory() or 0
        where = "available"
    logger.debug("memory lower bound %.2f GiB (%s), %.2f GiB %s", estimate.total / 2**30,
                 estimate, free / 2**30, where)
    if not free or estimate.total <= free:
        return
    raise ConfigError(
        f"a batch of {counted(estimate.batch_size, 'tile')} of {plan.context} x {plan.context} px "
        "needs at "
        f"least {_gib(estimate.per_task)} per chunk task ({estimate.tasks} at once: "
        f"{_gib(estimate.total)}) but {_gib(free)} is {where}; lower batch_size, tile_size "
        "or chunk_size (or workers)", params=("batch_size", "tile_size", "chunk_size", "workers")
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)
