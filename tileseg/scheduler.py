"""Running a mosaic graph: in-process threads by default, or a dask.distributed cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from tileseg.errors import ConfigError, RunError, TilesegError
from tileseg.mosaic import MosaicGraph

logger = logging.getLogger(__name__)

ResultCallback = Callable[[dict[str, Any], str], None]
SCHEDULER_ENV = "TILESEG_SCHEDULER"
DASK_CONFIG_KEY = "tileseg.scheduler"


def scheduler_address(scheduler: str | None) -> str | None:
    """A distributed scheduler address, else None (in-process). First of: the option,
    ``$TILESEG_SCHEDULER``, and ``tileseg.scheduler`` in dask's configuration (a YAML file in
    ``~/.config/dask/`` or ``$DASK_CONFIG``, or ``$DASK_TILESEG__SCHEDULER``), so a platform can
    point every job at its cluster once."""
    value = scheduler or os.environ.get(SCHEDULER_ENV) or _configured() or None
    if value in (None, "threads", "sync"):
        return None
    return value


def _configured() -> str | None:
    import dask

    value = dask.config.get(DASK_CONFIG_KEY, default=None)
    return str(value) if value else None


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
    address = scheduler_address(scheduler)
    if client is not None or address is not None:
        _run_distributed(mosaic, address, on_result, client, device)
    else:
        _run_local(mosaic, scheduler or os.environ.get(SCHEDULER_ENV) or "threads",
                   workers or default_workers(device), on_result)


def default_workers(device: str) -> int:
    """Threads of the in-process scheduler when ``--workers`` is not given.

    On a GPU, 2: one chunk task feeds the card while the other reads, blends and writes. On a
    CPU, 1: a forward pass already uses every core, reading runs in the task's prefetch thread,
    and a second task in flight mostly holds another chunk's buffers (``benchmarks/bench_engine.py``:
    2 was 1-12% faster at 1024-px chunks but no faster at 2048, for 9-26% more peak memory).
    """
    from tileseg.infer import resolve_device

    return 2 if resolve_device(device).type == "cuda" else 1


def _kind(key: Any, mosaic: MosaicGraph) -> str | None:
    if isinstance(key, tuple) and isinstance(key[0], str):
        if key[0].startswith("tileseg-infer-"):
            return "infer"
        if key[0].startswith("tileseg-finalize-"):
            return "finalize"
    return None


def _run_local(mosaic: MosaicGraph, scheduler: str, workers: int | None,
               on_result: ResultCallback) -> None:
    import dask
    from dask.callbacks import Callback

    class _Results(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            kind = _kind(key, mosaic)
            if kind is not None:
                on_result(result, kind)

    keys = mosaic.infer_keys + mosaic.finalize_keys
    with _Results():
        if scheduler == "sync":
            dask.get(mosaic.graph, keys)
        elif scheduler == "threads":
            from dask.threaded import get

            get(mosaic.graph, keys, num_workers=workers or 2)
        else:
            raise ConfigError(f"--scheduler {scheduler!r}: use threads, sync or a cluster address")


def gpu_workers(client: Any) -> int:
    """How many of the cluster's workers advertise a ``GPU`` resource."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer versions list 5 workers by default
    except TypeError:
        info = client.scheduler_info()
    return sum(1 for w in info.get("workers", {}).values()
               if (w.get("resources") or {}).get("GPU", 0) >= 1)


def _run_distributed(mosaic: MosaicGraph, address: str | None, on_result: ResultCallback,
                     client: Any, device: str = "auto") -> None:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is a required dependency
        raise ConfigError("dask.distributed is not installed; pip install distributed") from exc
    own_client = client is None
    if own_client:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the dask scheduler at {address} ({exc}); start it or fix --scheduler"
            ) from exc
    try:
        gpus = gpu_workers(client) if device != "cpu" else 0
        if gpus:
            logger.info("%d workers advertise a GPU: each infer task requests GPU=1", gpus)
            # two submissions of one graph: the finalize tasks find their infer dependencies
            # already on the scheduler (same deterministic keys) and reuse them
            futures = client.get(mosaic.graph, mosaic.infer_keys, sync=False,
                                 resources={"GPU": 1})
            futures += client.get(mosaic.graph, mosaic.finalize_keys, sync=False)
        else:
            futures = client.get(mosaic.graph, mosaic.infer_keys + mosaic.finalize_keys,
                                 sync=False)
        kinds = {f.key: _kind(f.key, mosaic) for f in futures}
        for future in as_completed(futures):
            try:
                result = future.result()
            except TilesegError:
                raise
            except Exception as exc:
                raise RunError(f"task {future.key} failed on the cluster: {exc}; rerun with "
                               "--resume once fixed") from exc
            on_result(result, kinds[future.key] or "")
    finally:
        if own_client:
            client.close()
