"""Running a mosaic graph: in-process threads by default, or a dask.distributed cluster.

Scheduler resolution and task execution live in :mod:`tileseg.execution` (shared with vectorize
and batch); this module adds what is particular to a mosaic: which tasks are infer and finalize
tasks, and that infer tasks hold a GPU on clusters whose workers advertise one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from tileseg.execution import (
    SCHEDULER_ENV,
    Scheduler,
    gpu_workers,
    open_client,
    resolve_scheduler,
    scheduler_address,
)
from tileseg.execution import run_graph as run_tasks
from tileseg.inference.mosaic import MosaicGraph

__all__ = ["SCHEDULER_ENV", "cluster_client", "gpu_workers", "resolve_mosaic_scheduler",
           "run_graph", "scheduler_address"]

logger = logging.getLogger(__name__)

ResultCallback = Callable[[dict[str, Any], str], None]


def resolve_mosaic_scheduler(scheduler: str | Any | None) -> Scheduler:
    """The scheduler a mosaic can run on: threads, sync, a cluster, or a dask get function.

    Worker processes are refused: an in-process model cannot travel to them, and a cluster of
    local processes (``dask scheduler`` + ``dask worker``) does the same job with resume and
    per-worker model caching.
    """
    return resolve_scheduler(scheduler, allow=("threads", "sync", "distributed", "callable"))


@contextlib.contextmanager
def cluster_client(address: str | None, client: Any = None) -> Iterator[Any]:
    """The client to run on: ``client`` if given, else one opened to ``address`` for the
    ``with`` body (None when both are None: in-process). Opened before any work, so an
    unreachable scheduler is one :class:`~tileseg.errors.ConfigError` (exit 2) with nothing
    written."""
    if client is not None or address is None:
        yield client
        return
    with open_client(resolve_scheduler(address)) as own:
        yield own


def run_graph(
    mosaic: MosaicGraph,
    scheduler: str | None,
    workers: int | None,
    on_result: ResultCallback,
    *,
    client: Any = None,
    device: str = "auto",
) -> None:
    """Compute every infer and finalize task, calling ``on_result`` as each one finishes.

    On a cluster whose workers advertise a ``GPU`` resource (``dask worker --resources GPU=1``),
    each infer task requests one GPU unless ``device`` is ``cpu``, so a worker runs one at a
    time whatever its thread count; finalize tasks need no GPU and run beside them.
    """
    resolved = resolve_mosaic_scheduler(client if client is not None else scheduler)
    kinds = {k: "infer" for k in mosaic.infer_keys} | {k: "finalize" for k in mosaic.finalize_keys}

    def finished(key: Any, value: Any) -> None:
        on_result(value, kinds[key])

    with open_client(resolved) as cluster:
        infer_resources = None
        if cluster is not None and device != "cpu":
            gpus = gpu_workers(cluster)
            if gpus:
                logger.info("%s a GPU: each infer task requests GPU=1",
                            "1 worker advertises" if gpus == 1 else f"{gpus} workers advertise")
                infer_resources = {"GPU": 1}
        run_tasks(mosaic.graph, [(mosaic.infer_keys, infer_resources),
                                 (mosaic.finalize_keys, None)],
                  resolved, on_result=finished, client=cluster,
                  workers=workers or (None if cluster is not None else default_workers(device)))


def default_workers(device: str) -> int:
    """Threads of the in-process scheduler when ``--workers`` is not given.

    On a GPU, 2: one chunk task feeds the card while the other reads, blends and writes. On a
    CPU, 1: a forward pass already uses every core, reading runs in the task's prefetch thread,
    and a second task in flight mostly holds another chunk's buffers (``benchmarks/bench_engine.py``:
    2 was 1-12% faster at 1024-px chunks but no faster at 2048, for 9-26% more peak memory).
    """
    from tileseg.inference.device import resolve_device

    return 2 if resolve_device(device).type == "cuda" else 1
